"""From image similarities to part scores, and from several views to one ranking.

A part has several catalogue images; its score for one view is ``max`` of its image
similarities, or ``top2`` (mean of the best two; one image counts alone). Several photos of one
part are fused by ``score`` (mean over views of the per-view part scores) or ``embedding`` (the
normalised mean of the view embeddings, then scored as one view). ``benchmarks/bench_identify_quality``
measures which is better.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import UsageError

AGGREGATES = ("max", "top2")
FUSIONS = ("score", "embedding")


def check(aggregate: str, fusion: str) -> None:
    if aggregate not in AGGREGATES:
        raise UsageError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if fusion not in FUSIONS:
        raise UsageError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def aggregate_images(sims: np.ndarray, aggregate: str) -> np.ndarray:
    """(Q, n_images) similarities of one part's images -> (Q,) part scores."""
    if sims.shape[1] == 1 or aggregate == "max":
        return sims.max(axis=1)
    top2 = -np.partition(-sims, 1, axis=1)[:, :2]
    return top2.mean(axis=1)


def candidate_parts(labels: np.ndarray, sims: np.ndarray, label_part: Mapping[int, str], limit: int) -> list[str]:
    """Distinct parts of retrieved images, best first (by best image), at most ``limit``."""
    seen: dict[str, float] = {}
    for lab, s in zip(labels.tolist(), sims.tolist()):
        pn = label_part.get(int(lab))
        if pn is not None and pn not in seen:
            seen[pn] = s
            if len(seen) >= limit:
                break
    return list(seen)


def fuse_embeddings(emb: np.ndarray) -> np.ndarray:
    """(V, D) unit view embeddings -> (1, D) unit mean."""
    m = emb.mean(axis=0, keepdims=True)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def score_parts(query: np.ndarray, parts: Sequence[str], part_vectors: Mapping[str, np.ndarray],
                aggregate: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-view part scores.

    ``query`` (V, D) unit vectors; ``part_vectors[pn]`` (n_i, D) unit vectors. Returns
    (scores (V, P), best image index per view and part (V, P)).
    """
    counts = [len(part_vectors[pn]) for pn in parts]
    if not parts:
        return np.zeros((len(query), 0), np.float32), np.zeros((len(query), 0), np.int64)
    return score_segments(query, np.concatenate([part_vectors[pn] for pn in parts]), counts, aggregate)


def score_segments(query: np.ndarray, vectors: np.ndarray, counts: Sequence[int],
                   aggregate: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_parts` on the images of all parts in one matrix: part j owns the next ``counts[j]`` rows
    (each at least one). One matrix product for every candidate, not one per part."""
    sims = np.asarray(query, np.float32) @ np.asarray(vectors, np.float32).T  # (V, N)
    counts = np.asarray(counts, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    best_val = np.maximum.reduceat(sims, starts, axis=1)  # (V, P)
    owner = np.repeat(np.arange(len(counts)), counts)
    # index of each part's best image (first on ties): positions where sims equal their part's max
    is_best = sims == best_val[:, owner]
    pos = np.where(is_best, np.arange(sims.shape[1])[None, :], sims.shape[1])
    best = np.minimum.reduceat(pos, starts, axis=1) - starts[None, :]
    if aggregate == "max":
        return best_val.astype(np.float32), best
    # top2: the mean of a part's two best images (its one image when it has one)
    second = np.where(np.arange(sims.shape[1])[None, :] == (best + starts[None, :])[:, owner], -np.inf, sims)
    second_val = np.maximum.reduceat(second, starts, axis=1)
    scores = np.where(counts[None, :] > 1, (best_val + second_val) / 2, best_val)
    return scores.astype(np.float32), best

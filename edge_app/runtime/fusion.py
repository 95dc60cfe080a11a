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
    v = len(query)
    scores = np.full((v, len(parts)), -1.0, np.float32)
    best = np.zeros((v, len(parts)), np.int64)
    for j, pn in enumerate(parts):
        sims = query @ part_vectors[pn].T
        scores[:, j] = aggregate_images(sims, aggregate)
        best[:, j] = sims.argmax(axis=1)
    return scores, best

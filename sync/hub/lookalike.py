"""Which parts the active model cannot tell apart: the hub's warning when a part is added without retraining.

A part added at the hub is identifiable on tablets after the next sync because the hub embeds its
catalogue photos with the active bundle's model. But that model never trained on the new part: if
it embeds the new part's photos as close to another part's photos as to each other, tablets will
confuse the two (seen in the demo: a 12 V relay added at the hub took the 24 V relay's matches).

Rule (scale-free, so it holds for any model's embedding geometry): parts A and B are look-alikes to
the model when the most similar pair of photos across them (``similarity``, cosine) is at least as
similar as the LEAST similar pair of photos within A AND as the least similar pair within B (``own``
is the higher of the two, so one part with very diverse photos does not flag everything). A part with a single
photo has no spread of its own; it gets the median ``own`` of the catalogue's parts with several
photos (``DEFAULT_OWN`` when there are none).

What the hub operator can do about a warning: add photos that show the difference (nameplate,
label), give the parts one ``look_alike_group`` (the app then tells the engineer), or retrain.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np

DEFAULT_OWN = 0.9


@dataclass(frozen=True)
class LookAlike:
    """Two parts the active model embeds about as close as photos of one part."""

    part_number: str
    looks_like: str
    similarity: float  # best cosine between a photo of each
    own: float  # the higher of the two parts' within-part minimum cosines (the bar it reached)
    same_group: bool  # both already share a look_alike_group (expected, the app handles it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        known = " (same look_alike_group: expected)" if self.same_group else ""
        return (f"{self.part_number} looks like {self.looks_like} to the active model: photo similarity "
                f"{self.similarity:.3f} >= {self.own:.3f} between photos of one part{known}")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def own_similarity(vectors: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each part's least similar pair of its own photos (see the module docstring for single photos)."""
    own: dict[str, float] = {}
    for pn, v in vectors.items():
        if len(v) >= 2:
            u = _unit(v)
            sim = u @ u.T
            own[pn] = float(sim[np.triu_indices(len(u), 1)].min())
    fallback = float(np.median(list(own.values()))) if own else DEFAULT_OWN
    return {pn: own.get(pn, fallback) for pn in vectors}


#: look-alikes kept per part of interest (its most similar ones): a catalogue whose photos all look alike to the
#: model made one object per pair (a 10k-part import ran 19 min into 11.4 GB, an audit); ``stats`` counts them all
PER_PART = 5


def find_look_alikes(vectors: Mapping[str, np.ndarray], *, parts: Iterable[str] | None = None,
                     groups: Mapping[str, str | None] | None = None, per_part: int = PER_PART,
                     stats: dict[str, int] | None = None) -> list[LookAlike]:
    """Look-alike pairs involving ``parts`` (default: every part), most similar first: each part's ``per_part``
    most similar look-alikes at most (``stats["pairs"]``, when given, counts every pair found).

    ``vectors``: each part's photo embeddings (N_i, D) under ONE model; parts without photos are ignored.
    ``groups``: each part's ``look_alike_group`` (pairs in one group are marked ``same_group``).
    Cost: one (n_a x N) matrix product per part of interest (N photos in all): a full check of a
    10k-photo catalogue is a few seconds, a check of a few added parts milliseconds.
    """
    vectors = {pn: _unit(v) for pn, v in vectors.items() if len(v)}
    groups = groups or {}
    own = own_similarity(vectors)
    names = sorted(vectors)
    if len(names) < 2:
        return []
    focus = set(names) if parts is None else set(parts) & set(names)
    allv = np.concatenate([vectors[n] for n in names])
    starts = np.cumsum([0] + [len(vectors[n]) for n in names[:-1]])
    own_arr = np.array([own[n] for n in names])
    kept: dict[tuple[int, int], tuple[float, float]] = {}  # (i, j), reported from i's side -> (similarity, bar)
    total = 0
    for i, a in enumerate(names):
        if a not in focus:
            continue
        best = np.maximum.reduceat((vectors[a] @ allv.T).max(axis=0), starts)  # best photo pair, per part
        bar = np.maximum(own_arr, own[a])
        hits = np.flatnonzero(best >= bar)
        hits = hits[hits != i]
        total += sum(1 for j in hits if not (names[j] in focus and j < i))  # each pair once
        # this part's most similar look-alikes, from whichever side the pair is reported (capped after
        # gathering both sides: a pair cut from the side that sorts first vanished, a review)
        for j in hits[np.argsort(-best[hits], kind="stable")][:max(0, per_part)]:
            key = (i, int(j)) if names[j] not in focus or i < j else (int(j), i)
            kept[key] = (float(best[j]), float(bar[j]))
    if stats is not None:
        stats["pairs"] = stats.get("pairs", 0) + total
    out: list[LookAlike] = []
    for (i, j), (sim, bar_ij) in kept.items():
        a, b = names[i], names[j]
        same = bool(groups.get(a)) and groups.get(a) == groups.get(b)
        out.append(LookAlike(a, b, round(sim, 4), round(bar_ij, 4), same))
    return sorted(out, key=lambda x: (-x.similarity, x.part_number, x.looks_like))

"""Fit a bundle's confidence calibration with the exported model the device runs.

Confidence is P(top part is right) from the top part similarity and its margin over the
second part (:mod:`edge_app.runtime.calibration`). It is fitted on labelled photos of
catalogue parts plus photos of products that are NOT in the catalogue (negatives), which
must be disjoint from the products later scored for the rejection figures.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_app.errors import InputError
from edge_app.preprocess import PreprocessSpec

from .catalogue import CatalogueImage, embed_catalogue

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def part_scores(queries: np.ndarray, catalogue: np.ndarray, parts: Sequence[str],
                aggregate: str = "max") -> tuple[list[str], np.ndarray]:
    """Per-part similarity, aggregated over a part's images exactly as the runtime does."""
    from edge_app.runtime.fusion import aggregate_images

    from .bundle import l2_normalize

    names = sorted(set(parts))
    sims = l2_normalize(queries) @ l2_normalize(catalogue).T
    out = np.full((len(queries), len(names)), -1.0, np.float32)
    cols = defaultdict(list)
    for j, p in enumerate(parts):
        cols[p].append(j)
    for k, name in enumerate(names):
        out[:, k] = aggregate_images(sims[:, cols[name]], aggregate)
    return names, out


def fit_bundle_calibration(run: Runner, spec: PreprocessSpec, catalogue: Sequence[CatalogueImage],
                           positives: Sequence[CatalogueImage], negatives: Sequence[CatalogueImage], *,
                           target_precision: float = 0.9, catalogue_views: str = "none") -> dict[str, Any]:
    """Fit the calibration dict stored in a bundle manifest (``Calibration.to_dict()``).

    ``catalogue_views``: the bundle's catalogue view set (the catalogue must be embedded as the
    device's index is); the photos are embedded once each, as the device embeds a query.
    """
    from edge_app.runtime.calibration import fit

    if not positives or not negatives:
        raise InputError("calibration needs photos of catalogue parts and of parts outside the catalogue")
    cat_emb, cat_rows = embed_catalogue(run, catalogue, spec, views=catalogue_views)
    q_emb, q_rows = embed_catalogue(run, [*positives, *negatives], spec)
    names, scores = part_scores(q_emb, cat_emb, [r["part_number"] for r in cat_rows])
    order = np.argsort(-scores, axis=1)
    top = scores[np.arange(len(scores)), order[:, 0]]
    second = scores[np.arange(len(scores)), order[:, 1]] if scores.shape[1] > 1 else np.full(len(scores), np.nan)
    catalogue_parts = set(names)
    correct = [r["part_number"] in catalogue_parts and names[order[i, 0]] == r["part_number"]
               for i, r in enumerate(q_rows)]
    overlap = catalogue_parts & {n.part_number for n in negatives}
    if overlap:
        raise InputError(f"negatives must be parts outside the catalogue; these are in it: {sorted(overlap)}")
    known = [c for r, c in zip(q_rows, correct) if r["part_number"] in catalogue_parts]
    info = {"positives": len(known), "negatives": len(q_rows) - len(known),
            "negative_parts": sorted({n.part_number for n in negatives}), "aggregate": "max",
            "fit_top1": float(np.mean(known)) if known else None}
    cal = fit(top, second, correct, target_precision=target_precision, info=info)
    return cal.to_dict()

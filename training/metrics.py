"""Classification and retrieval metrics on NumPy arrays (no torch)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    if len(targets) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def confusion_matrix(pred: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (targets, pred), 1)
    return cm


def classification_metrics(logits: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """top-1, top-5, per-class accuracy (classes with no images are omitted) and the confusion matrix."""
    pred = logits.argmax(axis=1) if len(targets) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(pred, targets, len(labels))
    per_class = {lab: float(cm[i, i] / cm[i].sum()) for i, lab in enumerate(labels) if cm[i].sum()}
    return {
        "n": int(len(targets)),
        "top1": topk_accuracy(logits, targets, 1),
        "top5": topk_accuracy(logits, targets, 5),
        "per_class": per_class,
        "mean_per_class": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "confusion": cm.tolist(),
        # (an audit: with 5 classes or fewer, top-5 is 1.0 by construction and was reported without a word)
        **({"top5_note": f"top-5 is 1.0 by construction with {len(labels)} classes"} if len(labels) <= 5 else {}),
    }


def retrieval_metrics(query: np.ndarray, query_y: np.ndarray, gallery: np.ndarray, gallery_y: np.ndarray,
                      ks: Sequence[int] = (1, 5), same: np.ndarray | None = None) -> dict[str, Any]:
    """Cosine retrieval (rows are unit vectors): Recall@k (a correct item in the top k) and mAP.

    Queries whose class has no gallery image cannot be answered; they count as misses for Recall@k
    and are excluded from mAP (``n_unanswerable`` reports them). ``same[i, j]`` marks gallery item j as
    query i itself (one image on both sides): it is left out of that query's ranking, never a match.
    """
    sims = query @ gallery.T
    if same is not None and same.any():
        sims = np.where(same, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")
    rel = gallery_y[order] == query_y[:, None]
    if same is not None and same.any():
        rel &= ~np.take_along_axis(same, order, axis=1)
    out: dict[str, Any] = {"n_queries": int(len(query_y)), "n_gallery": int(len(gallery_y))}
    if same is not None:
        out["n_self_excluded"] = int(same.sum())
    for k in ks:
        out[f"recall@{k}"] = float(rel[:, :k].any(axis=1).mean()) if len(query_y) else float("nan")
    has = rel.any(axis=1)
    out["n_unanswerable"] = int((~has).sum())
    if has.any():
        r = rel[has]
        cum = np.cumsum(r, axis=1)
        ranks = np.arange(1, r.shape[1] + 1)[None, :]
        ap = (r * cum / ranks).sum(axis=1) / r.sum(axis=1)
        out["mAP"] = float(ap.mean())
    else:
        out["mAP"] = float("nan")
    return out

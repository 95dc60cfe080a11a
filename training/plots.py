"""Evaluation figures (matplotlib, Agg backend), each written atomically as PNG."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_app.atomic import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def confusion_png(cm: np.ndarray, labels: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Row-normalised confusion matrix with counts (labels shown up to 40 classes)."""
    plt = _plt()
    cm = np.asarray(cm)
    n = len(labels)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(24, 3 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion (n={int(cm.sum())}, top-1 {np.trace(cm) / max(cm.sum(), 1):.3f})")
    return _save(fig, path)


def curves_png(history: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Training loss and val/train top-1 per epoch."""
    plt = _plt()
    ep = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "train_ce", "train_metric", "train_kd"):
        vals = [h.get(key) for h in history]
        if any(v for v in vals):
            a.plot(ep, vals, marker="o", label=key)
    a.set_xlabel("epoch")
    a.set_title("loss")
    a.legend()
    for key in ("train_top1", "val_top1", "val_top5"):
        if all(key in h for h in history):
            b.plot(ep, [h[key] for h in history], marker="o", label=key)
    b.set_xlabel("epoch")
    b.set_title("accuracy")
    b.set_ylim(0, 1)
    b.legend()
    return _save(fig, path)


def predictions_grid_png(root: Path, paths: Sequence[str], true: Sequence[str], pred: Sequence[str],
                         conf: Sequence[float], path: str | os.PathLike[str], *, max_images: int = 48) -> Path:
    """A grid of validation images titled with prediction/truth (errors in red, shown first)."""
    from edge_app.errors import ImageError
    from edge_app.imageio import load_image

    plt = _plt()
    order = sorted(range(len(paths)), key=lambda i: (true[i] == pred[i], i))[:max_images]
    cols = 8
    rows = max(1, math.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        try:
            img = load_image(root / paths[i], draft_size=(128, 128))
            img.thumbnail((128, 128))
            ax.imshow(np.asarray(img))
        except ImageError:
            pass
        ok = true[i] == pred[i]
        ax.set_title(f"{pred[i]} {conf[i]:.2f}\n(true {true[i]})", fontsize=7, color="green" if ok else "red")
    return _save(fig, path)


"""Evaluation: top-1/top-5/per-class accuracy, retrieval Recall@k and mAP, figures.

Retrieval galleries: the training images (``train``), plus the catalogue images when the layout
has them (grocery: the 81 iconic images, ``catalogue``). Every validation image is either
evaluated or listed as unreadable: ``n_listed == n + n_unreadable`` always.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.atomic import atomic_write_json
from edge_app.errors import InputError, IntegrityError, UsageError

from .data import ImageSet, load_dataset
from .metrics import classification_metrics, retrieval_metrics

log = logging.getLogger(__name__)


def _check_finite(p: Any, what: str) -> None:
    """NaN or infinite outputs (a broken checkpoint) ranked in gallery order and scored believably (an audit: an
    all-NaN model got top-1 0.25 and mAP 0.42): refused."""
    for name in ("logits", "embeddings"):
        arr = np.asarray(getattr(p, name))
        if arr.size and not np.all(np.isfinite(arr)):
            bad = int((~np.isfinite(arr)).any(axis=tuple(range(1, arr.ndim))).sum()) if arr.ndim > 1 else 1
            raise IntegrityError(f"the model gives NaN or infinite {name} for {bad} of the {what}: the checkpoint is "
                                 "broken (diverged training, or a damaged file); nothing was scored")


def evaluate_model(model, val: ImageSet, galleries: dict[str, ImageSet] | None = None, *, batch_size: int = 64,
                   device: str = "cpu", progress: bool | None = None) -> tuple[dict[str, Any], Any]:
    """Metrics of ``model`` on ``val`` (and retrieval against each gallery) -> (report, val predictions)."""
    from .predict import predict

    labels = val.labels
    pv = predict(model, val, batch_size=batch_size, device=device, progress=progress)
    if not len(pv.targets):  # NaN scores (not even valid JSON) with exit 0 before
        raise InputError(f"none of the {len(val)} validation images could be read ({len(pv.skipped)} unreadable, "
                         f"e.g. {pv.skipped[0][0] if pv.skipped else '-'}): nothing to evaluate")
    _check_finite(pv, "validation images")
    report: dict[str, Any] = {"n_listed": len(val), "n_unreadable": len(pv.skipped),
                              "unreadable": [{"path": p, "reason": r} for p, r in pv.skipped]}
    report.update(classification_metrics(pv.logits, pv.targets, labels))
    report["retrieval"] = {}
    for name, gal in (galleries or {}).items():
        pg = predict(model, gal, batch_size=batch_size, device=device, progress=progress)
        _check_finite(pg, f"{name} gallery")
        report["retrieval"][name] = retrieval_metrics(pv.embeddings, pv.targets, pg.embeddings, pg.targets,
                                                      same=_same_images(pv.paths, pg.paths))
    if report["n"] + report["n_unreadable"] != report["n_listed"]:  # a bug, not a user error
        raise RuntimeError("evaluation lost validation images")
    return report, pv


def _same_images(query_paths: list[str], gallery_paths: list[str]) -> np.ndarray:
    """``[i, j]`` True where gallery item j is query image i (a catalogue image the split put in validation:
    it must not find itself at cosine 1.0, yet stays in the gallery for the part's other photos)."""
    where: dict[str, list[int]] = {}
    for j, p in enumerate(gallery_paths):
        where.setdefault(str(p), []).append(j)
    same = np.zeros((len(query_paths), len(gallery_paths)), dtype=bool)
    for i, p in enumerate(query_paths):
        for j in where.get(str(p), ()):
            same[i, j] = True
    return same


def _seen_in_training(saved: dict[str, Any], val: ImageSet) -> int | None:
    """How many of ``val``'s images the checkpoint was trained on (its own split file, when still there);
    warned about: those scores are not on unseen images."""
    from .splits import read_split

    path = saved.get("path")
    try:
        doc = read_split(path) if path else None
    except (InputError, IntegrityError):
        doc = None
    if doc is None or doc.get("sha256") != saved.get("sha256"):
        log.warning("cannot check which validation images the checkpoint was trained on: its split file %s is "
                    "gone or changed", path)
        return None
    trained = {rel for rel, _ in doc["train"]}
    seen = sum(1 for rel, _ in val.items if rel in trained)
    if seen:
        log.warning("%d of the %d validation images were training images of this checkpoint (split %s): "
                    "their scores are not on unseen photos", seen, len(val), path)
    return seen


def _val_and_galleries(meta: dict[str, Any], data: str | os.PathLike[str], split: str | None,
                       layout: str) -> tuple[ImageSet, dict[str, ImageSet], dict[str, Any]]:
    from .splits import file_sha256, load_split

    ds = load_dataset(data, layout)
    saved = (meta.get("extra") or {}).get("split") or {}
    split_path = split or saved.get("path")
    if split_path:
        if not Path(split_path).is_file():
            raise UsageError(f"the checkpoint's split file {split_path} is gone; pass --split")
        s = load_split(split_path, data)
        if split is None and saved.get("sha256") and s.sha256 != saved["sha256"]:
            raise IntegrityError(f"{split_path}: the split changed since the checkpoint was trained; "
                                 "pass --split to evaluate on another split")
        train, val = s.train, s.val
        info = {"path": str(Path(split_path).resolve()), "sha256": s.sha256, "file_sha256": file_sha256(split_path)}
        if split is not None and saved.get("sha256") and s.sha256 != saved["sha256"]:
            info["val_seen_in_training"] = _seen_in_training(saved, val)
    elif ds.train is not None and ds.val is not None:
        train, val, info = ds.train, ds.val, {"source": f"{ds.layout} layout"}
    else:
        raise UsageError(f"{data}: no validation split known; pass --split FILE")
    galleries = {"train": train}
    if ds.gallery is not None:  # (a validation catalogue image is left out of its own ranking only)
        galleries["catalogue"] = ds.gallery
    return val, galleries, info


def evaluate_checkpoint(ckpt: str | os.PathLike[str], data: str | os.PathLike[str] | None = None, *,
                        split: str | None = None, out: str | os.PathLike[str] | None = None, layout: str = "auto",
                        batch_size: int = 64, figures: bool = True, progress: bool | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset's validation split; write JSON + PNGs to ``out`` if given.

    ``data`` defaults to the folder the checkpoint was trained on (recorded by ``partlens train``).
    """
    from .models import load_checkpoint

    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    model, meta = load_checkpoint(ckpt)
    if data is None:
        from .splits import recorded_data_path

        data = recorded_data_path(meta)
        if not data:
            raise UsageError(f"{ckpt} records no training data folder; pass --data")
    val, galleries, split_info = _val_and_galleries(meta, data, split, layout)
    if list(meta["labels"]) != list(val.labels):
        raise IntegrityError(f"{ckpt}: its labels differ from the dataset's at {data}")
    report, pv = evaluate_model(model, val, galleries, batch_size=batch_size, progress=progress)
    report.update({"checkpoint": str(ckpt), "model": meta["model_name"], "epoch": meta.get("epoch"),
                   "split": split_info, "data": str(data)})
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if figures:
            report["figures"] = write_figures(out, report, pv, val, meta)
        atomic_write_json(out / "evaluation.json", report)
    return report


def write_figures(out: Path, report: dict[str, Any], pv, val: ImageSet, meta: dict[str, Any]) -> list[str]:
    from .plots import confusion_png, curves_png, predictions_grid_png

    labels = val.labels
    written = [confusion_png(np.asarray(report["confusion"]), labels, out / "confusion.png")]
    probs = _softmax(pv.logits)
    # the class scored above (logits argmax): two logits one ulp apart can give equal rounded probabilities
    pred = pv.logits.argmax(1) if len(probs) else np.zeros(0, dtype=int)
    written.append(predictions_grid_png(val.root, pv.paths, [labels[t] for t in pv.targets],
                                        [labels[p] for p in pred], probs.max(1) if len(probs) else [],
                                        out / "predictions.png"))
    history = (meta.get("extra") or {}).get("history")
    if history:
        written.append(curves_png(history, out / "curves.png"))
    return [str(p) for p in written]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True) if len(z) else z
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True) if len(z) else e

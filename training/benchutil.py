"""Shared steps of the ``bench_train_*`` benchmarks (resumable through ``ctx.step`` and ``last.pt``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import TrainConfig

log = logging.getLogger(__name__)

SPLITS_DIR = Path(__file__).resolve().parent / "splits"


def run_training(ctx, key: str, cfg: TrainConfig, train_set=None, val_set=None) -> dict[str, Any]:
    """Train inside ``ctx.step(key)``; a killed run resumes from its ``last.pt``."""
    from .train import train

    def step() -> dict[str, Any]:
        cfg.resume = (Path(cfg.out) / "last.pt").is_file()
        res = train(cfg, train_set, val_set)
        return {"out": str(res.out_dir), "best": str(res.best), "last": str(res.last), "best_epoch": res.best_epoch,
                "best_val_top1": res.best_top1, "history": res.history, "split": res.split}

    return ctx.step(key, step)


def label_noise_errors(root: Path, report_paths: list[str], targets: list[int], preds: list[int],
                       labels: list[str]) -> dict[str, Any]:
    """Of the misclassified val images, how many have a near-duplicate elsewhere carrying another label
    (cross-labelled near-duplicates: label noise), and how many were predicted as exactly that label."""
    from .audit import audit_records, near_duplicate_pairs

    records = audit_records(root)
    index = {r.path: i for i, r in enumerate(records)}
    other: dict[str, set[str]] = {}
    for i, j, *_ in near_duplicate_pairs(records):
        a, b = records[i], records[j]
        if a.label != b.label:
            other.setdefault(a.path, set()).add(b.label)
            other.setdefault(b.path, set()).add(a.label)
    errors = [(p, labels[t], labels[q]) for p, t, q in zip(report_paths, targets, preds) if t != q]
    noisy = [(p, t, q) for p, t, q in errors if p in other]
    as_dup_label = [(p, t, q) for p, t, q in noisy if q in other[p]]
    del index
    return {"errors": len(errors), "errors_with_cross_labelled_duplicate": len(noisy),
            "errors_predicting_the_duplicates_label": len(as_dup_label),
            "examples": [{"path": p, "label": t, "predicted": q} for p, t, q in as_dup_label[:20]]}


def evaluate_run(ctx, key: str, ckpt: str, val, galleries: dict[str, Any], *, noise_root: Path | None = None,
                 batch_size: int = 64) -> dict[str, Any]:
    """Evaluate a checkpoint on ``val`` inside ``ctx.step``; counts every val image."""

    def step() -> dict[str, Any]:
        from .evaluate import evaluate_model
        from .models import load_checkpoint

        model, _ = load_checkpoint(ckpt)
        rep, pv = evaluate_model(model, val, galleries, batch_size=batch_size)
        out = {k: rep[k] for k in ("n_listed", "n", "n_unreadable", "top1", "top5", "mean_per_class", "per_class")}
        out["retrieval"] = rep["retrieval"]
        if noise_root is not None:
            out["label_noise"] = label_noise_errors(noise_root, pv.paths, pv.targets.tolist(),
                                                    pv.logits.argmax(1).tolist(), val.labels)
        return out

    return ctx.step(key, step)


def pcparts_benchmark(ctx, model: str, target_top1: float, **overrides: Any) -> dict[str, Any]:
    """Train ``model`` on pc-parts-14 with the committed duplicate-aware split and evaluate it."""
    from .splits import file_sha256, load_split

    root = ctx.require_data("pc-parts-14")
    split_path = SPLITS_DIR / "pc-parts-14.json"
    split = load_split(split_path, root)
    opts: dict[str, Any] = dict(model=model, epochs=6, batch_size=32, lr=1e-3, image_size=160, cache=True,
                                freeze_stages=0, seed=0)
    opts.update(overrides)
    if ctx.quick:
        opts["epochs"] = 1
    cfg = TrainConfig(data=str(root), out=str(ctx.work_dir / "run"), split=str(split_path), **opts)
    trained = run_training(ctx, "train", cfg)
    # The LAST epoch is evaluated: "best" is picked on this same val split, so reporting it would select
    # on the test photos (the cosine schedule ends at lr 0, so the last epoch is the converged one).
    ev = evaluate_run(ctx, "evaluate", trained["last"], split.val, {"train": split.train}, noise_root=root)
    return {
        "model": model,
        "split_file": str(split_path.relative_to(SPLITS_DIR.parent.parent)),
        "split_sha256": split.sha256,
        "split_file_sha256": file_sha256(split_path),
        "val_images_in_split": len(split.val),
        "val_images_evaluated": ev["n"],
        "val_images_unreadable": ev["n_unreadable"],
        "top1": ev["top1"],
        "top5": ev["top5"],
        "mean_per_class": ev["mean_per_class"],
        "target_top1": target_top1,
        "meets_target": ev["top1"] >= target_top1,
        "recall@1_train_gallery": ev["retrieval"]["train"]["recall@1"],
        "recall@5_train_gallery": ev["retrieval"]["train"]["recall@5"],
        "mAP_train_gallery": ev["retrieval"]["train"]["mAP"],
        "errors": ev["label_noise"]["errors"],
        "errors_label_noise": ev["label_noise"]["errors_predicting_the_duplicates_label"],
        "errors_with_cross_labelled_duplicate": ev["label_noise"]["errors_with_cross_labelled_duplicate"],
        "top1_excluding_label_noise_errors": (ev["n"] - ev["label_noise"]["errors"]
                                              + ev["label_noise"]["errors_predicting_the_duplicates_label"])
        / max(1, ev["n"]),
        "label_noise_examples": ev["label_noise"]["examples"],
        "checkpoint": trained["last"],
        "evaluated_epoch": "last (no selection on the val split)",
        "best_epoch_on_val_not_reported": trained["best_epoch"],
        "train_config": {k: v for k, v in opts.items()},
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                    for h in trained["history"]],
        "per_class": ev["per_class"],
    }

"""Export formats x models on pc-parts-14: size, latency, top-1 and Recall@1 drop vs PyTorch fp32, parity.

For each model (MobileNetV2 and EfficientNet-Lite0 with ImageNet init; plus a trained checkpoint
from ``benchmarks/work/train-pcparts-*/run/last.pt`` when one exists) and each export format:
file size, batch-1 latency (median, p95; 2 threads), val top-1 and Recall@1 (val photo -> nearest
gallery image's class, cosine) and their drop against PyTorch fp32, and the parity-gate numbers with
the gate ``partlens export`` applies (``nn_agree`` is part-level since the gallery names its classes;
``nn_agree_image`` is the image-level figure, reported, not gated).
Data: the committed duplicate-aware split ``training/splits/pc-parts-14.json``; calibration and
gallery images come from its train side, evaluation photos from its val side. ImageNet-init
models get a ridge-regression classifier fitted on the fp32 gallery embeddings (numpy, closed form)
so top-1 means something; their neck is the untrained random projection.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMATS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "tflite-int8-aiq")
TARGETS = {"int8_top1_drop_pt": 1.0, "int8_r1_drop_pt": 1.5, "mobilenet_v2_int8_mb": 3.5,
           "efficientnet_lite0_int8_mb": 5.5, "int8_median_ms": 5.0}
REPO = Path(__file__).resolve().parent.parent


class Images:
    """Resized uint8 images (the geometric half of preprocess_image), normalised per batch."""

    def __init__(self, paths: list[Path], labels: list[int], spec: Any) -> None:
        from edge_app.imageio import load_image
        from edge_app.preprocess import resize_image

        self.spec, self.paths, self.labels, arrs = spec, [], [], []
        for p, y in zip(paths, labels):
            try:
                arrs.append(np.asarray(resize_image(load_image(p, draft_size=spec.draft_size), spec), np.uint8))
            except Exception as exc:  # unreadable: skipped, counted
                log.warning("skipping %s: %s", p, exc)
                continue
            self.paths.append(p)
            self.labels.append(y)
        self.u8 = np.stack(arrs)
        self.labels_arr = np.asarray(self.labels)

    def __len__(self) -> int:
        return len(self.u8)

    def batch(self, i: int, j: int) -> np.ndarray:
        from edge_app.preprocess import normalize

        return np.ascontiguousarray(normalize(self.u8[i:j], self.spec).transpose(0, 3, 1, 2))


def run_all(run, imgs: Images, bs: int = 16) -> dict[str, np.ndarray]:
    outs = [run(imgs.batch(i, i + bs)) for i in range(0, len(imgs), bs)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("logits", "embedding")}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def metrics(val_out, gal_emb, val: Images, gal: Images) -> dict[str, float]:
    top1 = float(np.mean(val_out["logits"].argmax(1) == val.labels_arr))
    nn = (unit(val_out["embedding"]) @ unit(gal_emb).T).argmax(1)
    r1 = float(np.mean(gal.labels_arr[nn] == val.labels_arr))
    return {"top1": top1, "r1": r1}


def latency(run, spec, n: int, warmup: int = 5) -> dict[str, float]:
    x = np.random.default_rng(0).normal(size=(1, 3, *spec.size)).astype(np.float32)
    for _ in range(warmup):
        run(x)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        run(x)
        ts.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": float(np.median(ts)), "p95_ms": float(np.percentile(ts, 95))}


def fit_ridge_head(model, z: np.ndarray, y: np.ndarray, n_classes: int, lam: float = 1.0) -> None:
    """Closed-form ridge regression from neck output z to one-hot labels -> classifier weights."""
    import torch

    zc = np.concatenate([z, np.ones((len(z), 1), np.float32)], 1).astype(np.float64)
    t = np.eye(n_classes)[y]
    w = np.linalg.solve(zc.T @ zc + lam * np.eye(zc.shape[1]), zc.T @ t)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(w[:-1].T.astype(np.float32)))
        model.classifier.bias.copy_(torch.from_numpy(w[-1].astype(np.float32)))


def is_int8(fmt_name: str) -> bool:
    """Every int8 export format (``tflite-int8``, ``tflite-int8-aiq``, ``onnx-int8``): the worst-drop rows cover
    all; the PyTorch reference rows (``pytorch-fp32``) are none."""
    from export.formats import FORMATS as EXPORT_FORMATS

    fmt = EXPORT_FORMATS.get(fmt_name)
    return fmt is not None and fmt.quantized


def find_checkpoint(name: str) -> Path | None:
    """The full training benchmark's checkpoint of ``name`` (never a ``--quick`` run's 1-epoch model)."""
    p = REPO / "benchmarks" / "work" / f"train-pcparts-{name.replace('_', '-')}" / "run" / "last.pt"
    return p if p.is_file() else None


def run(ctx) -> dict[str, Any]:
    import torch

    from edge_app.bundle import sha256_file
    from export.formats import get_format, resolve_options
    from export.parity import compare_outputs
    from export.pipeline import _write_export
    from export.runners import file_runner, torch_runner
    from training.models import create_model, load_checkpoint
    from training.splits import load_split

    torch.set_num_threads(2)  # the latency contract: batch 1, 2 threads
    root = ctx.require_data("pc-parts-14")
    split = load_split(REPO / "training" / "splits" / "pc-parts-14.json", root)
    labels = split.train.labels
    rng = random.Random(0)
    train_items = list(split.train.items)
    rng.shuffle(train_items)
    n_gal, n_cal, n_val, n_lat = (120, 40, 80, 10) if ctx.quick else (200, 200, 300, 30)
    gal_items, cal_items = train_items[:n_gal], train_items[n_gal:n_gal + n_cal]
    val_all = list(split.val.items)
    random.Random(1).shuffle(val_all)  # the split lists val by class; a prefix would be 1-2 classes
    val_items = val_all[:n_val]
    models = [("mobilenet_v2", None), ("efficientnet_lite0", None)]
    for name in ("mobilenet_v2", "efficientnet_lite0"):
        ck = find_checkpoint(name)
        if ck:
            models.append((name, ck))
    table: list[dict[str, Any]] = []
    notes: list[str] = []
    checkpoints: dict[str, dict[str, str]] = {}
    for name, ckpt in models:
        tag = f"{name}-trained" if ckpt else f"{name}-imagenet"
        # steps of a trained model are keyed by its weights: a re-trained checkpoint is measured again
        step_tag = f"{tag}@{sha256_file(ckpt)[:12]}" if ckpt else tag
        if ckpt:
            checkpoints[tag] = {"path": str(ckpt), "sha256": sha256_file(ckpt)}
        if ckpt:
            model, meta = load_checkpoint(ckpt)
            if list(meta["labels"]) != list(labels):
                notes.append(f"{ckpt}: labels differ from the split; skipped")
                continue
        else:
            torch.manual_seed(0)
            model = create_model(name, len(labels), pretrained=True)
        model.eval()
        spec = model.preprocess
        t0 = time.perf_counter()
        gal = Images([root / r for r, _ in gal_items], [y for _, y in gal_items], spec)
        cal = Images([root / r for r, _ in cal_items], [y for _, y in cal_items], spec)
        val = Images([root / r for r, _ in val_items], [y for _, y in val_items], spec)
        log.info("%s: decoded %d/%d/%d images in %.0fs", tag, len(gal), len(cal), len(val), time.perf_counter() - t0)
        ref = torch_runner(model)
        if not ckpt:
            z = run_all(ref, gal)["embedding"]
            fit_ridge_head(model, z, gal.labels_arr, len(labels))
            ref = torch_runner(model)
        ref_val, ref_gal = run_all(ref, val), run_all(ref, gal)["embedding"]
        ref_m = metrics(ref_val, ref_gal, val, gal)
        ref_lat = ctx.step(f"{step_tag}/pytorch-latency", lambda: latency(ref, spec, n_lat))
        table.append({"model": tag, "format": "pytorch-fp32", "size_mb": None, **ref_lat,
                      "top1": ref_m["top1"], "r1": ref_m["r1"]})
        calib = np.concatenate([cal.batch(i, i + 16) for i in range(0, len(cal), 16)])
        for fmt_name in FORMATS:
            def step(fmt_name: str = fmt_name) -> dict[str, Any]:
                t = time.perf_counter()
                fmt = get_format(fmt_name)
                opts = resolve_options(fmt, {"calib_images": len(cal)} if fmt.quantized else None)
                out = ctx.work_dir / "exports" / tag / fmt_name / fmt.file_name
                out.parent.mkdir(parents=True, exist_ok=True)
                info = _write_export(model, labels, fmt, opts, out, calib if fmt.quantized else None, name)
                export_s = time.perf_counter() - t
                runner = file_runner(out, threads=2)
                v, g = run_all(runner, val), run_all(runner, gal)["embedding"]
                m = metrics(v, g, val, gal)
                # the gate `partlens export` applies: the gallery names its classes, so the neighbour
                # check is part-level (the device ranks parts); the image-level figure is reported too
                par = compare_outputs(fmt_name, ref_val, v, ref_gal, g, cat_labels=[str(y) for y in gal.labels])
                return {"model": tag, "format": fmt_name, "size_mb": out.stat().st_size / 1e6,
                        **latency(runner, spec, n_lat), "top1": m["top1"], "r1": m["r1"],
                        "top1_drop_pt": 100 * (ref_m["top1"] - m["top1"]), "r1_drop_pt": 100 * (ref_m["r1"] - m["r1"]),
                        "top1_agree": par.top1_agreement,
                        "top1_agree_strict": par.top1_agreement_strict, "median_cos": par.median_cosine,
                        "nn_agree": par.neighbour_agreement, "nn_agree_image": par.neighbour_agreement_image,
                        "gate": "pass" if par.passed else "FAIL",
                        "metadata": (info.get("metadata") or {}).get("status", "n/a"), "export_s": round(export_s, 1)}

            try:
                row = ctx.step(f"{step_tag}/{fmt_name}", step)
            except Exception as exc:  # one broken format must not hide the others
                log.exception("%s %s failed", tag, fmt_name)
                row = {"model": tag, "format": fmt_name, "error": f"{exc.__class__.__name__}: {exc}"[:300]}
            table.append(row)
            log.info("%s", json.dumps(row))
    int8 = [r for r in table if is_int8(r["format"]) and "top1" in r]
    return {
        "table": table,
        "images": f"gallery {n_gal}, calibration {n_cal}, val {len(val_items)} (pc-parts-14 committed split)",
        "input_size": "224 px (ImageNet-init models); trained checkpoints use their own size",
        "threads": 2,
        "load_average_at_end": os.getloadavg()[0],
        "note": (f"load average {os.getloadavg()[0]:.2f} at the end (2 cores): above ~2.5 other jobs shared the "
                 "CPU and latencies are upper bounds"),
        "targets": json.dumps(TARGETS),
        "worst_int8_top1_drop_pt": max((r["top1_drop_pt"] for r in int8), default=None),
        "worst_int8_r1_drop_pt": max((r["r1_drop_pt"] for r in int8), default=None),
        "notes": "; ".join(notes) or "none",
        "checkpoints": json.dumps(checkpoints) if checkpoints else "none (ImageNet weights + ridge heads only)",
    }

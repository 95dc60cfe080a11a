"""Identify end to end on the device path: gated TFLite MobileNetV2, 10k-image catalogue, 640x480 and 12 MP JPEGs, cold start.

Model: the trained pc-parts-14 checkpoint ``benchmarks/work/train-pcparts-mobilenet-v2/run/last.pt``
(required; the last epoch, input size from its preprocessing spec) exported with ``export.pipeline.export_checkpoint``, first to ``tflite-int8``
(calibrated on pc-parts-14 train images of the committed duplicate-aware split, parity-gated on its
val images, default thresholds). If int8 fails the gate, ``tflite-fp32`` is exported and measured
instead, and the result says so (``model_format``, ``gate``). The split's images are exposed to the
exporter as per-split folders of symlinks in the work dir (no copies).
Catalogue: 10,000 images = the TFLite embeddings of 300 pc-parts-14 train photos plus small-noise
copies of them (latency does not depend on what the vectors mean). Queries: grocery val phone photos
re-encoded as 640x480 and 4000x3000 JPEGs. Peak memory of a 12 MP query is measured in a fresh process
(VmHWM reset via /proc/self/clear_refs), with and without JPEG draft decoding.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

N_CATALOGUE = 10_000
IMAGES_PER_PART = 5


CHECKPOINT = Path(__file__).resolve().parent / "work" / "train-pcparts-mobilenet-v2" / "run" / "last.pt"
N_CALIB, N_GATE_VAL, N_GATE_CAT = 200, 200, 200


def split_folders(ctx: Any, root: Path) -> dict[str, Path]:
    """Symlink folders ``<work>/pcparts/{train,val}/<class>/<file>`` for the committed pc-parts-14 split."""
    from training.splits import load_split

    split = load_split(Path(__file__).resolve().parents[1] / "training" / "splits" / "pc-parts-14.json", root)
    out = {}
    for name, images in (("train", split.train), ("val", split.val)):
        d = ctx.work_dir / "pcparts" / name
        for rel, _ in images.items:
            link = d / rel
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(root / rel)
        out[name] = d
    return out


def export_tflite(ctx: Any, folders: dict[str, Path], checkpoint: Path = CHECKPOINT,
                  key: str = "export_trained_tflite", out_dir: Path | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` to tflite-int8, or tflite-fp32 if int8 fails the gate (resumable step ``key``),
    into ``out_dir`` (default ``<work>/export``; one folder per model: the file name is the model's).

    Returns ``{"path", "format", "gate": {format: {"passed", "parity" | "error"}}}``.
    """

    def _do() -> dict[str, Any]:
        from edge_app.errors import GateError, InputError
        from export.pipeline import export_checkpoint

        if not checkpoint.is_file():
            raise InputError(f"{checkpoint}: no trained checkpoint; run its training benchmark first")
        gate: dict[str, Any] = {}
        for fmt in ("tflite-int8", "tflite-fp32"):
            opts = {"calib_images": N_CALIB} if fmt.endswith("int8") else None
            try:
                side = export_checkpoint(checkpoint, fmt, out_dir or ctx.work_dir / "export", calib_dir=folders["train"],
                                         val_dir=folders["val"], options=opts, val_images=N_GATE_VAL,
                                         catalogue_images=N_GATE_CAT, overwrite=True)
            except GateError as exc:
                gate[fmt] = {"passed": False, "error": str(exc)}
                continue
            gate[fmt] = {"passed": True, "parity": side["parity"], "seconds": side["seconds"]}
            return {"path": side["path"], "format": fmt, "gate": gate}
        raise RuntimeError(f"no TFLite export passed the parity gate: {gate}")

    if checkpoint.is_file():  # a re-trained checkpoint is exported again, not resumed from the old one's export
        from edge_app.bundle import sha256_file

        key = f"{key}_{sha256_file(checkpoint)[:12]}"
    return ctx.step(key, _do)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def build_device(ctx: Any, model_path: str, train_dir: Path) -> dict[str, str]:
    """A signed device bundle + catalogue DB with N_CATALOGUE images (resumable)."""

    def _do() -> dict[str, str]:
        from edge_app.imageio import iter_image_files, load_image
        from edge_app.preprocess import PreprocessSpec, preprocess_image
        from edge_app.runtime.backends import create_backend
        from edge_app.runtime.catalogue import CatalogueDB
        from edge_app.signing import Keyring, SigningKey
        from export.bundle import build_bundle
        from export.pipeline import read_sidecar

        side = read_sidecar(model_path)
        spec = PreprocessSpec.from_dict(side["preprocess"])
        be = create_backend(model_path, prefer="tflite")
        files = iter_image_files(train_dir)[::8][:300]
        real = []
        for p in files:
            x = preprocess_image(load_image(p, draft_size=spec.draft_size), spec, layout=be.input_layout)
            real.append(be.run(x[None], layout=be.input_layout)["embedding"][0])
        real = np.stack(real)
        rng = np.random.default_rng(0)
        emb = real[rng.integers(0, len(real), N_CATALOGUE)]
        emb = emb + 0.05 * np.linalg.norm(emb, axis=1, keepdims=True) / np.sqrt(emb.shape[1]) * rng.normal(
            size=emb.shape).astype(np.float32)
        rows = [{"image_id": f"img{i:05d}", "part_number": f"PN{i // IMAGES_PER_PART:05d}"}
                for i in range(N_CATALOGUE)]
        key = SigningKey.generate()
        Keyring({key.key_id: key.public_raw}).save(ctx.work_dir / "keyring.json")
        bundle = build_bundle(ctx.work_dir / "bundles", version=int(time.time()), model_name=side["model_name"],
                              model_files={"model.tflite": model_path}, kind="device", preprocess=spec,
                              labels=side["labels"], embeddings=emb, catalogue_rows=rows, key=key,
                              quantization=side["quantization"], parity=side["parity"])
        db_path = ctx.work_dir / "device" / "catalogue.db"
        if db_path.exists():
            for suffix in ("", "-wal", "-shm"):
                Path(str(db_path) + suffix).unlink(missing_ok=True)
        db = CatalogueDB(db_path)
        n_parts = N_CATALOGUE // IMAGES_PER_PART
        with db.transaction():
            db.upsert_parts([{"part_number": f"PN{i:05d}", "name": f"part {i}", "category": f"c{i % 20}"}
                             for i in range(n_parts)])
            db.upsert_inventory([{"part_number": f"PN{i:05d}", "site": "site_a", "stock": i % 4,
                                  "bin": f"B{i % 300}", "as_of": "2025-01-01T00:00:00+00:00"} for i in range(n_parts)])
            db.set_meta("site", "site_a")
            db.set_meta("catalogue_version", 1)
        db.close()
        return {"bundle": str(bundle), "db": str(db_path), "keyring": str(ctx.work_dir / "keyring.json")}

    return ctx.step("device_10k", _do)


def make_queries(ctx: Any, grocery: Path, n: int) -> tuple[list[Path], list[Path]]:
    from PIL import Image

    from edge_app.imageio import iter_image_files

    out = ctx.work_dir / "queries"
    out.mkdir(parents=True, exist_ok=True)
    val = iter_image_files(grocery / "val")
    small, big = [], []
    for i, p in enumerate(val[:n]):
        q = out / f"q{i:03d}_640.jpg"
        if not q.exists():
            Image.open(p).convert("RGB").resize((640, 480), Image.BILINEAR).save(q, quality=90)
        small.append(q)
    for i, p in enumerate(val[:10]):
        q = out / f"q{i:03d}_12mp.jpg"
        if not q.exists():
            Image.open(p).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(q, quality=92)
        big.append(q)
    return small, big


def _child(argv: list[str]) -> None:
    """Fresh-process measurements: ``cold BUNDLE DB KEYRING`` or ``mem BUNDLE DB KEYRING PHOTO WARM draft|nodraft``."""
    t0 = time.perf_counter()
    from edge_app.runtime.identify import Identifier

    mode, bundle, db, keyring = argv[:4]
    ident = Identifier.open(bundle, db, keyring, backend="tflite")
    t_open = time.perf_counter() - t0
    if mode == "cold":
        print(json.dumps({"cold_start_s": t_open, "load_s": ident.load_seconds, "index": ident.index.engine_name,
                          "n_index": len(ident.index)}))
        return
    photo, warm, draft = argv[4], argv[5], argv[6]
    if draft == "nodraft":
        from edge_app.imageio import load_image

        ident.decode = lambda srcs: ([load_image(s) for s in srcs], [])  # type: ignore[method-assign]
    ident.identify([warm])
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    t = time.perf_counter()
    ident.identify([photo])
    dt = time.perf_counter() - t
    print(json.dumps({"peak_increase_mb": (_rss_kb("VmHWM") - base) / 1024, "seconds": dt}))


def _spawn(*args: str) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_identify", *args], capture_output=True, text=True,
                       cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    if r.returncode:
        raise RuntimeError(f"child failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(ctx: Any) -> dict[str, Any]:
    from edge_app.runtime.identify import Identifier

    grocery = ctx.require_data("grocery")
    folders = split_folders(ctx, ctx.require_data("pc-parts-14"))
    exp = export_tflite(ctx, folders)
    model = exp["path"]
    dev = build_device(ctx, model, folders["train"])
    n_q = 30 if ctx.quick else 120
    small, big = make_queries(ctx, grocery, n_q)
    ident = Identifier.open(dev["bundle"], dev["db"], dev["keyring"], backend="tflite")
    for q in small[:5]:
        ident.identify([q])
    lat, parts = [], {"decode": [], "model": [], "search": []}
    for q in small:
        t = time.perf_counter()
        res = ident.identify([q])
        lat.append(time.perf_counter() - t)
        for k in parts:
            parts[k].append(res.timings_ms[k])
    lat12 = []
    for q in big[: (3 if ctx.quick else 10)]:
        t = time.perf_counter()
        ident.identify([q])
        lat12.append(time.perf_counter() - t)
    cold = [_spawn("cold", dev["bundle"], dev["db"], dev["keyring"]) for _ in range(3)]
    mem = {d: _spawn("mem", dev["bundle"], dev["db"], dev["keyring"], str(big[0]), str(small[0]), d)
           for d in ("draft", "nodraft")}
    med = 1e3 * float(np.median(lat))
    med12 = 1e3 * float(np.median(lat12))
    cold_s = float(np.median([c["cold_start_s"] for c in cold]))
    return {
        "model": Path(model).name, "checkpoint": str(CHECKPOINT.relative_to(Path(__file__).resolve().parents[1])),
        "model_format": exp["format"], "int8_passed_gate": exp["format"] == "tflite-int8", "gate": exp["gate"],
        "gate_images": f"calibration {N_CALIB} train, parity val {N_GATE_VAL}, parity catalogue {N_GATE_CAT} "
        "(pc-parts-14 committed split)", "backend": ident.backend.name, "index_engine": ident.index.engine_name,
        "catalogue_images": len(ident.index), "queries_640x480": len(small),
        "median_ms_640x480": med, "p95_ms_640x480": 1e3 * float(np.percentile(lat, 95)),
        "median_decode_ms": float(np.median(parts["decode"])), "median_model_ms": float(np.median(parts["model"])),
        "median_search_ms": float(np.median(parts["search"])),
        "median_ms_12mp": med12, "queries_12mp": len(lat12),
        "peak_increase_mb_12mp_draft": mem["draft"]["peak_increase_mb"],
        "peak_increase_mb_12mp_no_draft": mem["nodraft"]["peak_increase_mb"],
        "cold_start_s_median_of_3": cold_s, "cold_start_includes": "python imports, bundle verify (sha256), "
        "model load, DB open, cached index load",
        "target_640_met": med <= 15.0, "target_12mp_met": med12 <= 60.0,
        "target_mem_met": mem["draft"]["peak_increase_mb"] <= 150, "target_cold_met": cold_s <= 1.0,
    }


if __name__ == "__main__":
    _child(sys.argv[1:])

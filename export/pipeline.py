"""Export a model to one format, gate it on parity, write it with a JSON sidecar; bundle exports.

``export_model`` writes ``<out_dir>/<model_name>-<format>.<ext>`` and ``...<ext>.json`` (the
sidecar: format, quantisation, parity numbers, metadata status, labels, preprocess) only
after the export passed its parity gate. ``bundle_from_exports`` turns exported files into
a signed bundle, embedding the catalogue with the exported model the device runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_app.atomic import atomic_copy, atomic_write_json
from edge_app.catalogue_views import DEFAULT_VIEWS, check_views
from edge_app.bundle import probe_input, sha256_file
from edge_app.errors import GateError, InputError, IntegrityError, UsageError
from edge_app.imageio import iter_image_files
from edge_app.partfolders import part_from_folder
from edge_app.preprocess import PreprocessSpec
from edge_app.signing import SigningKey

from .formats import ExportFormat, get_format, resolve_options
from .inputs import load_inputs, sample_images
from .parity import MIN_VAL_IMAGES, Thresholds, enforce, measure_parity

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"


def _write_export(model: Any, labels: Sequence[str], fmt: ExportFormat, opts: Mapping[str, Any], path: Path,
                  calib: Any, model_name: str) -> dict[str, Any]:
    """Write the model file for ``fmt`` at ``path``; return extra sidecar info."""
    info: dict[str, Any] = {}
    if fmt.runtime == "onnx":
        from .onnx_export import export_onnx_fp32, quantize_onnx_int8

        if fmt.quantized:
            fp32 = path.with_name(path.stem + ".fp32.onnx")
            export_onnx_fp32(model, fp32, opset=opts["opset"])
            quantize_onnx_int8(fp32, path, calib, per_channel=opts["per_channel"], calib_method=opts["calib_method"])
            fp32.unlink()
        else:
            export_onnx_fp32(model, path, opset=opts["opset"])
        info["io"] = {"input": {"name": "input", "shape": ["batch", 3, *model.preprocess.size]}}
        return info
    from .tflite_export import check_signature, convert_fp32, convert_int8, convert_int8_aiq, write_tflite

    if fmt.quantizer == "ai-edge-quantizer":
        data = convert_int8_aiq(model, calib)
    elif fmt.quantized:
        data = convert_int8(model, calib, per_channel=opts["per_channel"], weight_tuning=opts["weight_tuning"])
    else:
        data = convert_fp32(model)
    if opts["metadata"]:
        from .metadata import embed_metadata

        data, info["metadata"] = embed_metadata(data, model_name=model_name, labels=labels, spec=model.preprocess)
    else:
        info["metadata"] = {"status": "skipped", "reason": "metadata=False"}
    info["io"] = check_signature(data, str(path))
    write_tflite(data, path)
    return info


def export_model(model: Any, labels: Sequence[str], fmt_name: str, out_dir: str | os.PathLike[str], *,
                 calib_dir: str | os.PathLike[str], val_dir: str | os.PathLike[str],
                 catalogue_dir: str | os.PathLike[str] | None = None, options: Mapping[str, Any] | None = None,
                 model_name: str | None = None, val_images: int | None = None, catalogue_images: int = 200,
                 thresholds: Thresholds = Thresholds(), overwrite: bool = False,
                 sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Export, gate, write. Returns the sidecar dict (also written next to the model file).

    ``calib_dir``: real training images (int8 calibration; also the parity catalogue unless
    ``catalogue_dir`` is given). ``val_dir``: real validation photos for the parity gate.
    ``sources`` (``calib``, ``val``): what to record as their origin when the folders are temporary.
    Raises :class:`GateError` (nothing written) if the export fails parity.
    """
    from training.allocator import tune_for_torch

    tune_for_torch()
    if val_images is not None and val_images < 1:
        raise UsageError(f"val images must be >= 1 (or unset for all), got {val_images}")
    if catalogue_images < 1:
        raise UsageError(f"catalogue images must be >= 1, got {catalogue_images}")
    sources = {"calib": str(calib_dir), "val": str(val_dir), **(sources or {})}
    t0 = time.perf_counter()
    fmt = get_format(fmt_name)
    opts = resolve_options(fmt, options)
    spec: PreprocessSpec = model.preprocess
    name = model_name or model.config.get("name", "model")
    if len(labels) != model.num_classes:
        raise UsageError(f"{len(labels)} labels for a model with {model.num_classes} classes")
    model.eval()
    ext = ".onnx" if fmt.runtime == "onnx" else ".tflite"
    out_dir = Path(out_dir)
    final = out_dir / f"{name}-{fmt.name}{ext}"
    if final.exists() and not overwrite:
        raise UsageError(f"{final} exists (pass --overwrite to replace it)")
    calib = None
    quant: dict[str, Any] = {"format": fmt.name, "runtime": fmt.runtime, "precision": fmt.precision,
                             "options": dict(opts)}
    if fmt.quantized:
        n_calib = int(opts["calib_images"])
        available = len(iter_image_files(calib_dir))
        if available < n_calib:
            if (options or {}).get("calib_images") is not None:  # asked for by the user: never quietly fewer
                raise UsageError(f"--calib-images {n_calib}, but the calibration images ({sources['calib']}) are "
                                 f"only {available}; pass --calib-images {available} or give more images")
            log.warning("int8 calibration on all %d images of %s (the default is %d; more real photos calibrate "
                        "better)", available, sources["calib"], n_calib)
            n_calib = available
            opts = {**opts, "calib_images": n_calib}
            quant["options"] = dict(opts)
        calib_paths = sample_images(calib_dir, n_calib, seed=opts["seed"], what="calibration")
        calib, kept = load_inputs(calib_paths, spec)
        if fmt.quantizer == "onnxruntime":
            scheme = "onnxruntime static QDQ, int8 activations (asymmetric) and weights (symmetric)"
        elif fmt.quantizer == "ai-edge-quantizer":
            scheme = "ai-edge-quantizer static_wi8_ai8 on the float TFLite model, float32 interface"
        else:
            scheme = ("litert-torch PT2E static int8, activations per tensor, symmetric weights, "
                      "conv+ReLU6 outputs on the fixed range [0, 6], float32 interface"
                      + (", calibration-aware weight rounding + bias correction" if opts.get("weight_tuning") else ""))
        quant.update(calibration_images=len(kept), calibration_source=sources["calib"], scheme=scheme)
        if "per_channel" in opts:
            quant["per_channel"] = opts["per_channel"]
    val, _ = load_inputs(sample_images(val_dir, val_images, what="parity validation"), spec)
    if len(val) < MIN_VAL_IMAGES:  # before the conversion (it was refused after a whole int8 conversion)
        raise GateError(f"parity gate for {fmt.name}: only {len(val)} validation photo(s); it needs at least "
                        f"{MIN_VAL_IMAGES} to judge")
    cat_src = catalogue_dir or calib_dir
    n_cat = min(catalogue_images, len(sample_images(cat_src, None)))
    cat, cat_paths = load_inputs(sample_images(cat_src, n_cat, seed=1, what="parity catalogue"), spec)
    cat_labels = catalogue_labels(cat_src, cat_paths)
    from .runners import file_runner, torch_runner

    out_dir.mkdir(parents=True, exist_ok=True)
    _sweep_stale_exports(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as td:
        tmp = Path(td) / final.name
        info = _write_export(model, labels, fmt, opts, tmp, calib, name)
        report = measure_parity(fmt.name, torch_runner(model), file_runner(tmp), val, cat, thresholds,
                                cat_labels=cat_labels)
        sidecar = {"format": fmt.name, "model_name": name, "file": final.name, "sha256": sha256_file(tmp),
                   "source_weights_sha256": weights_fingerprint(model), "labels": list(labels),
                   "preprocess": spec.to_dict(), "embedding_dim": int(model.embed_dim),
                   "quantization": quant, "parity": report.to_dict() | {"source": sources["val"]},
                   "size_bytes": tmp.stat().st_size, **info,
                   "seconds": round(time.perf_counter() - t0, 1)}
        enforce(report)  # GateError: nothing is written
        atomic_copy(tmp, final, overwrite=True)
    atomic_write_json(final.with_name(final.name + SIDECAR_SUFFIX), sidecar)
    meta = info.get("metadata", {})
    if meta.get("status") == "failed":
        log.error("%s: exported WITHOUT TFLite metadata: %s", final, meta.get("reason"))
    log.info("exported %s (%d bytes): %s", final, sidecar["size_bytes"], report.summary())
    return sidecar | {"path": str(final)}


def weights_fingerprint(model: Any) -> str:
    """sha256 of the PyTorch model's parameters and buffers (names, shapes, bytes): which trained model an export
    came from, so that a bundle never mixes exports of two checkpoints."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def catalogue_labels(root: str | os.PathLike[str], paths: Sequence[Path]) -> list[str] | None:
    """The part of each catalogue image, when the folder says it: a generated layout (``images.csv``
    maps path -> part_number) or an image folder ``root/<part>/<file>`` with two or more parts.
    None otherwise (the parity gate then compares nearest images, not parts)."""
    import csv

    root = Path(root)
    # absolute but NOT resolved: a catalogue folder of symlinks names its parts by the link's folder
    rels = [Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))) for p in paths]
    if (root / "images.csv").is_file():
        with open(root / "images.csv", newline="") as fh:
            part_of = {Path(r["path"]): r["part_number"] for r in csv.DictReader(fh)}
        labels = [part_of.get(r) for r in rels]
        return None if any(lab is None for lab in labels) else labels  # type: ignore[return-value]
    if all(len(r.parts) == 2 for r in rels) and len({r.parts[0] for r in rels}) >= 2:
        return [part_from_folder(r.parts[0]) for r in rels]
    return None


def export_checkpoint(ckpt: str | os.PathLike[str], fmt_name: str, out_dir: str | os.PathLike[str], *,
                      calib_dir: str | os.PathLike[str] | None = None, val_dir: str | os.PathLike[str] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
    """:func:`export_model` for a ``partlens-ckpt/1`` checkpoint.

    Without ``calib_dir`` / ``val_dir``, the images come from the split the checkpoint was trained on
    (:func:`training.splits.checkpoint_split`): its train images calibrate int8 and make the parity
    catalogue, its val images are the parity photos.
    """
    from training.models import load_checkpoint

    model, meta = load_checkpoint(ckpt)
    kwargs.setdefault("model_name", meta["model_name"])
    if calib_dir is not None and val_dir is not None:
        return export_model(model, meta["labels"], fmt_name, out_dir, calib_dir=calib_dir, val_dir=val_dir, **kwargs)
    from training.splits import checkpoint_split, link_image_folders

    try:
        train, val, where = checkpoint_split(meta, what=str(ckpt))
    except (UsageError, InputError, IntegrityError) as exc:  # (an audit: the way around it was not named)
        kind = next(c for c in (UsageError, InputError, IntegrityError) if isinstance(exc, c))
        raise kind(f"{exc}; pass --calib TRAIN_IMAGES and --val VAL_PHOTOS folders instead of the checkpoint's "
                   "split") from None
    missing = {k: v for k, v in (("train", train if calib_dir is None else None),
                                 ("val", val if val_dir is None else None)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="partlens-export-") as td:
        linked = link_image_folders(missing, td)
        sources = {"calib": f"train images of the {where}" if calib_dir is None else str(calib_dir),
                   "val": f"val images of the {where}" if val_dir is None else str(val_dir)}
        log.info("export %s: int8 calibration / parity catalogue from %s; parity photos from %s", ckpt,
                 sources["calib"], sources["val"])
        return export_model(model, meta["labels"], fmt_name, out_dir, calib_dir=calib_dir or linked.get("train"),
                            val_dir=val_dir or linked.get("val"), sources=sources, **kwargs)


#: what bundle building and calibration read from a sidecar
SIDECAR_FIELDS = {"format": str, "model_name": str, "labels": list, "preprocess": dict, "embedding_dim": int,
                  "quantization": dict, "parity": dict}


def read_sidecar(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The export sidecar of ``model_path``, checked: its fields, its format against the file's type, and the
    model file's sha256 (a model exported again, or changed, since its sidecar was written is refused)."""
    p = Path(model_path)
    side = p.with_name(p.name + SIDECAR_SUFFIX)
    if not p.is_file():
        raise InputError(f"{p}: no such model file")
    if not side.is_file():
        raise InputError(f"{side}: missing export sidecar (export the model with `partlens export`)")
    try:
        doc = json.loads(side.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{side}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{side}: not an export sidecar (a JSON object is expected)")
    bad = [k for k, t in SIDECAR_FIELDS.items() if not isinstance(doc.get(k), t)]
    if bad:
        raise InputError(f"{side}: not an export sidecar (missing or malformed: {', '.join(bad)})")
    fmt = get_format(doc["format"])
    if Path(fmt.file_name).suffix != p.suffix:
        raise IntegrityError(f"{p}: the sidecar says {fmt.name}, which is a {Path(fmt.file_name).suffix} file")
    want = doc.get("sha256")
    if want is None:
        raise IntegrityError(f"{side}: the sidecar does not record the model file's sha256, so the file cannot be "
                             "checked against it; export the model again")
    if sha256_file(p) != want:
        raise IntegrityError(f"{p}: the model file is not the one its sidecar describes (sha256 differs: changed, "
                             "or an export stopped between the two files); export it again")
    return doc


def bundle_from_exports(root: str | os.PathLike[str], models: Sequence[str | os.PathLike[str]], *,
                        catalogue_dir: str | os.PathLike[str], key: SigningKey, version: int, kind: str = "device",
                        calibration: Mapping[str, Any] | None = None, accuracy: Mapping[str, Any] | None = None,
                        index: Any = None, catalogue_views: str = DEFAULT_VIEWS) -> Path:
    """Build a signed bundle from exported model files (with sidecars) and a catalogue folder.

    The catalogue is embedded with the bundle's TFLite model (the one the device runs); a
    desktop bundle with only ONNX uses that. ``catalogue_views`` is recorded in the manifest, so
    the hub embeds parts added later the same way.
    """
    from .bundle import IndexParams, build_bundle
    from .catalogue import catalogue_from_dir, embed_catalogue
    from .runners import file_runner

    if not models:
        raise UsageError("give at least one exported model file")
    sides = {Path(m): read_sidecar(m) for m in models}
    files: dict[str, Path] = {}
    for path, side in sides.items():
        fmt = get_format(side["format"])
        if fmt.file_name in files:
            raise UsageError(f"two {fmt.runtime} models given ({files[fmt.file_name]}, {path})")
        files[fmt.file_name] = path
    first = next(iter(sides.values()))
    for path, side in sides.items():
        for k in ("model_name", "labels", "preprocess", "embedding_dim"):
            if side[k] != first[k]:
                raise UsageError(f"{path}: {k} differs from the other exported model")
        if len(sides) > 1 and not side.get("source_weights_sha256"):
            raise UsageError(f"{path}: its sidecar is from an older partlens that did not record which weights it was "
                             "exported from, so it cannot be bundled with another model (the catalogue is embedded "
                             "with one); export the models again")
        if len(sides) > 1 and side["source_weights_sha256"] != first.get("source_weights_sha256"):
            raise UsageError(f"{path}: exported from other weights than {next(iter(sides))}: the catalogue is "
                             "embedded with one model, so a bundle's models must come from one checkpoint; export "
                             "them again from the same one")
        _check_recorded_parity(path, side)
        if path.suffix == ".tflite" and (side.get("metadata") or {}).get("status") == "embedded":
            _check_metadata_normalisation(path, PreprocessSpec.from_dict(side["preprocess"]), side["labels"])
    spec = PreprocessSpec.from_dict(first["preprocess"])
    device_model = files.get("model.tflite") or files["model.onnx"]
    views = check_views(catalogue_views)
    items = catalogue_from_dir(catalogue_dir)
    if calibration:
        from .calibrate import check_calibration

        check_calibration(calibration, model_sha256=sha256_file(device_model), catalogue_views=views,
                          catalogue_parts={i.part_number for i in items})
    device_runner = file_runner(device_model)
    emb, rows = embed_catalogue(device_runner, items, spec, views=views, every_part=True)
    probe_out = device_runner(probe_input(spec))
    probe_emb = np.asarray(probe_out["embedding"][0], dtype=np.float64)
    probe = {"embedding": [round(float(v), 6) for v in probe_emb / max(float(np.linalg.norm(probe_emb)), 1e-12)],
             "top_class": int(np.argmax(probe_out["logits"][0]))}
    by_fmt = {s["format"]: s for s in sides.values()}
    return build_bundle(
        root, version=version, model_name=first["model_name"], model_files=files, kind=kind, preprocess=spec,
        labels=first["labels"], embeddings=emb, catalogue_rows=rows, key=key,
        quantization={f: s["quantization"] | {"metadata": s.get("metadata"), "io": s.get("io")}
                      for f, s in by_fmt.items()},
        parity={f: s["parity"] for f, s in by_fmt.items()},
        accuracy=accuracy, calibration=calibration, index=index or IndexParams(), catalogue_views=views,
        probe=probe,
    )


def _check_metadata_normalisation(path: Path, spec: PreprocessSpec, labels: Sequence[str]) -> None:
    """The sidecar's normalisation and labels must be the ones the export embedded in the TFLite metadata (an
    edited sidecar went into the manifest, and so onto the tablets, unnoticed: reversed labels name every class
    wrongly). Checked when this machine can read metadata."""
    try:
        from .metadata import read_metadata

        meta = read_metadata(path.read_bytes())
        embedded_labels = list(meta["labels"])
        unit = meta["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
        opts = next(u["options"] for u in unit.get("process_units", []) if "mean" in u.get("options", {}))
    except ImportError:
        log.info("%s: tflite-support is not installed here: the embedded normalisation is not compared", path)
        return
    except (KeyError, IndexError, StopIteration, ValueError, RuntimeError) as exc:
        raise IntegrityError(f"{path}: its sidecar says metadata is embedded, but it cannot be read ({exc})") from None
    want_mean, want_std = [255 * m for m in spec.mean], [255 * s for s in spec.std]
    got_mean, got_std = list(opts["mean"]), list(opts["std"])
    if len(got_mean) != 3 or len(got_std) != 3 or any(abs(a - b) > 0.5 for a, b in zip(got_mean + got_std,
                                                                                       want_mean + want_std)):
        raise IntegrityError(f"{path}: the sidecar's normalisation (mean {want_mean}, std {want_std} in 0..255) is "
                             f"not the one embedded in the model (mean {got_mean}, std {got_std}): the sidecar was "
                             "edited or belongs to another export; export again")
    if embedded_labels != list(labels):
        at = next((i for i, (a, b) in enumerate(zip(labels, embedded_labels)) if a != b),
                  min(len(labels), len(embedded_labels)))
        raise IntegrityError(f"{path}: the sidecar's labels ({len(labels)}) are not the ones embedded in the model "
                             f"({len(embedded_labels)}; first difference at position {at}): the sidecar was edited "
                             "or belongs to another export; export again")


#: a ``.export-*`` folder older than this was left by a killed export (a conversion takes minutes): deleted
STALE_EXPORT_S = 6 * 3600.0


def _sweep_stale_exports(out_dir: Path, max_age_s: float = STALE_EXPORT_S) -> None:
    """Delete ``.export-*`` folders a killed export left in ``out_dir`` (an ungated model copy each, an audit);
    a young one may be another export running into the same folder and stays."""
    import shutil
    import time

    now = time.time()
    for p in out_dir.glob(".export-*"):
        try:
            if p.is_dir() and not p.is_symlink() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p)
                log.info("deleted %s, left by an export that was stopped", p)
        except OSError as exc:
            log.warning("could not delete %s left by a stopped export (%s)", p, exc)


def _check_recorded_parity(path: Path, side: Mapping[str, Any]) -> None:
    """The sidecar's parity must say passed, at thresholds no looser than the defaults (an export gated
    through the API with looser ones must not reach a tablet unnoticed)."""
    parity = side["parity"]
    if parity.get("passed") is not True:
        raise UsageError(f"{path}: its sidecar does not record a passed parity gate")
    done, default = parity.get("thresholds") or {}, asdict(Thresholds())
    looser = [k for k in ("top1_agreement", "median_cosine", "neighbour_agreement")
              if not float(done.get(k, -1)) >= default[k]]
    # the 5th-percentile cosine must be as high, the tie tolerances (flips forgiven as ties) as small; exports from
    # before these were recorded lack them and pass (an audit: p05 -1 and tie tolerances of 2 / 1 were accepted)
    looser += [k for k in ("p05_cosine",) if k in done and not float(done[k]) >= default[k]]
    looser += [k for k in ("tie_tolerance", "logit_tie_tolerance") if k in done and not float(done[k]) <= default[k]]
    if looser:
        raise UsageError(f"{path}: gated at looser thresholds than partlens's ({', '.join(looser)}); "
                         "export it again with the defaults")

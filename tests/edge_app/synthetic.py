"""Tiny, deterministic test material for the runtime: drawn part images, a thumbnail ONNX model,
a generated-layout catalogue and a signed bundle. No downloads, no torch."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from edge_app.preprocess import PreprocessSpec
from edge_app.signing import Keyring, SigningKey

SIZE = 32  # model input
THUMB = 8  # the model averages to an 8x8 thumbnail
DIM = 48


def draw_part(part: int, view: int, size: int = 96, *, jitter: bool = True) -> Image.Image:
    """A distinct pattern per part; ``view`` adds a small shift, light change and noise."""
    rng = np.random.default_rng(1000 + part)
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, size * 2 // 3, 2)
        w, h = rng.integers(size // 4, size // 2, 2)
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=col)
    if not jitter:
        return img
    vr = np.random.default_rng(part * 7919 + view)
    arr = np.asarray(img, np.float32)
    dx, dy = vr.integers(-2, 3, 2)
    arr = np.roll(arr, (int(dy), int(dx)), axis=(0, 1))
    arr = arr * vr.uniform(0.9, 1.1) + vr.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_onnx_model(path: Path, n_classes: int, seed: int = 0, dim: int = DIM) -> Path:
    """NCHW float input (N,3,32,32) -> AveragePool to 8x8 -> flatten -> Gemm: 'embedding', Gemm: 'logits'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    feat = 3 * THUMB * THUMB
    w = (rng.normal(0, 1, (feat, dim)) / np.sqrt(feat)).astype(np.float32)
    wc = (rng.normal(0, 1, (dim, n_classes)) / np.sqrt(dim)).astype(np.float32)
    k = SIZE // THUMB
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "Wc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "thumb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(wc, "Wc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


SPEC = PreprocessSpec(size=(SIZE, SIZE), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def part_number(i: int) -> str:
    return f"P{i:04d}"


@dataclass
class Catalogue:
    root: Path
    parts_csv: Path
    images_csv: Path
    parts: list[str]


def write_catalogue(root: Path, n_parts: int, *, catalogue_per_part: int = 2, field_per_part: int = 3,
                    look_alike: tuple[int, int] | None = None) -> Catalogue:
    """Generated-layout catalogue of drawn parts. ``look_alike=(i, j)``: parts i and j share a
    look-alike group and image pattern but differ in size."""
    root.mkdir(parents=True, exist_ok=True)
    rows, img_rows = [], []
    for i in range(n_parts):
        pn = part_number(i)
        group = ""
        pattern = i
        size_mm = 10.0 + i
        if look_alike and i in look_alike:
            group, pattern = "LA1", look_alike[0]
            size_mm = 8.0 if i == look_alike[0] else 12.0
        rows.append({"part_number": pn, "name": f"Part {i} {'bolt' if i % 2 else 'gear'}",
                     "category": "fastener" if i % 2 else "gear", "manufacturer": "ACME",
                     "description": f"synthetic part number {i}", "size_mm": size_mm, "look_alike_group": group,
                     "stock_site_a": i % 3, "bin_site_a": f"A-{i:02d}", "stock_site_b": 5, "bin_site_b": f"B-{i:02d}"})
        for kind, n, offset in (("catalogue", catalogue_per_part, 0), ("field", field_per_part, 100)):
            for v in range(n):
                rel = f"images/{pn}/{kind}_{v:04d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                draw_part(pattern, offset + v + (50 if look_alike and i == look_alike[1] else 0)).save(
                    root / rel, quality=95)
                img_rows.append({"path": rel, "part_number": pn, "kind": kind, "scale_ref": 0, "in_hand": 0,
                                 "seed": v})
    parts_csv, images_csv = root / "parts.csv", root / "images.csv"
    with open(parts_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(images_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(img_rows[0]))
        w.writeheader()
        w.writerows(img_rows)
    return Catalogue(root, parts_csv, images_csv, [part_number(i) for i in range(n_parts)])


def embed_paths(model_path: Path, paths: list[Path]) -> np.ndarray:
    """Embeddings of images with the ONNX model (what the hub would compute for the bundle)."""
    from edge_app.imageio import load_image
    from edge_app.preprocess import preprocess_image
    from edge_app.runtime.backends import create_backend

    be = create_backend(model_path, prefer="onnx")
    batch = np.stack([preprocess_image(load_image(p, draft_size=SPEC.draft_size), SPEC) for p in paths])
    return be.run(batch)["embedding"]


def make_keys() -> tuple[SigningKey, Keyring]:
    key = SigningKey.generate()
    return key, Keyring({key.key_id: key.public_raw})


def build_test_bundle(root: Path, model_path: Path, cat: Catalogue, key: SigningKey, *, version: int = 1,
                      calibration: dict[str, Any] | None = None, exclude_parts: set[str] = frozenset()) -> Path:
    """A signed desktop bundle (ONNX model) over the catalogue images of ``cat`` (minus excluded parts)."""
    from export.bundle import IndexParams, build_bundle

    rows = []
    with open(cat.images_csv) as fh:
        for r in csv.DictReader(fh):
            if r["kind"] == "catalogue" and r["part_number"] not in exclude_parts:
                rows.append({"image_id": r["path"], "part_number": r["part_number"]})
    emb = embed_paths(model_path, [cat.root / r["image_id"] for r in rows])
    return build_bundle(root, version=version, model_name="thumb-test", model_files={"model.onnx": model_path},
                        kind="desktop", preprocess=SPEC, labels=list(cat.parts), embeddings=emb,
                        catalogue_rows=rows, key=key, quantization={"mode": "none"}, parity={"ok": True},
                        calibration=calibration, index=IndexParams(M=16, ef_construction=100, ef_search=50))


def field_images(cat: Catalogue) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    with open(cat.images_csv) as fh:
        for r in csv.DictReader(fh):
            if r["kind"] == "field":
                out.setdefault(r["part_number"], []).append(cat.root / r["path"])
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)

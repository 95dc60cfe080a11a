"""Golden preprocessing check: training eval transform, hub embedder and device give the same tensor.

An independent torchvision implementation of the same :class:`PreprocessSpec` semantics is the
reference; every path must match it within 1 LSB (one 8-bit step, i.e. 1/(255*std)).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_app.imageio import load_image
from edge_app.preprocess import PreprocessSpec, preprocess_image

torch = pytest.importorskip("torch")
TF = pytest.importorskip("torchvision.transforms.functional")


def _make_image(path: Path, size: tuple[int, int]) -> None:
    """A deterministic photo-like test image: gradients, a disc, noise; saved as PNG (lossless)."""
    from PIL import Image, ImageDraw

    w, h = size
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(w + h - 2, 1)], -1)
    arr = np.clip(arr + rng.integers(-20, 21, size=arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    ImageDraw.Draw(img).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(200, 30, 90))
    img.save(path)


def torchvision_reference(img, spec: PreprocessSpec) -> np.ndarray:
    """The spec re-implemented with torchvision ops (PIL-backed resize, float normalise)."""
    from torchvision.transforms import InterpolationMode

    interp = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
              "nearest": InterpolationMode.NEAREST}[spec.interpolation]
    h, w = spec.size
    iw, ih = img.size
    if spec.resize == "squash":
        out = TF.resize(img, [h, w], interpolation=interp)
    elif spec.resize == "shorter_crop":
        scale = max(w, h) / spec.crop_fraction / min(iw, ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        out = TF.resize(img, [nh, nw], interpolation=interp)
        out = TF.crop(out, (nh - h) // 2, (nw - w) // 2, h, w)
    else:  # letterbox
        scale = min(w / iw, h / ih)
        nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
        out = TF.resize(img, [nh, nw], interpolation=interp)
        left, top = (w - nw) // 2, (h - nh) // 2
        out = TF.pad(out, [left, top, w - nw - left, h - nh - top], fill=spec.pad_value)
    t = TF.normalize(TF.to_tensor(out), list(spec.mean), list(spec.std))
    return t.numpy()


SPECS = [
    PreprocessSpec(size=(64, 64), resize="squash", mean=(0.5,) * 3, std=(0.5,) * 3),
    PreprocessSpec(size=(48, 64), resize="shorter_crop", crop_fraction=0.875,
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    PreprocessSpec(size=(64, 64), resize="letterbox", interpolation="bicubic",
                   mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.resize)
@pytest.mark.parametrize("image_size", [(173, 61), (90, 130)], ids=["wide", "tall"])
def test_all_paths_match_reference_within_one_lsb(tmp_path: Path, spec: PreprocessSpec,
                                                  image_size: tuple[int, int]) -> None:
    from training.data import ImageSet, TorchImageDataset

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    path = root / "a" / "x.png"
    _make_image(path, image_size)
    lsb = 1.0 / (255.0 * np.asarray(spec.std, dtype=np.float64))[:, None, None]

    img = load_image(path, draft_size=spec.draft_size)
    device = preprocess_image(img, spec)
    ref = torchvision_reference(img, spec)
    assert device.shape == ref.shape == (3, *spec.size) and device.dtype == np.float32
    assert np.all(np.abs(device - ref) <= lsb * 1.0001), f"device vs torchvision: max {np.abs(device - ref).max()}"

    train = TorchImageDataset(ImageSet(root, ["a"], [("a/x.png", 0)]), spec)[0][0].numpy()
    assert np.all(np.abs(train - ref) <= lsb * 1.0001)

    from sync.embedder import BundleEmbedder

    seen = {}

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        seen["x"] = batch
        return {"embedding": np.zeros((len(batch), 4), np.float32)}

    fake_bundle = SimpleNamespace(bundle_id="v1-000000000000", preprocess=spec, embedding_dim=4, catalogue_views="none")
    BundleEmbedder(fake_bundle, SimpleNamespace(run=run))([img])
    assert np.all(np.abs(seen["x"][0] - ref) <= lsb * 1.0001)


def test_reference_detects_a_real_difference(tmp_path: Path) -> None:
    """The comparison has teeth: a spec with a different interpolation is more than 1 LSB away."""
    path = tmp_path / "x.png"
    _make_image(path, (173, 61))
    img = load_image(path)
    spec = SPECS[0]
    other = PreprocessSpec(size=spec.size, resize=spec.resize, interpolation="nearest", mean=spec.mean, std=spec.std)
    diff = np.abs(preprocess_image(img, spec) - torchvision_reference(img, other)).max()
    assert diff > 2 / (255 * 0.5)

"""The frozen preprocessing spec, saved with every model and in every bundle manifest.

Training (eval transform), the hub and the device all call :func:`preprocess_image`,
so one photo gives the same input tensor everywhere.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import UsageError

RESIZE_MODES = ("squash", "shorter_crop", "letterbox")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: the largest model input side a spec may name (a signed typo of 100000 would allocate ~30 GB per photo)
MAX_SIDE = 4096


def _number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _whole(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded RGB image becomes a model input.

    ``size`` is (height, width). ``resize``:
      - ``squash``: resize the whole image to ``size`` (keeps long narrow parts whole);
      - ``shorter_crop``: resize the shorter side to ``size/crop_fraction``, centre-crop ``size``;
      - ``letterbox``: fit inside ``size`` and pad with ``pad_value``.
    ``mean``/``std`` are in units of 0..1 pixel values: ``x = (rgb/255 - mean) / std``.
    """

    size: tuple[int, int] = (224, 224)
    resize: str = "squash"
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pad_value: int = 114
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.size) != 2 or not all(_whole(v) and 8 <= v <= MAX_SIDE for v in self.size):
            raise UsageError(f"size must be (height, width), whole numbers in 8..{MAX_SIDE}, got {self.size!r}")
        if not (_number(self.crop_fraction) and 0.1 <= self.crop_fraction <= 1.0):
            raise UsageError(f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(_number(x) and math.isfinite(x) for x in v):
                raise UsageError(f"{name} must be 3 finite numbers (R, G, B), got {v!r}")
        if any(s <= 0 for s in self.std):
            raise UsageError("std must be positive")
        if not (_whole(self.pad_value) and 0 <= self.pad_value <= 255):
            raise UsageError(f"pad_value must be a grey level 0..255, got {self.pad_value!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"layout must be NCHW or NHWC, got {self.layout!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("size", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    @property
    def draft_size(self) -> tuple[int, int]:
        """The smallest decode size that still leaves 2x headroom over the model input."""
        h, w = self.size
        return (2 * w, 2 * h)


def _pil_resample(name: str) -> int:
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[name]


def resize_image(img: "Image.Image", spec: PreprocessSpec) -> "Image.Image":  # noqa: F821
    """Geometric part of the spec: an RGB PIL image of exactly ``spec.size``."""
    from PIL import Image

    h, w = spec.size
    resample = _pil_resample(spec.interpolation)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if spec.resize == "squash":
        return img.resize((w, h), resample)
    iw, ih = img.size
    if spec.resize == "shorter_crop":
        scale = max(w, h) / spec.crop_fraction / min(iw, ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        left, top = (nw - w) // 2, (nh - h) // 2
        sx, sy = nw / iw, nh / ih
        # resize only the centre region that survives the crop: the same pixels as resizing the whole image
        # and cropping, without the whole image at the new scale (a 1x5000 photo made a 1.3 GB one)
        return img.resize((w, h), resample, box=(left / sx, top / sy, (left + w) / sx, (top + h) / sy))
    # letterbox
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    canvas = Image.new("RGB", (w, h), (spec.pad_value,) * 3)
    canvas.paste(img.resize((nw, nh), resample), ((w - nw) // 2, (h - nh) // 2))
    return canvas


def normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HWC (or NHWC) -> float32 normalised, in HWC order."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    return (rgb.astype(np.float32) - mean) / std


def preprocess_image(img: "Image.Image", spec: PreprocessSpec, layout: str | None = None) -> np.ndarray:  # noqa: F821
    """Decoded RGB image -> float32 array of shape (C,H,W) or (H,W,C) per ``layout``."""
    arr = normalize(np.asarray(resize_image(img, spec), dtype=np.uint8), spec)
    if (layout or spec.layout) == "NCHW":
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return arr

"""Training augmentations for handheld phone photos, applied to the decoded PIL image.

Mild random-resized crop, small rotation, colour jitter, blur and perspective, then the very same
resize + normalisation as the eval path (:mod:`edge_app.preprocess`), so train and device inputs
differ only by the augmentation itself. Randomness comes from torch's RNG (seeded per run/worker).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_app.errors import UsageError
from edge_app.preprocess import PreprocessSpec, normalize, resize_image


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 15.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    blur_p: float = 0.2
    perspective_p: float = 0.3
    perspective: float = 0.2
    hflip_p: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UsageError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        for name in ("blur_p", "perspective_p", "hflip_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{name} must be a probability, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        d = dict(d)
        for k in ("crop_scale", "crop_ratio"):
            if k in d:
                d[k] = tuple(d[k])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown augmentation option(s): {sorted(unknown)}")
        return cls(**d)


def _rand(lo: float, hi: float) -> float:
    import torch

    return lo + (hi - lo) * float(torch.rand(()))


class TrainTransform:
    """``PIL RGB -> float32 CHW`` (or HWC per spec.layout): augment, then the spec's resize + normalise."""

    def __init__(self, spec: PreprocessSpec, cfg: AugmentConfig | None = None) -> None:
        self.spec = spec
        self.cfg = cfg or AugmentConfig()

    def _crop(self, img):
        w, h = img.size
        area = w * h
        lo, hi = self.cfg.crop_ratio
        for _ in range(10):
            target = area * _rand(*self.cfg.crop_scale)
            ratio = math.exp(_rand(math.log(lo), math.log(hi)))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0 = int(_rand(0, w - cw + 1 - 1e-9))
                y0 = int(_rand(0, h - ch + 1 - 1e-9))
                return img.crop((x0, y0, x0 + cw, y0 + ch))
        return img

    def augment(self, img):
        """The augmented PIL image (before resize/normalise)."""
        import torch
        import torchvision.transforms.v2.functional as TF
        from PIL import ImageFilter

        c = self.cfg
        img = self._crop(img)
        if c.hflip_p and float(torch.rand(())) < c.hflip_p:
            img = TF.horizontal_flip(img)
        # (not on images under 16 px a side: their rounded corners can coincide, and the warp is unsolvable)
        if c.perspective_p and float(torch.rand(())) < c.perspective_p and min(img.size) >= 16:
            w, h = img.size
            d = c.perspective
            start = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
            end = [[int(x + _rand(-d, d) * w / 2), int(y + _rand(-d, d) * h / 2)] for x, y in start]
            img = TF.perspective(img, start, end, fill=[114, 114, 114])
        if c.rotation:
            img = TF.rotate(img, _rand(-c.rotation, c.rotation), fill=[114, 114, 114])
        if c.brightness:
            img = TF.adjust_brightness(img, _rand(1 - c.brightness, 1 + c.brightness))
        if c.contrast:
            img = TF.adjust_contrast(img, _rand(1 - c.contrast, 1 + c.contrast))
        if c.saturation:
            img = TF.adjust_saturation(img, _rand(1 - c.saturation, 1 + c.saturation))
        if c.hue:
            img = TF.adjust_hue(img, _rand(-c.hue, c.hue))
        if c.blur_p and float(torch.rand(())) < c.blur_p:
            img = img.filter(ImageFilter.GaussianBlur(radius=_rand(0.3, 1.5)))
        return img

    def __call__(self, img) -> np.ndarray:
        arr = normalize(np.asarray(resize_image(self.augment(img), self.spec), dtype=np.uint8), self.spec)
        if self.spec.layout == "NCHW":
            arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
        return arr

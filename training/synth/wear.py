"""Wear on a part taken off a machine: grease, rust, dust and a chipped-off piece.

Field engineers photograph parts they just removed: greasy, rusty, dusty or broken. ``apply_wear``
paints that on the part's RGBA layer (before it is placed in the scene), from its own generator, so a
worn shot is the same shot as its clean twin (pose, light, background, clutter, hand) plus the wear.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .parts import Part
from .scene import fbm

WEARS = ("grease", "rust", "dust", "chipped")
#: a chipped part loses about this share of its area (a corner, an edge, a piece of a ring)
CHIP_RANGE = (0.10, 0.22)
_STAINS: dict[str, dict[str, Any]] = {
    # coverage of the part, opacity, colour(s)
    "grease": {"coverage": (0.25, 0.55), "opacity": (0.6, 0.9), "colour": (30, 26, 20)},
    "rust": {"coverage": (0.2, 0.5), "opacity": (0.7, 0.95), "colour": (150, 74, 30), "dark": (86, 40, 20)},
    "dust": {"coverage": (0.35, 0.7), "opacity": (0.35, 0.6), "colour": (176, 158, 128)},
}


#: shapes made of iron or steel (rust only shows on those; rubber, plastic, brass and resistors do not rust)
RUSTING_SHAPES = frozenset({"hex_nut", "flat_washer", "spring_washer", "hex_bolt", "cap_screw", "bearing",
                            "hose_clamp", "valve_wheel", "valve_lever", "valve_tee"})


def wears_for(part: Part) -> tuple[str, ...]:
    """The kinds of wear ``part`` can show."""
    steel = part.shape in RUSTING_SHAPES or (part.shape == "spur_gear" and part.params.get("material") == "steel")
    return WEARS if steel else tuple(w for w in WEARS if w != "rust")


def plan_wear(part: Part, rng: np.random.Generator) -> tuple[str, ...]:
    """One or (about one time in three) two kinds of wear ``part`` can show, in drawing order (a chip last:
    the break is fresh)."""
    choices = wears_for(part)
    kinds = [choices[int(rng.integers(len(choices)))]]
    if rng.random() < 0.35:
        others = [w for w in choices if w != kinds[0]]
        kinds.append(others[int(rng.integers(len(others)))])
    return tuple(sorted(kinds, key=lambda k: k == "chipped"))


def apply_wear(layer: Image.Image, kinds: Sequence[str], rng: np.random.Generator) -> tuple[Image.Image, dict[str, Any]]:
    """``layer`` (RGBA part layer) with ``kinds`` of wear; info: the kinds and the share of area chipped off."""
    unknown = [k for k in kinds if k not in WEARS]
    if unknown:
        raise ValueError(f"unknown wear {unknown}; choose from {WEARS}")
    arr = np.asarray(layer.convert("RGBA"), np.float32)
    rgb, alpha = arr[..., :3].copy(), arr[..., 3] / 255.0
    solid = alpha > 0.5
    info: dict[str, Any] = {"wear": list(kinds), "chipped_fraction": 0.0}
    if not solid.any() or not kinds:
        return layer, info
    area = float(alpha.sum())
    for kind in kinds:
        if kind == "chipped":
            rgb, alpha = _chip(rgb, alpha, solid, rng)
        else:
            rgb = _stain(rgb, solid, kind, rng)
    info["chipped_fraction"] = round(1.0 - float(alpha.sum()) / area, 4)
    out = np.concatenate([np.clip(rgb + 0.5, 0, 255), np.clip(alpha * 255.0 + 0.5, 0, 255)[..., None]], axis=2)
    return Image.fromarray(out.astype(np.uint8), "RGBA"), info


def _patches(solid: np.ndarray, rng: np.random.Generator, coverage: float, base: int) -> np.ndarray:
    """Soft blotches over about ``coverage`` of the part (0-1 weights)."""
    h, w = solid.shape
    n = fbm(h, w, rng, 4, base)
    t = float(np.quantile(n[solid], 1.0 - coverage))
    return np.clip((n - t) / 0.35, 0.0, 1.0)


def _stain(rgb: np.ndarray, solid: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    spec = _STAINS[kind]
    h, w = solid.shape
    base = max(2, int(round(max(h, w) / 48)))
    m = _patches(solid, rng, rng.uniform(*spec["coverage"]), base) * rng.uniform(*spec["opacity"])
    fine = fbm(h, w, rng, 2, max(4, base * 4))
    colour = np.broadcast_to(np.asarray(spec["colour"], np.float32), rgb.shape).copy()
    if kind == "rust":  # pitted: dark and bright rust mixed at a fine scale
        t = np.clip(0.5 + 0.35 * fine, 0.0, 1.0)[..., None]
        colour = colour * (1 - t) + np.asarray(spec["dark"], np.float32) * t
    elif kind == "dust":  # speckled
        colour *= (1.0 + 0.08 * fine)[..., None]
        m = m * np.clip(0.75 + 0.4 * fine, 0.0, 1.0)
    out = rgb * (1 - m[..., None]) + colour * m[..., None]
    if kind == "grease":  # wet film: a few glossy highlights where it is thick
        gloss = np.clip(fine - 1.2, 0.0, 1.0) * (m > 0.5)
        out += gloss[..., None] * 70.0
    return out


def _chip(rgb: np.ndarray, alpha: np.ndarray, solid: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """Break a piece off one side: cut along a ragged line so that CHIP_RANGE of the area goes, and show
    the fresh fracture as a light, rough rim along the cut."""
    h, w = solid.shape
    ys, xs = np.nonzero(solid)
    cx, cy = float(xs.mean()), float(ys.mean())
    theta = rng.uniform(0, 2 * math.pi)
    gx = np.arange(w, dtype=np.float32)[None, :] - cx
    gy = np.arange(h, dtype=np.float32)[:, None] - cy
    ragged = fbm(h, w, rng, 3, 3) * rng.uniform(1.0, 2.5) * max(1.0, max(h, w) / 80)
    depth = gx * math.cos(theta) + gy * math.sin(theta) + ragged  # distance along theta, ragged
    weights = alpha[solid]
    order = np.argsort(depth[solid])[::-1]
    removed = np.cumsum(weights[order]) / float(weights.sum())
    target = rng.uniform(*CHIP_RANGE)
    cut_at = float(depth[solid][order[min(int(np.searchsorted(removed, target)), len(order) - 1)]])
    keep = np.clip(cut_at - depth + 0.5, 0.0, 1.0)
    rim = (np.abs(depth - cut_at) < max(1.5, max(h, w) / 60)) & (keep > 0) & solid
    fracture = np.asarray((182, 176, 166), np.float32) * (0.85 + 0.15 * rng.random((h, w, 1)).astype(np.float32))
    rgb = np.where(rim[..., None], rgb * 0.45 + fracture * 0.55, rgb)
    return rgb, alpha * keep

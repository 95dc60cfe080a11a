"""Render one part on a transparent layer at a known millimetre-to-pixel scale."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

from . import shapes_fasteners as sf
from . import shapes_misc as sm
from . import shapes_round as sr
from .canvas import Canvas
from .parts import Part

Extent = Callable[[Part], tuple[float, float]]
Draw = Callable[[Canvas, Part], dict[str, Any]]

SHAPES: dict[str, tuple[Extent, Draw]] = {
    "hex_nut": (sf.nut_extent, sf.draw_hex_nut),
    "flat_washer": (sf.washer_extent, sf.draw_flat_washer),
    "spring_washer": (sf.washer_extent, sf.draw_spring_washer),
    "hex_bolt": (sf.bolt_extent, sf.draw_hex_bolt),
    "cap_screw": (lambda p: (p.size_mm, p.params["head_d"]), sf.draw_cap_screw),
    "bearing": (sr.round_extent, sr.draw_bearing),
    "spur_gear": (sr.round_extent, sr.draw_spur_gear),
    "o_ring": (sr.round_extent, sr.draw_o_ring),
    "hose_clamp": (sr.clamp_extent, sr.draw_hose_clamp),
    "valve_wheel": (sr.round_extent, sr.draw_valve_wheel),
    "resistor": (sm.resistor_extent, sm.draw_resistor),
    "blade_fuse": (sm.fuse_extent, sm.draw_blade_fuse),
    "relay_auto": (sm.relay_extent, sm.draw_relay),
    "fitting_elb": (sm.elbow_extent, sm.draw_elbow),
    "fitting_tee": (sm.tee_extent, sm.draw_tee),
    "fitting_cpl": (sm.nipple_extent, sm.draw_nipple),
    "valve_lever": (sm.lever_extent, sm.draw_valve_lever),
    "valve_tee": (sm.tee_handle_extent, sm.draw_valve_tee),
}

CLEAN_LIGHT = (0.0, -0.6, 0.8)


@dataclass
class PartRender:
    """An RGBA layer of one part and where things are on it (output pixels)."""

    image: Image.Image
    px_per_mm: float
    size_px: float  # size_mm * px_per_mm: the characteristic dimension, before tilt
    centre: tuple[float, float]  # where the part's origin landed on the layer
    geometry: dict[str, Any] = field(default_factory=dict)


def part_extent_mm(part: Part) -> tuple[float, float]:
    """Width and height (mm) of the part's drawing box, unrotated."""
    return SHAPES[part.shape][0](part)


def _rotate_point(x: float, y: float, w: float, h: float, w2: float, h2: float, deg: float) -> tuple[float, float]:
    a = math.radians(deg)
    dx, dy = x - w / 2.0, y - h / 2.0
    return (math.cos(a) * dx + math.sin(a) * dy + w2 / 2.0, -math.sin(a) * dx + math.cos(a) * dy + h2 / 2.0)


def render_part(part: Part, rng: np.random.Generator, *, px_per_mm: float,
                light: tuple[float, float, float] = (-0.45, -0.6, 0.75), rotation_deg: float = 0.0,
                tilt: float = 1.0, tint: float = 1.0, clean: bool = False, ss: int | None = None) -> PartRender:
    """Draw ``part`` at ``px_per_mm`` (output pixels per millimetre) on a transparent layer.

    ``light`` is the direction towards the light in image coordinates (x right, y down, z up).
    ``rotation_deg`` turns the part counter-clockwise, ``tilt`` (0-1] foreshortens it vertically
    before the turn. ``clean=True`` ignores all of those for a fixed frontal light, no rotation
    and no tint, so tests can read the geometry (e.g. resistor band centres) exactly.
    """
    if part.shape not in SHAPES:
        raise KeyError(f"no renderer for shape {part.shape!r}")
    if px_per_mm <= 0:
        raise ValueError("px_per_mm must be positive")
    if clean:
        light, rotation_deg, tilt, tint = CLEAN_LIGHT, 0.0, 1.0, 1.0
    extent, draw = SHAPES[part.shape]
    w_mm, h_mm = extent(part)
    if ss is None:
        ss = 3 if max(w_mm, h_mm) * px_per_mm < 64 else 2
    a = math.radians(rotation_deg)
    lx, ly, lz = light
    part_light = (lx * math.cos(a) - ly * math.sin(a), lx * math.sin(a) + ly * math.cos(a), lz)
    canvas = Canvas(w_mm, h_mm, px_per_mm, ss, part_light, rng, tint=tint)
    geometry = draw(canvas, part) or {}
    img = canvas.to_image()
    w, h = img.size
    centre = (w / 2.0, h / 2.0)
    points: list[dict[str, Any]] = list(geometry.get("bands", []))
    if tilt != 1.0:
        h_t = max(2, int(round(h * tilt)))
        img = img.resize((w, h_t), Image.BICUBIC)
        sy = h_t / h
        centre = (centre[0], centre[1] * sy)
        for pt in points:
            pt["y"] *= sy
        h = h_t
    if rotation_deg:
        img = img.rotate(rotation_deg, resample=Image.BICUBIC, expand=True)
        w2, h2 = img.size
        centre = _rotate_point(centre[0], centre[1], w, h, w2, h2, rotation_deg)
        for pt in points:
            pt["x"], pt["y"] = _rotate_point(pt["x"], pt["y"], w, h, w2, h2, rotation_deg)
    return PartRender(img, px_per_mm, part.size_mm * px_per_mm, centre, geometry)

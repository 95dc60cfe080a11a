"""Electrical parts, pipe fittings, valve handles and resistors."""
from __future__ import annotations

from typing import Any

import numpy as np

from .canvas import Canvas, hexagon, rounded_rect, smooth_step
from .parts import Part
from .shapes_fasteners import COS30, threaded_shank

# Pigment colours of the resistor colour code (RGB). Tests decode rendered bands with these.
RESISTOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 22, 22), "brown": (112, 58, 24), "red": (204, 24, 24), "orange": (240, 122, 18),
    "yellow": (246, 214, 30), "green": (30, 150, 52), "blue": (30, 72, 204), "violet": (132, 50, 172),
    "grey": (130, 130, 130), "white": (242, 242, 242), "gold": (178, 138, 52), "silver": (188, 190, 194),
}
FUSE_RGB = {"tan": (196, 156, 110), "red": (206, 34, 34), "blue": (40, 86, 206), "yellow": (232, 196, 30)}
RESISTOR_BAND_POS = (0.22, 0.36, 0.50, 0.80)  # band centres as fractions of the body length


def resistor_extent(p: Part) -> tuple[float, float]:
    return p.size_mm * 2.8, p.size_mm * 0.42


def draw_resistor(c: Canvas, p: Part) -> dict[str, Any]:
    lb = p.size_mm
    X, Y = c.X, c.Y
    ax = np.abs(X)
    lead = (np.abs(Y) <= 0.3) & (ax <= lb * 1.4 - 0.1)
    c.paint(lead, c.cylinder_y("stainless", 0.0, 0.3, texture=c.noise(0.02)))
    r_mid, r_end = 0.175 * lb, 0.2 * lb
    r = r_mid + (r_end - r_mid) * smooth_step(ax, 0.26 * lb, 0.34 * lb)
    cap = 0.09 * lb
    end = np.clip((ax - (lb / 2.0 - cap)) / cap, 0.0, 1.0)
    r = r * np.sqrt(1.0 - end * end * 0.9)
    body = (ax <= lb / 2.0) & (np.abs(Y) <= r)
    base = tuple(float(v) for v in p.params.get("body_rgb", (214, 188, 146)))
    nx = np.sign(X) * np.where(ax > lb / 2.0 - cap, end * 0.8, 0.0)
    c.paint(body, c.cylinder_y("ceramic", 0.0, r, texture=c.noise(0.015), base=base, nx=nx))
    bands = []
    for name, f in zip(p.params["bands"], RESISTOR_BAND_POS):
        xc = -lb / 2.0 + f * lb
        band = body & (np.abs(X - xc) <= 0.045 * lb)
        c.paint(band, c.cylinder_y("ceramic", 0.0, r, base=RESISTOR_RGB[name], nx=nx))
        px, py = c.to_px(xc, 0.0)
        bands.append({"colour": name, "x": px, "y": py})
    return {"bands": bands, "band_width_px": 0.09 * lb * c.ppm}


def fuse_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.size_mm * 1.05


def draw_blade_fuse(c: Canvas, p: Part) -> dict[str, Any]:
    w = p.size_mm
    h = w * 1.05
    top, body_bottom = -h / 2.0, -h / 2.0 + 0.66 * h
    X, Y = c.X, c.Y
    colour = FUSE_RGB[p.params["colour"]]
    # blades (tin plated) below the body, and their continuation seen through the plastic
    for sx in (-1.0, 1.0):
        blade = (np.abs(X - sx * 0.28 * w) <= 0.14 * w) & (Y >= body_bottom - 0.5) & (Y <= h / 2.0 - 0.4)
        blade |= (np.abs(X - sx * 0.28 * w) <= 0.14 * w - 0.4) & (Y <= h / 2.0) & (Y > h / 2.0 - 0.5)
        c.paint(blade, c.cylinder_x("zinc", sx * 0.28 * w, 0.2 * w, texture=c.noise(0.03) + c.gradient(w, 0.1)))
    body = rounded_rect(X, Y, 0.0, (top + body_bottom) / 2.0, w, body_bottom - top, 0.06 * w)
    u = np.clip(X / (w / 2.0), -0.999, 0.999)
    c.paint(body, c.shade("paint_red", u * 0.5, -0.2, 0.85, texture=c.noise(0.02) + 0.05, base=colour))
    window = (np.abs(X) <= 0.42 * w) & (Y > top + 0.26 * h) & (Y < body_bottom - 0.04 * h)
    c.paint(window, c.shade("paint_red", u * 0.4, 0.0, 0.9, texture=0.2, base=colour))
    inner = window & (np.abs(np.abs(X) - 0.28 * w) <= 0.1 * w) & (Y > top + 0.36 * h)
    c.paint(inner, c.flat("zinc", base=tuple(0.55 * np.asarray(colour) + 0.45 * 190), texture=-0.1))
    elem_y = top + 0.36 * h
    element = (np.abs(X) <= 0.22 * w) & (np.abs(Y - elem_y - 0.6 * np.sin(X * 1.4)) <= 0.35)
    c.paint(element, c.flat("zinc", base=tuple(0.5 * np.asarray(colour) + 0.5 * 200), texture=0.05))
    grip = body & (Y < top + 0.22 * h)
    c.darken(grip, 0.82)
    for sx in (-1.0, 1.0):
        c.darken(np.hypot(X - sx * 0.36 * w, Y - (top + 0.11 * h)) < 0.05 * w, 0.35)
    amps = p.params["amps"]
    c.text((0.0, top + 0.115 * h), f"{amps:g}", 0.17 * h, tuple(0.55 * np.asarray(colour)), opacity=0.9)
    return {}


def relay_extent(p: Part) -> tuple[float, float]:
    return p.size_mm * 1.3, p.size_mm


def draw_relay(c: Canvas, p: Part) -> dict[str, Any]:
    s = p.size_mm
    cx = -0.15 * s
    X, Y = c.X, c.Y
    tab = rounded_rect(X, Y, s * 0.45, 0.0, s * 0.35, s * 0.36, 0.1 * s)
    c.paint(tab, c.flat("plastic_black", texture=-0.05 + c.noise(0.02)))
    c.erase(np.hypot(X - s * 0.52, Y) < 0.07 * s)
    body = rounded_rect(X, Y, cx, 0.0, s, s, 0.07 * s)
    bevel = 0.06 * s
    qx = np.clip((np.abs(X - cx) - (s / 2.0 - bevel)) / bevel, 0, 1) * np.sign(X - cx)
    qy = np.clip((np.abs(Y) - (s / 2.0 - bevel)) / bevel, 0, 1) * np.sign(Y)
    nx, ny = qx * 0.7, qy * 0.7
    nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0, 1))
    c.paint(body, c.shade("plastic_black", nx, ny, nz, texture=c.noise(0.025) + c.gradient(s, 0.15)))
    ink = (226, 226, 222)
    c.text((cx, -0.34 * s), p.manufacturer.upper(), 0.1 * s, ink)
    c.text((cx, -0.2 * s), f"{p.params['volts']}V {p.params['amps']}A", 0.09 * s, ink)
    # a pin diagram: coil box, switch, pin numbers
    line = 0.012 * s
    box = (np.abs(X - (cx - 0.2 * s)) <= 0.06 * s) & (np.abs(Y - 0.12 * s) <= 0.1 * s)
    inner_box = (np.abs(X - (cx - 0.2 * s)) <= 0.06 * s - line) & (np.abs(Y - 0.12 * s) <= 0.1 * s - line)
    c.paint(box & ~inner_box, ink)
    c.paint((np.abs(X - (cx - 0.2 * s)) <= line / 2) & (np.abs(Y - 0.12 * s) <= 0.24 * s) & ~inner_box, ink)
    c.paint((np.abs(X - (cx + 0.15 * s)) <= line / 2) & (Y > 0.16 * s) & (Y < 0.36 * s), ink)
    sw = np.abs((Y - 0.16 * s) + (X - (cx + 0.15 * s)) * 1.2) <= line * 0.8
    c.paint(sw & (X > cx + 0.15 * s) & (X < cx + 0.26 * s), ink)
    c.paint((np.abs(Y + 0.02 * s) <= line / 2) & (X > cx + 0.05 * s) & (X < cx + 0.3 * s), ink)
    for label, (lx, ly) in {"85": (-0.2, -0.05), "86": (-0.2, 0.41), "30": (0.15, 0.42),
                            "87": (0.36, -0.02), "87a": (0.02, -0.06)}.items():
        c.text((cx + lx * s, ly * s), label, 0.06 * s, ink)
    return {}


def _brass_arm(c: Canvas, horizontal: bool, centre: float, lo: float, hi: float, rad: float,
               band_at: float | None, band_len: float) -> None:
    X, Y = (c.X, c.Y) if horizontal else (c.Y, c.X)
    arm = (X >= lo) & (X <= hi) & (np.abs(Y - centre) <= rad)
    u = np.clip((Y - centre) / rad, -0.999, 0.999)
    nx, ny = (0.0, u) if horizontal else (u, 0.0)
    tex = c.noise(0.05) + c.gradient(rad * 4.0, 0.1)
    c.paint(arm, c.shade("brass", nx, ny, np.sqrt(1 - u * u), texture=tex))
    if band_at is not None:
        r2 = rad * 1.08
        band = (np.abs(X - band_at) <= band_len / 2.0) & (np.abs(Y - centre) <= r2)
        v = (Y - centre) / r2
        facet = np.clip(np.round(v * 2.0) / 2.0, -1, 1) * 0.8
        fx, fy = (0.0, facet) if horizontal else (facet, 0.0)
        c.paint(band, c.shade("brass", fx, fy, np.sqrt(1 - facet * facet), texture=tex + 0.05))


def elbow_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.size_mm


def draw_elbow(c: Canvas, p: Part) -> dict[str, Any]:
    s = p.size_mm
    d = p.params["pipe_od"] * 1.28
    rad = d / 2.0 / 1.08
    bx = by = -s / 2.0 + 2.0 * rad  # centre of the bend
    band = 0.26 * d
    _brass_arm(c, True, by - rad, bx, s / 2.0, rad, s / 2.0 - band / 2.0, band)
    _brass_arm(c, False, bx - rad, by, s / 2.0, rad, s / 2.0 - band / 2.0, band)
    Rr, T = c.polar(bx, by)
    bend = (Rr <= 2.0 * rad) & (c.X <= bx) & (c.Y <= by)
    c.paint(bend, c.torus("brass", bx, by, rad, rad, texture=c.noise(0.05)))
    return {}


def tee_extent(p: Part) -> tuple[float, float]:
    d = p.params["pipe_od"] * 1.28
    return p.size_mm, p.size_mm / 2.0 + d / 2.0


def draw_tee(c: Canvas, p: Part) -> dict[str, Any]:
    s = p.size_mm
    d = p.params["pipe_od"] * 1.28
    rad = d / 2.0 / 1.08
    ext_h = s / 2.0 + d / 2.0
    cy = -ext_h / 2.0 + d / 2.0
    band = 0.26 * d
    _brass_arm(c, False, 0.0, cy, ext_h / 2.0, rad, ext_h / 2.0 - band / 2.0, band)
    _brass_arm(c, True, cy, -s / 2.0, s / 2.0, rad, s / 2.0 - band / 2.0, band)
    _brass_arm(c, True, cy, -s / 2.0, -s / 2.0 + band, rad, -s / 2.0 + band / 2.0, band)
    return {}


def nipple_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.params["pipe_od"] * 1.3 / COS30


def draw_nipple(c: Canvas, p: Part) -> dict[str, Any]:
    s, od = p.size_mm, p.params["pipe_od"]
    threaded_shank(c, -s / 2.0, s / 2.0, od, 1.814, "brass", tip_left=True)
    e = od * 1.3 / COS30
    X, Y = c.X, c.Y
    hexw = 0.28 * s
    ay = np.abs(Y)
    head = (np.abs(X) <= hexw / 2.0) & (ay <= e / 2.0 - np.maximum(0, np.abs(X) - hexw / 2.0 + 0.6))
    side = ay > e / 4.0
    ny = np.where(side, np.sign(Y) * 0.866, 0.0)
    nz = np.where(side, 0.5, 1.0)
    c.paint(head, c.shade("brass", 0.0, ny, nz, texture=c.noise(0.04) + c.gradient(s, 0.1)))
    c.darken(head & (np.abs(ay - e / 4.0) < 0.15), 0.75)
    return {}


def lever_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.size_mm * 0.2


def draw_valve_lever(c: Canvas, p: Part) -> dict[str, Any]:
    length = p.size_mm
    X, Y = c.X, c.Y
    w = 0.11 * length
    hub_x = -length / 2.0 + 0.1 * length
    grip_x0 = -length / 2.0 + 0.34 * length
    bar = (X >= hub_x) & (X <= grip_x0 + 2) & (np.abs(Y) <= w * 0.42)
    c.paint(bar, c.cylinder_y("zinc", 0.0, w * 0.9, texture=c.noise(0.03) + c.gradient(length, 0.2)))
    grip = rounded_rect(X, Y, (grip_x0 + length / 2.0) / 2.0, 0.0, length / 2.0 - grip_x0, w, w * 0.48)
    u = np.clip(Y / (w / 2.0), -0.999, 0.999)
    c.paint(grip, c.shade("vinyl_red", 0.0, u * 0.8, np.sqrt(1 - 0.64 * u * u), texture=c.noise(0.03)))
    Rh, _ = c.polar(hub_x, 0.0)
    c.paint(Rh <= 0.1 * length, c.cone("zinc", hub_x, 0.0, 25, True, texture=c.noise(0.03)))
    nut = hexagon(X - hub_x, Y, 0.11 * length)
    c.paint(nut, c.cone("zinc", hub_x, 0.0, 30, True, texture=c.gradient(length, 0.2)))
    c.paint(nut & (Rh <= 0.052 * length), c.flat("zinc", texture=c.lathe_rings(hub_x, 0.0, 0.05)))
    c.darken(Rh <= 0.025 * length, 0.25)
    return {}


def tee_handle_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.size_mm * 0.38


def draw_valve_tee(c: Canvas, p: Part) -> dict[str, Any]:
    s = p.size_mm
    X, Y = c.X, c.Y
    half = s / 2.0
    w = np.interp(np.abs(X), [0, half * 0.8, half], [0.19 * s, 0.12 * s, 0.1 * s])
    tipr = 0.11 * s
    tip = np.clip((np.abs(X) - (half - tipr)) / tipr, 0, 1)
    wings = (np.abs(X) <= half) & (np.abs(Y) <= w * np.sqrt(1 - tip * tip * 0.95))
    u = np.clip(Y / w, -0.999, 0.999)
    c.paint(wings, c.shade("paint_blue", np.sign(X) * tip * 0.6, u * 0.55, 0.8,
                           texture=c.noise(0.03) + c.gradient(s, 0.2)))
    Rh, _ = c.polar(0.0, 0.0)
    c.paint(Rh <= 0.17 * s, c.cone("paint_blue", 0, 0, 25, True))
    nut = hexagon(X, Y, 0.18 * s)
    c.paint(nut, c.cone("zinc", 0, 0, 30, True))
    c.paint(nut & (Rh <= 0.085 * s), c.flat("zinc", texture=c.lathe_rings(amount=0.05)))
    c.darken(Rh <= 0.04 * s, 0.25)
    return {}

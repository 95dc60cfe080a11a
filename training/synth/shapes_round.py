"""Round parts seen from above: bearings, gears, O-rings, hose clamps, handwheels."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .canvas import Canvas, hexagon, rounded_rect
from .parts import Part


def round_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.size_mm


def draw_bearing(c: Canvas, p: Part) -> dict[str, Any]:
    ro, ri = p.size_mm / 2.0, p.params["inner_d"] / 2.0
    radial = ro - ri
    r_out_in = ro - 0.27 * radial  # inner edge of the outer ring
    r_in_out = ri + 0.27 * radial  # outer edge of the inner ring
    rp = (ro + ri) / 2.0
    R, T = c.R, c.T
    rings = c.lathe_rings(amount=0.05) + c.gradient(ro, 0.2) + c.noise(0.015)
    c.paint(R <= ro, c.cone("steel", 0, 0, 50, True))
    c.paint(R <= ro - 0.03 * radial, c.flat("steel", texture=rings))
    c.paint(R <= r_out_in + 0.03 * radial, c.cone("steel", 0, 0, 45, outward=False))
    gap = R <= r_out_in
    if p.params["shielded"]:
        c.paint(gap, c.flat("zinc", texture=c.lathe_rings(amount=0.03) + c.gradient(ro, 0.25) - 0.12))
        groove = np.abs(R - (r_out_in - 0.12 * radial)) < 0.04 * radial
        c.darken(groove, 0.6)
        c.darken(np.abs(R - (r_in_out + 0.06 * radial)) < 0.03 * radial, 0.65)
        c.text((0.0, -rp), p.params["label"], 0.18 * radial, (40, 40, 44), opacity=0.8)
    else:
        c.paint(gap, c.flat("steel", texture=-0.55 + c.noise(0.03)))  # dark grease-filled raceway
        n_balls = max(7, int(round(math.pi * 2 * rp / (0.62 * radial * 1.25))))
        rb = 0.31 * radial
        # cage: a pressed ring with pockets around the balls
        cage = (np.abs(R - rp) < 0.36 * radial) & gap
        c.paint(cage, c.torus("steel", 0, 0, rp, 0.4 * radial, base=(150, 140, 120), texture=-0.1))
        # every pixel looks at its nearest ball (vectorised: no loop over balls)
        a0 = 0.3
        k = np.round((T - a0) * n_balls / (2 * math.pi))
        ak = a0 + k * (2 * math.pi / n_balls)
        bx, by = rp * np.cos(ak), rp * np.sin(ak)
        d2 = (c.X - bx) ** 2 + (c.Y - by) ** 2
        c.paint((d2 <= (rb * 1.12) ** 2) & gap, c.flat("steel", texture=-0.6))
        c.paint((d2 <= rb * rb) & gap, c.sphere("stainless", bx, by, rb))
    c.paint(R <= r_in_out, c.cone("steel", 0, 0, 45, True))
    c.paint(R <= r_in_out - 0.03 * radial, c.flat("steel", texture=rings))
    c.paint(R <= ri + 0.04 * radial, c.cone("steel", 0, 0, 40, outward=False))
    c.text((0.0, ro - 0.135 * radial), f"{p.manufacturer.upper()} {p.params['label']}", 0.1 * radial,
           (70, 70, 76), opacity=0.7)
    c.erase(R < ri)
    return {}


def draw_spur_gear(c: Canvas, p: Part) -> dict[str, Any]:
    n, m = p.params["teeth"], p.params["module"]
    ra = m * (n + 2) / 2.0
    rf = m * (n - 2.5) / 2.0
    rp = m * n / 2.0
    R, T = c.R, c.T
    frac = (T / (2 * math.pi)) * n
    phi = frac - np.floor(frac) - 0.5
    half = np.interp(R, [rf, rp, ra], [0.29, 0.25, 0.17])
    teeth = (R <= ra) & ((R <= rf) | (np.abs(phi) <= half))
    material = "brass" if p.params["material"] == "brass" else "steel"
    flank = np.sign(phi) * np.clip((R - rf) / (ra - rf), 0, 1) * 0.6
    c.paint(teeth, c.shade(material, flank * np.cos(T + math.pi / 2), flank * np.sin(T + math.pi / 2),
                           np.sqrt(1.0 - flank * flank), texture=c.noise(0.03) + c.gradient(ra, 0.15)))
    # tooth tips are chamfered and catch the light
    c.paint(teeth & (R > ra - 0.25 * m), c.cone(material, 0, 0, 40, True))
    rim_in, hub = 0.78 * rf, 0.36 * rf
    web = R <= rim_in
    c.paint(web, c.cone(material, 0, 0, 35, outward=False, texture=-0.05))
    c.paint(R <= rim_in - 0.05 * rf, c.flat(material, texture=c.lathe_rings(amount=0.06) + c.gradient(ra, 0.3) - 0.1))
    c.paint(R <= hub + 0.05 * rf, c.cone(material, 0, 0, 40, True))
    c.paint(R <= hub, c.flat(material, texture=c.lathe_rings(amount=0.05) + 0.05))
    bore = 0.14 * ra
    key = (np.abs(c.X) < 0.3 * bore) & (c.Y < 0) & (c.Y > -bore * 1.3)
    c.erase((R < bore) | key)
    return {}


def draw_o_ring(c: Canvas, p: Part) -> dict[str, Any]:
    ri, cs = p.params["inner_d"] / 2.0, p.params["cross_section"]
    rc = ri + cs / 2.0
    R = c.R
    material = "rubber" if p.params["material"] == "nbr" else "rubber_brown"
    ring = np.abs(R - rc) <= cs / 2.0
    c.paint(ring, c.torus(material, 0, 0, rc, cs / 2.0, texture=c.noise(0.04)))
    return {}


def clamp_extent(p: Part) -> tuple[float, float]:
    a = p.size_mm / 2.0
    band = p.params["band"]
    return p.size_mm + 0.5 * band, 2 * a * 0.55 + band * 0.85 + band * 1.1


def draw_hose_clamp(c: Canvas, p: Part) -> dict[str, Any]:
    """A worm-drive clamp lying tilted: an elliptical band with slots and the screw housing."""
    a = p.size_mm / 2.0
    b = a * 0.55
    h = p.params["band"] * 0.85
    X, Y = c.X, c.Y - 0.3 * h
    xs = np.clip(X / a, -0.999, 0.999)
    S = np.sqrt(1.0 - xs * xs)
    inside = np.abs(X) <= a
    back = inside & (np.abs(Y + b * S) <= h / 2.0)
    front = inside & (np.abs(Y - b * S) <= h / 2.0)
    v_back = (Y + b * S) / (h / 2.0)
    c.paint(back, c.shade("stainless", -xs * 0.6, -0.3 + 0.1 * v_back, 0.75, texture=-0.25 + c.noise(0.03)))
    u = np.arcsin(xs)  # position along the band
    v = (Y - b * S) / (h / 2.0)
    slots = front & (np.abs(v) < 0.32) & (np.mod(u * a / 1.6, 1.0) < 0.45) & (xs > -0.55) & (xs < 0.75)
    c.paint(front, c.shade("stainless", xs * 0.7, 0.25 + 0.05 * v, np.sqrt(np.clip(1 - 0.49 * xs * xs, 0, 1)),
                           texture=c.noise(0.03) + 0.06 * np.cos(v * 3.0)))
    c.darken(slots, 0.35)
    # the housing and worm screw sit on the front of the band, left of centre
    hx, hy = -0.45 * a, b * math.sqrt(1 - 0.45 ** 2) + 0.3 * h
    hw, hh = 0.5 * h * 2.2, h * 1.15
    housing = rounded_rect(c.X, c.Y, hx, hy, hw, hh, 0.15 * h)
    c.paint(housing, c.shade("stainless", 0.0, 0.0, 1.0, texture=c.gradient(a, 0.2) + 0.05 + c.noise(0.02)))
    c.darken(housing & (np.abs(c.Y - hy) > hh * 0.38), 0.8)
    sx = hx + hw / 2.0 + 0.3 * h
    sd = 0.75 * h
    head = hexagon(c.X - sx, c.Y - hy, sd, 30.0) | ((np.abs(c.Y - hy) < sd / 2.0) & (c.X > sx - sd * 0.55) & (c.X < sx))
    c.paint(head, c.cylinder_y("zinc", hy, sd / 2.0, texture=c.noise(0.03)))
    c.darken(head & (np.abs(c.Y - hy) < 0.06 * sd) & (c.X > sx - 0.2 * sd), 0.3)  # screwdriver slot
    return {}


def draw_valve_wheel(c: Canvas, p: Part) -> dict[str, Any]:
    ro = p.size_mm / 2.0
    R, T = c.R, c.T
    rim_w = 0.14 * ro
    rc = ro - rim_w / 2.0
    n = int(p.params["spokes"])
    tex = c.noise(0.05) + c.gradient(ro, 0.15)
    for i in range(n):
        a = math.pi / 4 + 2 * math.pi * i / n
        ca, sa = math.cos(a), math.sin(a)
        along = c.X * ca + c.Y * sa
        across = -c.X * sa + c.Y * ca
        w = 0.07 * ro * (1.25 - 0.35 * np.clip(along / ro, 0, 1))
        spoke = (along > 0) & (along < rc) & (np.abs(across) < w)
        uu = np.clip(across / w, -0.999, 0.999)
        c.paint(spoke, c.shade("paint_red", -uu * sa, uu * ca, np.sqrt(1 - uu * uu), texture=tex))
    c.paint(np.abs(R - rc) <= rim_w / 2.0, c.torus("paint_red", 0, 0, rc, rim_w / 2.0, texture=tex))
    hub = 0.22 * ro
    c.paint(R <= hub, c.torus("paint_red", 0, 0, hub * 0.55, hub * 0.45, texture=tex))
    c.paint(R <= hub * 0.55, c.flat("paint_red", texture=tex - 0.05))
    sq = 0.1 * ro
    c.erase((np.abs(c.X) < sq) & (np.abs(c.Y) < sq))
    return {}

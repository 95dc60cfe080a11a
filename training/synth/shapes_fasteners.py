"""Nuts, washers, bolts and screws."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .canvas import Canvas, hexagon, smooth_step
from .parts import Part

COS30 = math.cos(math.radians(30.0))


def nut_extent(p: Part) -> tuple[float, float]:
    e = p.size_mm / COS30
    return e, e


def draw_hex_nut(c: Canvas, p: Part) -> dict[str, Any]:
    s, d, pitch = p.size_mm, p.params["thread_d"], p.params["pitch"]
    R, T = c.R, c.T
    hexm = hexagon(c.X, c.Y, s)
    c.paint(hexm, c.cone("zinc", 0, 0, 30, True, texture=c.noise(0.03) + c.gradient(s, 0.1)))
    top = hexm & (R <= 0.5 * s * 0.97)
    c.paint(top, c.flat("zinc", texture=c.lathe_rings(amount=0.05) + c.gradient(s, 0.25) + c.noise(0.02)))
    c.paint(R <= 0.62 * d, c.cone("zinc", 0, 0, 45, outward=False, texture=c.lathe_rings(amount=0.04)))
    spiral = np.sin(2 * np.pi * (T / (2 * np.pi) + (R - 0.43 * d) / (0.035 * d)))
    c.paint(R <= 0.52 * d, c.cone("steel", 0, 0, 70, outward=False, texture=-0.25 + 0.12 * spiral))
    c.erase(R < 0.44 * d)
    return {}


def washer_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.size_mm


def draw_flat_washer(c: Canvas, p: Part) -> dict[str, Any]:
    ro, ri = p.size_mm / 2.0, p.params["inner_d"] / 2.0
    bevel = 0.035 * p.size_mm
    R = c.R
    c.paint(R <= ro, c.cone("zinc", 0, 0, 40, True))
    c.paint(R <= ro - bevel, c.flat("zinc", texture=c.lathe_rings(amount=0.06) + c.gradient(ro, 0.25)
                                    + c.noise(0.02)))
    c.paint(R <= ri + bevel, c.cone("zinc", 0, 0, 40, outward=False))
    c.erase(R < ri)
    return {}


def draw_spring_washer(c: Canvas, p: Part) -> dict[str, Any]:
    ro, ri = p.size_mm / 2.0, p.params["inner_d"] / 2.0
    rm, hw = (ro + ri) / 2.0, (ro - ri) / 2.0
    R, T = c.R, c.T
    u = (R - rm) / hw
    nr = np.clip((np.abs(u) - 0.45) / 0.55, 0.0, 1.0) * 0.75 * np.sign(u)
    tilt = 0.14  # the split ring is a flat helix: its top face leans along the tangent
    nx = nr * np.cos(T) - tilt * np.sin(T)
    ny = nr * np.sin(T) + tilt * np.cos(T)
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    ring = (R <= ro) & (R >= ri)
    c.paint(ring, c.shade("black_oxide", nx, ny, nz, texture=c.noise(0.04) + c.lathe_rings(amount=0.04)))
    gap = (c.X > 0) & (np.abs(c.Y - (c.X - rm) * 0.45) < 0.05 * ro + 0.35)
    near = (c.X > 0) & (np.abs(c.Y - (c.X - rm) * 0.45 - 0.09 * ro) < 0.09 * ro) & ring
    c.darken(near, 0.55)  # the lower end of the split sits in the shadow of the raised end
    c.erase(R < ri)
    c.erase(gap)
    return {}


def threaded_shank(c: Canvas, x0: float, x1: float, d: float, pitch: float, material: str,
                   tint: tuple[float, float, float] | None = None, tip_left: bool = False) -> None:
    """A threaded rod along x from x0 to x1 (seen from the side)."""
    r = d / 2.0
    depth = 0.55 * pitch * 0.6
    phase = ((c.X - x0) + c.Y / r * (pitch / 4.0)) / pitch
    fr = phase - np.floor(phase)
    tri = np.abs(2.0 * fr - 1.0)  # 1 on a crest, 0 in a root
    redge = r - depth * (1.0 - tri)
    tip = np.maximum(0.0, c.X - (x1 - 0.12 * d)) * 1.2
    if tip_left:
        tip = tip + np.maximum(0.0, (x0 + 0.12 * d) - c.X) * 1.2
    mask = (c.X >= x0) & (c.X <= x1) & (np.abs(c.Y) <= redge - tip)
    flank = np.where(fr < 0.5, 1.0, -1.0) * 0.55 * (1.0 - smooth_step(tri, 0.75, 1.0))
    col = c.cylinder_y(material, 0.0, r, nx=flank, texture=0.1 * tri - 0.08 + c.noise(0.02), base=tint)
    c.paint(mask, col)


def bolt_extent(p: Part) -> tuple[float, float]:
    return p.size_mm, p.params["head_s"] / COS30


def draw_hex_bolt(c: Canvas, p: Part) -> dict[str, Any]:
    total, k, s, d = p.size_mm, p.params["head_k"], p.params["head_s"], p.params["thread_d"]
    e = s / COS30
    x0 = -total / 2.0
    xh = x0 + k
    X, Y = c.X, c.Y
    threaded_shank(c, xh - 0.2, total / 2.0, d, p.params["pitch"], "zinc")
    chamfer = np.maximum(0.0, (x0 + 0.14 * k) - X) * 1.6
    head = (X >= x0) & (X <= xh) & (np.abs(Y) <= e / 2.0 - chamfer)
    ay = np.abs(Y)
    side = ay > e / 4.0
    ny = np.where(side, np.sign(Y) * 0.866, 0.0)
    nz = np.where(side, 0.5, 1.0)
    nx = np.where(X < x0 + 0.14 * k, -0.5, 0.0)
    tex = c.noise(0.03) + 0.05 * np.sin(X * 9.0)
    c.paint(head, c.shade("zinc", nx, ny, nz, texture=tex))
    edge = head & (np.abs(ay - e / 4.0) < 0.12)
    c.darken(edge, 0.75)
    # the bearing face (a thin washer face under the head)
    c.paint((X >= xh - 0.06 * k) & (X <= xh + 0.04 * k) & (ay <= 0.46 * s),
            c.cylinder_y("zinc", 0.0, 0.46 * s, texture=-0.1))
    return {}


def draw_cap_screw(c: Canvas, p: Part) -> dict[str, Any]:
    total, k, dk, d = p.size_mm, p.params["head_k"], p.params["head_d"], p.params["thread_d"]
    x0 = -total / 2.0
    xh = x0 + k
    X, Y = c.X, c.Y
    threaded_shank(c, xh - 0.2, total / 2.0, d, p.params["pitch"], "black_oxide")
    rk = dk / 2.0
    corner = np.maximum(0.0, (x0 + 0.12 * k) - X)
    head = (X >= x0) & (X <= xh) & (np.abs(Y) <= rk - corner * 1.2)
    u = np.clip(Y / rk, -0.999, 0.999)
    knurl = (X > x0 + 0.2 * k) & (X < xh - 0.1 * k)
    tex = np.where(knurl, 0.12 * np.cos(36.0 * np.arcsin(u)), 0.0) + c.noise(0.03)
    nx = np.where(X < x0 + 0.12 * k, -0.55, 0.0)
    c.paint(head, c.cylinder_y("black_oxide", 0.0, rk, texture=tex, nx=nx))
    return {}

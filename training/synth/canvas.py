"""A supersampled RGBA drawing surface in millimetre coordinates, with simple lighting.

Shapes are described by vectorised inequalities on the pixel-centre coordinate grids
``X, Y`` (mm, origin at the canvas centre, y down). Surfaces are shaded from a normal
field with a Blinn-Phong model under one directional light; the supersampled result is
box-reduced to the output resolution, which antialiases every edge.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[float, float, float]

MATERIALS: dict[str, dict[str, float | Colour]] = {
    # base colour (0-255), ambient, diffuse, specular, shininess, env (reflection of a bright sky)
    "zinc": {"base": (188, 192, 200), "amb": 0.35, "diff": 0.55, "spec": 0.55, "shine": 24.0, "env": 0.22},
    "steel": {"base": (165, 166, 168), "amb": 0.35, "diff": 0.55, "spec": 0.6, "shine": 30.0, "env": 0.25},
    "stainless": {"base": (196, 198, 200), "amb": 0.35, "diff": 0.5, "spec": 0.7, "shine": 40.0, "env": 0.3},
    "black_oxide": {"base": (52, 52, 56), "amb": 0.45, "diff": 0.55, "spec": 0.45, "shine": 20.0, "env": 0.15},
    "brass": {"base": (196, 156, 78), "amb": 0.35, "diff": 0.6, "spec": 0.55, "shine": 22.0, "env": 0.18},
    "rubber": {"base": (34, 34, 36), "amb": 0.6, "diff": 0.5, "spec": 0.22, "shine": 9.0, "env": 0.0},
    "rubber_brown": {"base": (92, 52, 34), "amb": 0.55, "diff": 0.5, "spec": 0.2, "shine": 9.0, "env": 0.0},
    "plastic_black": {"base": (38, 38, 41), "amb": 0.55, "diff": 0.5, "spec": 0.25, "shine": 14.0, "env": 0.0},
    "paint_red": {"base": (178, 32, 28), "amb": 0.45, "diff": 0.6, "spec": 0.35, "shine": 18.0, "env": 0.0},
    "paint_blue": {"base": (40, 82, 170), "amb": 0.45, "diff": 0.6, "spec": 0.35, "shine": 18.0, "env": 0.0},
    "vinyl_red": {"base": (200, 30, 30), "amb": 0.45, "diff": 0.6, "spec": 0.3, "shine": 12.0, "env": 0.0},
    "ceramic": {"base": (214, 186, 142), "amb": 0.5, "diff": 0.55, "spec": 0.12, "shine": 60.0, "env": 0.0},
}


@lru_cache(maxsize=16)
def font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size_px``."""
    return ImageFont.load_default(size=max(4, int(size_px)))


class Canvas:
    """RGBA float canvas of ``w_mm x h_mm`` at ``px_per_mm`` (output) times ``ss`` (supersampling)."""

    def __init__(self, w_mm: float, h_mm: float, px_per_mm: float, ss: int,
                 light: tuple[float, float, float], rng: np.random.Generator, *, tint: float = 1.0) -> None:
        self.ppm = float(px_per_mm)
        self.ss = int(ss)
        self.w = max(4, int(math.ceil(w_mm * px_per_mm)) + 4)
        self.h = max(4, int(math.ceil(h_mm * px_per_mm)) + 4)
        ws, hs = self.w * ss, self.h * ss
        self.mm_per_spx = 1.0 / (px_per_mm * ss)
        xs = ((np.arange(ws, dtype=np.float32) + 0.5) - ws / 2.0) * self.mm_per_spx
        ys = ((np.arange(hs, dtype=np.float32) + 0.5) - hs / 2.0) * self.mm_per_spx
        self.X = np.broadcast_to(xs[None, :], (hs, ws))
        self.Y = np.broadcast_to(ys[:, None], (hs, ws))
        self.rgb = np.zeros((hs, ws, 3), np.float32)
        self.alpha = np.zeros((hs, ws), np.float32)
        lx, ly, lz = light
        n = math.sqrt(lx * lx + ly * ly + lz * lz)
        self.L = (lx / n, ly / n, lz / n)
        hx, hy, hz = self.L[0], self.L[1], self.L[2] + 1.0
        hn = math.sqrt(hx * hx + hy * hy + hz * hz)
        self.H = (hx / hn, hy / hn, hz / hn)
        self.rng = rng
        self.tint = tint
        self._R: np.ndarray | None = None
        self._T: np.ndarray | None = None

    # -- coordinates -------------------------------------------------------------------
    @property
    def R(self) -> np.ndarray:
        if self._R is None:
            self._R = np.hypot(self.X, self.Y)
        return self._R

    @property
    def T(self) -> np.ndarray:
        if self._T is None:
            self._T = np.arctan2(self.Y, self.X)
        return self._T

    def polar(self, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
        if cx == 0.0 and cy == 0.0:
            return self.R, self.T
        dx, dy = self.X - cx, self.Y - cy
        return np.hypot(dx, dy), np.arctan2(dy, dx)

    def to_px(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """Output-pixel position of a point given in mm."""
        return x_mm * self.ppm + self.w / 2.0, y_mm * self.ppm + self.h / 2.0

    # -- shading -----------------------------------------------------------------------
    def shade(self, material: str, nx: np.ndarray | float, ny: np.ndarray | float, nz: np.ndarray | float,
              texture: np.ndarray | float = 0.0, base: Colour | None = None) -> np.ndarray:
        """Blinn-Phong colour (H, W, 3) of ``material`` for a normal field; ``texture`` adds brightness."""
        m = MATERIALS[material]
        col = np.asarray(base if base is not None else m["base"], np.float32) * self.tint
        lx, ly, lz = self.L
        hx, hy, hz = self.H
        ndl = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
        ndh = np.maximum(nx * hx + ny * hy + nz * hz, 0.0)
        lum = m["amb"] + m["diff"] * ndl + texture
        spec = np.power(ndh, m["shine"])
        spec *= m["spec"] * 255.0
        out = np.asarray(lum, np.float32)[..., None] * col + np.asarray(spec, np.float32)[..., None]
        env = float(m["env"])
        if env:
            # a bright sky overhead, darker horizon: tilted faces reflect less light
            sky = (0.55 + 0.45 * np.asarray(nz, np.float32) - 0.25 * np.asarray(ny, np.float32)) * 255.0 * env
            out = out * (1.0 - env) + np.asarray(sky, np.float32)[..., None]
        return out

    def flat(self, material: str, texture: np.ndarray | float = 0.0, base: Colour | None = None) -> np.ndarray:
        return self.shade(material, 0.0, 0.0, 1.0, texture, base)

    def cone(self, material: str, cx: float, cy: float, tilt_deg: float, outward: bool = True,
             texture: np.ndarray | float = 0.0, base: Colour | None = None) -> np.ndarray:
        """A conical (chamfer) surface around (cx, cy), tilted ``tilt_deg`` from flat."""
        R, _ = self.polar(cx, cy)
        s, c = math.sin(math.radians(tilt_deg)), math.cos(math.radians(tilt_deg))
        sign = 1.0 if outward else -1.0
        inv = sign * s / np.maximum(R, 1e-6)
        return self.shade(material, (self.X - cx) * inv, (self.Y - cy) * inv, c, texture, base)

    def cylinder_y(self, material: str, cy: float, r: float | np.ndarray, texture: np.ndarray | float = 0.0,
                   base: Colour | None = None, nx: np.ndarray | float = 0.0) -> np.ndarray:
        """A cylinder lying along x (axis at y=cy, radius r) seen from above."""
        u = np.clip((self.Y - cy) / r, -0.999, 0.999)
        return self.shade(material, nx, u, np.sqrt(1.0 - u * u), texture, base)

    def cylinder_x(self, material: str, cx: float, r: float | np.ndarray, texture: np.ndarray | float = 0.0,
                   base: Colour | None = None, ny: np.ndarray | float = 0.0) -> np.ndarray:
        u = np.clip((self.X - cx) / r, -0.999, 0.999)
        return self.shade(material, u, ny, np.sqrt(1.0 - u * u), texture, base)

    def torus(self, material: str, cx: float, cy: float, r_centre: float, r_tube: float,
              texture: np.ndarray | float = 0.0, base: Colour | None = None) -> np.ndarray:
        R, T = self.polar(cx, cy)
        u = np.clip((R - r_centre) / r_tube, -0.999, 0.999)
        return self.shade(material, u * np.cos(T), u * np.sin(T), np.sqrt(1.0 - u * u), texture, base)

    def sphere(self, material: str, cx: float, cy: float, r: float, base: Colour | None = None) -> np.ndarray:
        ux = np.clip((self.X - cx) / r, -1, 1)
        uy = np.clip((self.Y - cy) / r, -1, 1)
        nz = np.sqrt(np.clip(1.0 - ux * ux - uy * uy, 0.0, 1.0))
        return self.shade(material, ux, uy, nz, 0.0, base)

    # -- textures ----------------------------------------------------------------------
    def noise(self, scale: float = 1.0) -> np.ndarray:
        """Fine per-pixel noise (std ``scale``)."""
        return self.rng.standard_normal(self.X.shape, dtype=np.float32) * scale

    def gradient(self, scale_mm: float, amount: float = 0.12) -> np.ndarray:
        """Brightness ramp towards the light (soft reflections make flat faces uneven)."""
        lx, ly, _ = self.L
        return (self.X * lx + self.Y * ly) * (amount / max(scale_mm, 1e-6))

    def lathe_rings(self, cx: float = 0.0, cy: float = 0.0, amount: float = 0.06, pitch_mm: float = 0.25) -> np.ndarray:
        """Concentric turning marks (a random brightness per ring)."""
        R, _ = self.polar(cx, cy)
        table = self.rng.standard_normal(4096).astype(np.float32) * amount
        return table[(R / pitch_mm).astype(np.int32) % 4096]

    # -- painting ----------------------------------------------------------------------
    def paint(self, mask: np.ndarray, colour: np.ndarray | Colour) -> None:
        """Cover ``mask`` (bool or 0..1) with ``colour`` ((H,W,3) or RGB)."""
        m = mask.astype(np.float32) if mask.dtype == bool else mask
        col = np.asarray(colour, np.float32)
        self.rgb += (col - self.rgb) * m[..., None]
        np.maximum(self.alpha, m, out=self.alpha)

    def darken(self, mask: np.ndarray, factor: float | np.ndarray) -> None:
        """Multiply the colour under ``mask`` by ``factor``."""
        m = mask.astype(np.float32) if mask.dtype == bool else mask
        f = 1.0 - m * (1.0 - np.asarray(factor, np.float32))
        self.rgb *= f[..., None]

    def erase(self, mask: np.ndarray) -> None:
        """Cut a hole (transparent) where ``mask`` is set."""
        m = mask.astype(np.float32) if mask.dtype == bool else mask
        self.alpha *= 1.0 - m

    def text(self, xy_mm: tuple[float, float], text: str, height_mm: float, colour: Colour,
             anchor: str = "mm", angle: float = 0.0, opacity: float = 1.0) -> None:
        """Print ``text`` centred at ``xy_mm`` on what is already drawn (does not extend alpha)."""
        hs, ws = self.alpha.shape
        size = max(4, int(round(height_mm * self.ppm * self.ss)))
        layer = Image.new("L", (ws, hs), 0)
        x = xy_mm[0] / self.mm_per_spx + ws / 2.0
        y = xy_mm[1] / self.mm_per_spx + hs / 2.0
        if angle:
            tmp = Image.new("L", (ws, hs), 0)
            ImageDraw.Draw(tmp).text((ws / 2.0, hs / 2.0), text, fill=255, font=font(size), anchor="mm")
            tmp = tmp.rotate(angle, resample=Image.BILINEAR, center=(ws / 2.0, hs / 2.0))
            layer.paste(tmp, (int(round(x - ws / 2.0)), int(round(y - hs / 2.0))))
        else:
            ImageDraw.Draw(layer).text((x, y), text, fill=255, font=font(size), anchor=anchor)
        m = np.asarray(layer, np.float32) * (opacity / 255.0) * (self.alpha > 0.5)
        self.rgb += (np.asarray(colour, np.float32) - self.rgb) * m[..., None]

    def to_image(self) -> Image.Image:
        """Box-reduce to output resolution and return an RGBA image."""
        a = self.alpha[..., None]
        rgba = np.concatenate([np.clip(self.rgb, 0, 255) * a, a * 255.0], axis=2)
        img = Image.fromarray((rgba + 0.5).astype(np.uint8), "RGBA")  # premultiplied
        if self.ss > 1:
            img = img.reduce(self.ss)
        arr = np.asarray(img, np.float32)
        alpha = arr[..., 3:4]
        rgb = np.where(alpha > 0, arr[..., :3] * 255.0 / np.maximum(alpha, 1.0), 0.0)  # un-premultiply
        return Image.fromarray(np.concatenate([np.clip(rgb + 0.5, 0, 255), alpha], axis=2).astype(np.uint8), "RGBA")


def smooth_step(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def hexagon(X: np.ndarray, Y: np.ndarray, across_flats: float, rot_deg: float = 0.0) -> np.ndarray:
    """Mask of a regular hexagon centred at the origin (flats perpendicular to x at rot 0)."""
    half = across_flats / 2.0
    m = np.ones(X.shape, bool)
    for k in range(3):
        a = math.radians(rot_deg + 60.0 * k)
        m &= np.abs(X * math.cos(a) + Y * math.sin(a)) <= half
    return m


def rounded_rect(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, w: float, h: float, r: float) -> np.ndarray:
    qx = np.abs(X - cx) - (w / 2.0 - r)
    qy = np.abs(Y - cy) - (h / 2.0 - r)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return (outside + np.minimum(np.maximum(qx, qy), 0.0)) <= r

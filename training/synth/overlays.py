"""Things drawn around the part: scale references, hands, clutter, shadows, light."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .canvas import font

RULER_STYLES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # body colour, ink colour
    "steel": ((196, 198, 202), (30, 30, 32)),
    "yellow": (((236, 206, 70)), (25, 25, 25)),
    "white": ((240, 240, 236), (20, 20, 20)),
    "wood": ((206, 170, 112), (40, 28, 20)),
}
SKIN_TONES = ((236, 192, 162), (224, 172, 140), (198, 140, 104), (160, 106, 72), (112, 72, 48))
MAT_COLOURS = ((34, 96, 72), (40, 60, 96), (36, 38, 40))


@dataclass
class Ruler:
    image: Image.Image  # RGBA strip, ticks along the top edge
    px_per_mm: float
    first_tick_x: float  # x (px) of the first drawn mm tick
    mm_tick_len: float  # px


def draw_ruler(length_px: int, width_px: int, px_per_mm: float, style: str = "steel", offset_mm: float = 0.0,
               ss: int = 3, rng: np.random.Generator | None = None) -> Ruler:
    """A ruler strip with mm ticks (5 and 10 mm longer, cm numbers) at exactly ``px_per_mm``."""
    body, ink = RULER_STYLES[style]
    W, H = length_px * ss, width_px * ss
    arr = np.empty((H, W, 3), np.float32)
    arr[:] = body
    if rng is not None:
        streak = rng.standard_normal((H, 1)).astype(np.float32) * (6.0 if style == "steel" else 2.0)
        arr += streak[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    d = ImageDraw.Draw(img)
    ppm = px_per_mm * ss
    lens = [min(3.0 * ppm, 0.22 * H), min(5.0 * ppm, 0.34 * H), min(7.0 * ppm, 0.46 * H)]
    lw = max(1, int(round(min(0.15 * ppm, 0.45 * ppm))))
    first = math.ceil(offset_mm)
    x0 = (first - offset_mm) * ppm + 0.5 * ss
    fnt = font(int(min(3.2 * ppm, 0.24 * H)))
    mm = first
    x = x0
    while x < W:
        ln = lens[2] if mm % 10 == 0 else lens[1] if mm % 5 == 0 else lens[0]
        xa = int(round(x - lw / 2.0))
        d.rectangle([xa, 0, xa + lw - 1, ln], fill=ink + (255,))
        if mm % 10 == 0 and ppm * 10 > fnt.size * 1.2:
            d.text((x, lens[2] + 0.04 * H), str(mm // 10), fill=ink + (255,), font=fnt, anchor="mt")
        mm += 1
        x = x0 + (mm - first) * ppm
    d.line([(0, H - 1), (W, H - 1)], fill=(0, 0, 0, 90), width=ss)
    small = img.reduce(ss) if ss > 1 else img
    return Ruler(small, px_per_mm, x0 / ss, lens[0] / ss)


def mat_grid(size: int, px_per_mm: float, angle_deg: float, offset: tuple[float, float],
             colour: tuple[int, int, int]) -> np.ndarray:
    """A self-healing cutting mat: 10 mm grid (5 cm lines bolder) at ``px_per_mm``, antialiased."""
    a = math.radians(angle_deg)
    X = np.arange(size, dtype=np.float32)[None, :]
    Y = np.arange(size, dtype=np.float32)[:, None]
    u = X * math.cos(a) + Y * math.sin(a) + offset[0]
    v = -X * math.sin(a) + Y * math.cos(a) + offset[1]
    out = np.empty((size, size, 3), np.float32)
    out[:] = colour
    line_col = np.asarray((200, 214, 206), np.float32)
    period = 10.0 * px_per_mm
    for coord in (u, v):
        dist = np.abs((coord % period) - period / 2.0)
        dist = period / 2.0 - dist  # distance to the nearest line
        major = ((np.floor(coord / period + 0.5)) % 5) == 0
        lw = np.where(major, max(1.2, 0.5 * px_per_mm), max(0.6, 0.2 * px_per_mm))
        cover = np.clip(lw / 2.0 - dist + 0.5, 0.0, 1.0) * 0.8
        out += (line_col - out) * cover[..., None]
    return out


def capsule(img: np.ndarray, a: tuple[float, float], b: tuple[float, float], r: float,
            colour: tuple[int, int, int], light: tuple[float, float, float], nail: bool = False,
            paint: bool = True) -> np.ndarray:
    """Paint a shaded finger-like capsule from ``a`` to ``b`` (radius ``r``) on ``img``; return its coverage.

    With ``paint=False`` only the coverage is computed (to check occlusion before drawing).
    """
    h, w = img.shape[:2]
    x0 = int(max(0, math.floor(min(a[0], b[0]) - r - 1)))
    x1 = int(min(w, math.ceil(max(a[0], b[0]) + r + 2)))
    y0 = int(max(0, math.floor(min(a[1], b[1]) - r - 1)))
    y1 = int(min(h, math.ceil(max(a[1], b[1]) + r + 2)))
    cover_full = np.zeros((h, w), np.float32)
    if x0 >= x1 or y0 >= y1:
        return cover_full
    X = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    Y = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    dx, dy = b[0] - a[0], b[1] - a[1]
    L2 = max(dx * dx + dy * dy, 1e-6)
    t = np.clip(((X - a[0]) * dx + (Y - a[1]) * dy) / L2, 0.0, 1.0)
    px, py = X - (a[0] + t * dx), Y - (a[1] + t * dy)
    dist = np.sqrt(px * px + py * py)
    cover = np.clip(r - dist + 0.5, 0.0, 1.0)
    if not paint:
        cover_full[y0:y1, x0:x1] = cover
        return cover_full
    u = np.clip(dist / r, 0, 0.999)
    nx, ny = px / np.maximum(dist, 1e-3) * u, py / np.maximum(dist, 1e-3) * u
    nz = np.sqrt(1.0 - u * u)
    lx, ly, lz = light
    ndl = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
    col = np.asarray(colour, np.float32)
    shade = (0.5 + 0.55 * ndl)[..., None] * col + (18.0 * ndl ** 8)[..., None]
    if nail:
        tip = (t > 1.0 - min(0.5, 1.3 * r / math.sqrt(L2)))
        nail_m = tip & (dist < 0.55 * r) & (((X - b[0]) * dx + (Y - b[1]) * dy) / math.sqrt(L2) < 0.4 * r)
        shade = np.where(nail_m[..., None], shade * 0.6 + np.asarray((250, 215, 205), np.float32) * 0.4, shade)
    region = img[y0:y1, x0:x1]
    region += (shade - region) * cover[..., None]
    cover_full[y0:y1, x0:x1] = cover
    return cover_full


def drop_shadow(img: np.ndarray, alpha: np.ndarray, dx: float, dy: float, blur: float, strength: float) -> None:
    """Darken ``img`` under a blurred, offset copy of ``alpha`` (in place)."""
    a = Image.fromarray(np.clip(alpha * 255.0, 0, 255).astype(np.uint8), "L")
    a = a.transform(a.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), resample=Image.BILINEAR)
    if blur > 0.3:
        a = a.filter(ImageFilter.GaussianBlur(blur))
    s = np.asarray(a, np.float32) * (strength / 255.0)
    img *= (1.0 - s)[..., None]


def clutter(img: np.ndarray, rng: np.random.Generator, n: int, avoid: tuple[float, float, float]) -> None:
    """Cables, paper scraps, stains, tape and cable ties around (mostly not on) the point ``avoid``."""
    h, w = img.shape[:2]
    ss = 2
    layer = Image.new("RGBA", (w * ss, h * ss), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    ax, ay, ar = avoid

    def spot() -> tuple[float, float]:
        for _ in range(8):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            if math.hypot(x - ax, y - ay) > ar:
                return x, y
        return x, y

    for _ in range(n):
        kind = rng.choice(["cable", "paper", "stain", "tape", "tie", "shavings"], p=[0.25, 0.2, 0.2, 0.12, 0.13, 0.1])
        x, y = spot()
        if kind == "cable":
            col = tuple(int(v) for v in rng.choice([(20, 20, 22), (170, 30, 28), (30, 60, 150), (230, 200, 40),
                                                      (220, 220, 215)]))
            pts = [(x * ss, y * ss)]
            ang = rng.uniform(0, 2 * math.pi)
            for _ in range(6):
                ang += rng.uniform(-0.6, 0.6)
                x += math.cos(ang) * w * 0.12
                y += math.sin(ang) * h * 0.12
                pts.append((x * ss, y * ss))
            width = int(rng.uniform(0.015, 0.035) * w * ss)
            d.line(pts, fill=col + (255,), width=width, joint="curve")
            hi = tuple(min(255, v + 70) for v in col)
            d.line([(px - width * 0.2, py - width * 0.2) for px, py in pts], fill=hi + (120,),
                   width=max(1, width // 5), joint="curve")
        elif kind == "paper":
            s = rng.uniform(0.15, 0.35) * w * ss
            ang = rng.uniform(0, math.pi)
            corners = [(x * ss + s * math.cos(ang + k * math.pi / 2 + rng.uniform(-0.1, 0.1)),
                        y * ss + s * 0.7 * math.sin(ang + k * math.pi / 2)) for k in range(4)]
            tone = int(rng.uniform(215, 245))
            d.polygon(corners, fill=(tone, tone, int(tone * 0.97), 255))
            for k in range(int(rng.integers(2, 6))):
                yy = y * ss + (k - 2) * s * 0.15
                d.line([(x * ss - s * 0.4, yy), (x * ss + s * 0.3, yy)], fill=(90, 90, 110, 140), width=ss)
        elif kind == "stain":
            r = rng.uniform(0.04, 0.12) * w * ss
            d.ellipse([x * ss - r, y * ss - r * 0.7, x * ss + r, y * ss + r * 0.7], fill=(30, 22, 12, int(rng.uniform(40, 90))))
        elif kind == "tape":
            s = rng.uniform(0.1, 0.25) * w * ss
            col = tuple(int(v) for v in rng.choice([(230, 200, 40), (200, 200, 195), (40, 90, 170)]))
            ang = rng.uniform(0, math.pi)
            c, s_ = math.cos(ang), math.sin(ang)
            hw = 0.18 * s
            pts = [(x * ss + c * s - s_ * hw, y * ss + s_ * s + c * hw), (x * ss + c * s + s_ * hw, y * ss + s_ * s - c * hw),
                   (x * ss - c * s + s_ * hw, y * ss - s_ * s - c * hw), (x * ss - c * s - s_ * hw, y * ss - s_ * s + c * hw)]
            d.polygon(pts, fill=col + (170,))
        elif kind == "tie":
            ang = rng.uniform(0, 2 * math.pi)
            ln = rng.uniform(0.15, 0.3) * w * ss
            col = (25, 25, 25) if rng.random() < 0.6 else (235, 235, 225)
            d.line([(x * ss, y * ss), (x * ss + math.cos(ang) * ln, y * ss + math.sin(ang) * ln)],
                   fill=col + (255,), width=max(2, int(0.012 * w * ss)))
        else:
            for _ in range(int(rng.integers(4, 10))):
                ang = rng.uniform(0, 2 * math.pi)
                ln = rng.uniform(0.01, 0.04) * w * ss
                ox, oy = x * ss + rng.normal(0, 0.03 * w * ss), y * ss + rng.normal(0, 0.03 * w * ss)
                g = int(rng.uniform(120, 200))
                d.line([(ox, oy), (ox + math.cos(ang) * ln, oy + math.sin(ang) * ln)], fill=(g, g, g, 220), width=ss)
    small = np.asarray(layer.reduce(ss), np.float32)
    a = small[..., 3:4] / 255.0
    shadow = np.asarray(Image.fromarray(small[..., 3].astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(2)),
                        np.float32)[..., None] / 255.0
    img *= 1.0 - 0.25 * shadow
    img += (small[..., :3] - img) * a


def light_field(size: int, azimuth: float, strength: float, vignette: float) -> np.ndarray:
    """Multiplicative illumination: a ramp brighter towards the light, darker corners."""
    X = (np.arange(size, dtype=np.float32)[None, :] + 0.5) / size - 0.5
    Y = (np.arange(size, dtype=np.float32)[:, None] + 0.5) / size - 0.5
    ramp = X * math.cos(azimuth) + Y * math.sin(azimuth)
    return 1.0 + strength * ramp - vignette * (X * X + Y * Y) * 2.0


def perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """Coefficients for ``Image.transform(..., Image.PERSPECTIVE)`` mapping output ``dst`` to input ``src``."""
    A, B = [], []
    for (x, y), (u, v) in zip(dst, src):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        B += [u, v]
    return list(np.linalg.solve(np.asarray(A, np.float64), np.asarray(B, np.float64)))

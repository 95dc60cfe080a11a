"""Backgrounds: a catalogue (studio) pool and three field pools that share no texture.

Catalogue shots draw from ``CATALOGUE_BACKGROUNDS`` (plain light studio sweeps), field
shots from a field pool (benches, steel plate, concrete, container paint...):
``FIELD_BACKGROUNDS`` for training photos, ``CALIBRATION_BACKGROUNDS`` and ``QUERY_BACKGROUNDS`` for
held-out photos (the same kinds of surface, other textures: another bench, another deck). A field shot
is a crop of one texture, so two shots on one texture share much of their background: the demo's
query photos use the query pool, so a query background is never one seen in training (nor in the
catalogue, whose families differ). Each spec renders a deterministic texture (cached per process).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

CATALOGUE_FAMILIES = ("studio_white", "studio_grey", "studio_sweep", "studio_tint")
FIELD_FAMILIES = ("wood", "brushed_steel", "diamond_plate", "concrete", "container_paint", "rubber_mat",
                  "cardboard")
CATALOGUE_SEED_BASE = 10_000
FIELD_SEED_BASE = 50_000
CALIBRATION_SEED_BASE = 60_000
QUERY_SEED_BASE = 70_000


@dataclass(frozen=True)
class BackgroundSpec:
    pool: str  # "catalogue" | "field" | "calibration" | "query"
    family: str
    colour: tuple[int, int, int]
    seed: int


def _build_pool(pool: str, families: tuple[str, ...], per_family: int, seed_base: int) -> tuple[BackgroundSpec, ...]:
    rng = np.random.default_rng(seed_base)
    specs = []
    for fi, fam in enumerate(families):
        for j in range(per_family):
            specs.append(BackgroundSpec(pool, fam, _family_colour(fam, rng), seed_base + fi * 100 + j))
    return tuple(specs)


def _family_colour(family: str, rng: np.random.Generator) -> tuple[int, int, int]:
    def jitter(c: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)  # type: ignore[return-value]

    table = {
        "studio_white": ((246, 246, 246), 4), "studio_grey": ((222, 223, 225), 8),
        "studio_sweep": ((236, 236, 238), 6), "studio_tint": ((228, 234, 242), 6),
        "brushed_steel": ((150, 152, 156), 18), "diamond_plate": ((140, 142, 146), 18),
        "concrete": ((128, 126, 120), 22), "rubber_mat": ((52, 54, 56), 8), "cardboard": ((176, 140, 96), 12),
    }
    if family == "wood":
        return jitter(((150, 104, 62), (118, 78, 44), (178, 138, 92))[int(rng.integers(3))], 12)
    if family == "container_paint":
        return jitter(((36, 84, 132), (140, 42, 34), (46, 96, 64), (196, 98, 32), (70, 96, 104))[int(rng.integers(5))], 10)
    if family == "studio_tint" and rng.random() < 0.5:
        return jitter((242, 238, 228), 5)
    base, amount = table[family]
    return jitter(base, amount)


CATALOGUE_BACKGROUNDS: tuple[BackgroundSpec, ...] = _build_pool("catalogue", CATALOGUE_FAMILIES, 6, CATALOGUE_SEED_BASE)
FIELD_BACKGROUNDS: tuple[BackgroundSpec, ...] = _build_pool("field", FIELD_FAMILIES, 10, FIELD_SEED_BASE)
CALIBRATION_BACKGROUNDS: tuple[BackgroundSpec, ...] = _build_pool("calibration", FIELD_FAMILIES, 4,
                                                                  CALIBRATION_SEED_BASE)
QUERY_BACKGROUNDS: tuple[BackgroundSpec, ...] = _build_pool("query", FIELD_FAMILIES, 4, QUERY_SEED_BASE)
#: the field pools by name (``partlens generate --backgrounds``)
FIELD_POOLS: dict[str, tuple[BackgroundSpec, ...]] = {"field": FIELD_BACKGROUNDS,
                                                      "calibration": CALIBRATION_BACKGROUNDS,
                                                      "query": QUERY_BACKGROUNDS}


def fbm(h: int, w: int, rng: np.random.Generator, octaves: int = 4, base: int = 3,
        stretch: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Smooth fractal noise (about unit std) by summing upsampled random grids."""
    acc = np.zeros((h, w), np.float32)
    total = 0.0
    for o in range(octaves):
        cells = base * 2 ** o
        gh = max(2, int(cells * stretch[0]))
        gw = max(2, int(cells * stretch[1]))
        small = rng.standard_normal((gh, gw)).astype(np.float32)
        up = np.asarray(Image.fromarray(small, "F").resize((w, h), Image.BICUBIC), np.float32)
        amp = 0.55 ** o
        acc += up * amp
        total += amp * amp
    return acc / np.sqrt(total)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w)),
            np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)))


def _texture(spec: BackgroundSpec, n: int) -> np.ndarray:
    """(n, n, 3) float32 texture for ``spec``; ``n`` is in output pixels."""
    rng = np.random.default_rng(spec.seed)
    col = np.asarray(spec.colour, np.float32)
    X, Y = _grid(n, n)
    f = spec.family
    if f.startswith("studio"):
        ang = rng.uniform(0, 2 * np.pi)
        ramp = ((X - n / 2) * np.cos(ang) + (Y - n / 2) * np.sin(ang)) / n
        r2 = ((X - n / 2) ** 2 + (Y - n / 2) ** 2) / (n * n / 2)
        lum = 1.0 + 0.03 * ramp - 0.05 * r2 + 0.006 * fbm(n, n, rng, 2)
        if f == "studio_sweep":
            lum = lum + 0.06 * (Y / n - 0.5)
        return col * lum[..., None]
    if f == "wood":
        period = rng.uniform(0.012, 0.03) * n
        warp = fbm(n, n, rng, 3, 2, (4.0, 0.5)) * period * 2.5
        grain = np.sin(2 * np.pi * (Y + warp) / period)
        lum = 0.9 + 0.07 * grain + 0.06 * fbm(n, n, rng, 4, 3, (6.0, 1.0))
        plank = rng.uniform(0.3, 0.5) * n
        seam = np.abs(((Y + rng.uniform(0, plank)) % plank) - plank / 2) > plank / 2 - 1.2
        lum = np.where(seam, lum * 0.55, lum)
        out = col * lum[..., None]
        return out.transpose(1, 0, 2) if rng.random() < 0.5 else out
    if f == "brushed_steel":
        streaks = fbm(n, n, rng, 4, 3, (16.0, 0.3))
        lum = 0.92 + 0.05 * streaks + 0.05 * fbm(n, n, rng, 2, 2) + 0.02 * rng.standard_normal((n, n)).astype(np.float32)
        return col * lum[..., None]
    if f == "diamond_plate":
        p = rng.uniform(0.07, 0.11) * n
        cx, cy = X % p - p / 2, Y % p - p / 2
        flip = ((X // p + Y // p) % 2) * 2 - 1
        u = (cx + flip * cy) / np.sqrt(2)
        v = (cx - flip * cy) / np.sqrt(2)
        bar = (np.abs(u) < 0.32 * p) & (np.abs(v) < 0.07 * p)
        lum = 0.9 + 0.05 * fbm(n, n, rng, 3) + np.where(bar, 0.12 * np.sign(v + 0.02 * p), 0.0)
        return col * lum[..., None]
    if f == "concrete":
        lum = 0.92 + 0.09 * fbm(n, n, rng, 5, 3) + 0.05 * rng.standard_normal((n, n)).astype(np.float32)
        pits = rng.random((n, n)) < 0.004
        lum = np.where(pits, lum * 0.6, lum)
        return col * lum[..., None]
    if f == "container_paint":
        lum = 0.9 + 0.06 * fbm(n, n, rng, 4)
        ribs = 0.05 * np.sin(2 * np.pi * X / rng.uniform(0.15, 0.3) / n)
        out = col * (lum + ribs)[..., None]
        rust = np.clip((fbm(n, n, rng, 4, 4) - 1.4) * 2.0, 0, 1)[..., None]
        out = out * (1 - rust) + np.asarray((120, 60, 30), np.float32) * rust
        scratches = np.clip(fbm(n, n, rng, 3, 6, (0.2, 8.0)) - 2.0, 0, 1)[..., None]
        return out * (1 - scratches) + 200.0 * scratches
    if f == "rubber_mat":
        lum = 0.95 + 0.15 * (np.sin(2 * np.pi * Y / rng.uniform(0.02, 0.04) / n) > 0.6) + 0.04 * fbm(n, n, rng, 3)
        return col * lum[..., None]
    if f == "cardboard":
        lum = 0.93 + 0.05 * fbm(n, n, rng, 4, 3, (0.5, 6.0)) + 0.03 * np.sin(2 * np.pi * X / (0.02 * n))
        return col * lum[..., None]
    raise KeyError(f"unknown background family {f!r}")


@lru_cache(maxsize=96)
def background_texture(spec: BackgroundSpec, n: int) -> np.ndarray:
    """The cached texture of ``spec`` at ``n x n`` pixels (uint8, read-only)."""
    tex = np.clip(_texture(spec, n) + 0.5, 0, 255).astype(np.uint8)
    tex.setflags(write=False)
    return tex


def background(spec: BackgroundSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size`` float32 RGB crop of the spec's texture (random offset, flips, 90° turns)."""
    n = int(size * 1.25)
    tex = background_texture(spec, n)
    ox, oy = int(rng.integers(0, n - size + 1)), int(rng.integers(0, n - size + 1))
    out = tex[oy:oy + size, ox:ox + size]
    out = np.rot90(out, int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out.astype(np.float32)

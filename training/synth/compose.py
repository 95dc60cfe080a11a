"""One shot: plan every random choice first (``plan_shot``), then draw it (``render_shot``).

Scale rule: in a shot with a scale reference (ruler or cutting mat) the part is drawn at
``size_mm * px_per_mm`` and the reference at the same ``px_per_mm``; ``px_per_mm`` is drawn
from a range set by the part's look-alike group (the same for every member), so only the
reference tells an M8 nut from an M10 one. Without a reference the part's pixel size is
random, independent of ``size_mm``.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from . import overlays as ov
from .parts import PARTS, Part
from .render import part_extent_mm, render_part
from .scene import CATALOGUE_BACKGROUNDS, FIELD_POOLS, BackgroundSpec, background
from .wear import apply_wear

KINDS = ("catalogue", "field")
SCALE_REFS = ("none", "ruler", "mat")
MAX_OCCLUSION = 0.4  # a thumb hides at most this fraction of the part


def group_extent_mm(part: Part) -> float:
    """Largest drawing extent (mm) over the part's look-alike group (the part itself if none)."""
    return _group_extent(part.look_alike_group) if part.look_alike_group else max(part_extent_mm(part))


@lru_cache(maxsize=None)
def _group_extent(group: str) -> float:
    return max(max(part_extent_mm(p)) for p in PARTS if p.look_alike_group == group)


@dataclass
class ShotPlan:
    """Every random decision of one shot; ``render_shot`` is a pure function of it."""

    kind: str
    size: int
    background: BackgroundSpec
    scale_ref: str
    in_hand: bool
    px_per_mm: float
    rotation_deg: float
    tilt: float
    tint: float
    light_azimuth: float  # radians, image frame; the light comes from this direction
    light_elevation: float
    centre: tuple[float, float]  # part centre, fraction of the frame
    ruler_style: str = "steel"
    ruler_angle: float = 0.0
    ruler_offset_mm: float = 0.0
    ruler_at_top: bool = False
    mat_colour: tuple[int, int, int] = (34, 96, 72)
    mat_angle: float = 0.0
    n_clutter: int = 0
    shadow_strength: float = 0.3
    shadow_blur: float = 2.0
    skin: tuple[int, int, int] = (224, 172, 140)
    hand_angle: float = 0.0  # direction the hand comes from (radians)
    light_strength: float = 0.1
    vignette: float = 0.05
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0
    motion_blur: bool = False
    noise: float = 0.0
    jpeg_quality: int = 92
    skew: tuple[float, ...] | None = None  # 8 corner offsets, fraction of the frame
    texture_seed: int = 0
    wear: tuple[str, ...] = ()  # ``wear.WEARS`` painted on the part, from ``wear_seed`` (the rest unchanged)
    wear_seed: int = 0


@dataclass
class Shot:
    image: Image.Image  # RGB, size x size (before JPEG)
    plan: ShotPlan
    part_mask: np.ndarray  # (size, size) coverage of the part before skew/blur
    info: dict[str, Any] = field(default_factory=dict)


def plan_shot(part: Part, kind: str, rng: np.random.Generator, size: int, index: int = 0,
              backgrounds: str = "field") -> ShotPlan:
    """Draw the random choices of one ``kind`` shot of ``part`` (``index`` alternates catalogue rulers); a field
    shot's background comes from the field pool ``backgrounds`` (``field``, ``calibration`` or ``query``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if backgrounds not in FIELD_POOLS:
        raise ValueError(f"backgrounds must be one of {', '.join(FIELD_POOLS)}, not {backgrounds!r}")
    ext = max(part_extent_mm(part))
    az = rng.uniform(0, 2 * math.pi)
    if kind == "catalogue":
        scale_ref = "ruler" if index % 2 == 1 else "none"
        bg = CATALOGUE_BACKGROUNDS[int(rng.integers(len(CATALOGUE_BACKGROUNDS)))]
        frac = rng.uniform(0.5, 0.62) if scale_ref != "none" else rng.uniform(0.55, 0.78)
        ref = group_extent_mm(part) if scale_ref != "none" else ext
        centre = (0.5 + rng.uniform(-0.02, 0.02), (0.42 if scale_ref == "ruler" else 0.5) + rng.uniform(-0.02, 0.02))
        return ShotPlan(
            kind=kind, size=size, background=bg, scale_ref=scale_ref, in_hand=False,
            px_per_mm=frac * size / ref, rotation_deg=float(rng.choice([0.0, 0.0, 90.0, -30.0, 15.0])),
            tilt=1.0, tint=rng.uniform(0.97, 1.03), light_azimuth=-math.pi / 2 + rng.uniform(-0.6, 0.6),
            light_elevation=rng.uniform(1.0, 1.3), centre=centre, ruler_style=str(rng.choice(["steel", "white"])),
            ruler_offset_mm=float(rng.integers(0, 20)), shadow_strength=rng.uniform(0.12, 0.25),
            shadow_blur=rng.uniform(3, 6) * size / 256, light_strength=rng.uniform(0.0, 0.06),
            vignette=rng.uniform(0.0, 0.05), noise=rng.uniform(0.0, 1.0), jpeg_quality=int(rng.integers(90, 96)),
            texture_seed=int(rng.integers(2 ** 63)))
    r = rng.random()
    scale_ref = "none" if r < 0.5 else "ruler" if r < 0.75 else "mat"
    in_hand = bool(rng.random() < 0.3)
    pool = FIELD_POOLS[backgrounds]
    bg = pool[int(rng.integers(len(pool)))]
    if scale_ref == "none":
        ppm = rng.uniform(0.3, 0.75) * size / ext
    else:
        ppm = rng.uniform(0.35, 0.6) * size / group_extent_mm(part)
    ruler_at_top = bool(rng.random() < 0.4)
    cy_lo, cy_hi = (0.3, 0.7) if scale_ref != "ruler" else ((0.55, 0.62) if ruler_at_top else (0.38, 0.45))
    cast = np.exp(rng.normal(0, 0.06, 3))
    skew = tuple(float(v) for v in rng.uniform(0.0, 0.06, 8)) if rng.random() < 0.5 else None
    return ShotPlan(
        kind=kind, size=size, background=bg, scale_ref=scale_ref, in_hand=in_hand, px_per_mm=ppm,
        rotation_deg=rng.uniform(-180, 180), tilt=rng.uniform(0.88 if scale_ref != "none" else 0.75, 1.0),
        tint=rng.uniform(0.88, 1.08), light_azimuth=az, light_elevation=rng.uniform(0.6, 1.25),
        centre=(rng.uniform(0.32, 0.68), rng.uniform(cy_lo, cy_hi)), ruler_style=str(rng.choice(list(ov.RULER_STYLES))),
        ruler_angle=rng.uniform(-6, 6), ruler_offset_mm=float(rng.uniform(0, 30)), ruler_at_top=ruler_at_top,
        mat_colour=ov.MAT_COLOURS[int(rng.integers(len(ov.MAT_COLOURS)))], mat_angle=rng.uniform(-20, 20),
        n_clutter=int(rng.integers(1, 6)), shadow_strength=rng.uniform(0.3, 0.6),
        shadow_blur=rng.uniform(1.0, 4.0) * size / 256, skin=ov.SKIN_TONES[int(rng.integers(len(ov.SKIN_TONES)))],
        hand_angle=rng.uniform(0, 2 * math.pi), light_strength=rng.uniform(0.1, 0.5), vignette=rng.uniform(0.05, 0.3),
        colour_cast=(float(cast[0]), float(cast[1]), float(cast[2])), blur=float(rng.choice([0, 0, 0.5, 0.9, 1.4])),
        motion_blur=bool(rng.random() < 0.12), noise=rng.uniform(1.0, 6.0), jpeg_quality=int(rng.integers(45, 93)),
        skew=skew, texture_seed=int(rng.integers(2 ** 63)))


def _light_vector(plan: ShotPlan) -> tuple[float, float, float]:
    ce = math.cos(plan.light_elevation)
    return (math.cos(plan.light_azimuth) * ce, math.sin(plan.light_azimuth) * ce, math.sin(plan.light_elevation))


def _place(img: np.ndarray, layer: Image.Image, x: int, y: int) -> np.ndarray:
    """Alpha-composite an RGBA layer with its top-left at (x, y); return the coverage mask."""
    h, w = img.shape[:2]
    arr = np.asarray(layer, np.float32)
    lh, lw = arr.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + lw), min(h, y + lh)
    mask = np.zeros((h, w), np.float32)
    if x0 >= x1 or y0 >= y1:
        return mask
    sub = arr[y0 - y:y1 - y, x0 - x:x1 - x]
    a = sub[..., 3] / 255.0
    img[y0:y1, x0:x1] += (sub[..., :3] - img[y0:y1, x0:x1]) * a[..., None]
    mask[y0:y1, x0:x1] = a
    return mask


def render_shot(part: Part, plan: ShotPlan) -> Shot:
    """Draw the shot described by ``plan``."""
    rng = np.random.default_rng(plan.texture_seed)
    S = plan.size
    light = _light_vector(plan)
    info: dict[str, Any] = {"px_per_mm": plan.px_per_mm, "scale_ref": plan.scale_ref, "in_hand": plan.in_hand}
    if plan.scale_ref == "mat":
        img = ov.mat_grid(S, plan.px_per_mm, plan.mat_angle, (rng.uniform(0, 100), rng.uniform(0, 100)),
                          plan.mat_colour)
        img += rng.standard_normal(img.shape[:2]).astype(np.float32)[..., None] * 2.0
    else:
        img = background(plan.background, S, rng)
    pr = render_part(part, rng, px_per_mm=plan.px_per_mm, light=light, rotation_deg=plan.rotation_deg,
                     tilt=plan.tilt, tint=plan.tint)
    if plan.wear:  # from its own generator: the shot is its clean twin plus the wear
        worn, wear_info = apply_wear(pr.image, plan.wear, np.random.default_rng(plan.wear_seed))
        pr = replace(pr, image=worn)
        info.update(wear_info)
    lw, lh = pr.image.size
    cx, cy = plan.centre[0] * S, plan.centre[1] * S
    x, y = int(round(cx - pr.centre[0])), int(round(cy - pr.centre[1]))
    if plan.n_clutter:
        ov.clutter(img, rng, plan.n_clutter, (cx, cy, 0.5 * max(lw, lh)))
    if plan.scale_ref == "ruler":
        width = int(np.clip(25.0 * plan.px_per_mm, 0.12 * S, 0.2 * S))
        ruler = ov.draw_ruler(int(S * 1.3), width, plan.px_per_mm, plan.ruler_style, plan.ruler_offset_mm, rng=rng)
        strip = ruler.image
        if plan.ruler_at_top:
            strip = strip.rotate(180)
        if plan.ruler_angle:
            strip = strip.rotate(plan.ruler_angle, resample=Image.BICUBIC, expand=True)
        gap = max(2, int(0.02 * S))
        if plan.ruler_at_top:
            ry = min(y - gap, int(0.2 * S)) - strip.size[1]
        else:
            ry = max(y + lh + gap, int(0.8 * S))
        rx = int((S - strip.size[0]) / 2)
        rmask = _place_with_shadow(img, strip, rx, ry, light, plan)
        info["ruler_coverage"] = float(rmask.mean())
    if plan.in_hand:
        finger_r = float(np.clip(9.0 * plan.px_per_mm, 0.05 * S, 0.1 * S))
        ha = plan.hand_angle
        far = (cx + math.cos(ha) * S * 0.9, cy + math.sin(ha) * S * 0.9)
        for k, spread in enumerate((-0.25, 0.0)):
            tip = (cx + math.cos(ha + math.pi + spread) * 0.25 * max(lw, lh),
                   cy + math.sin(ha + math.pi + spread) * 0.25 * max(lw, lh))
            ov.capsule(img, far, tip, finger_r * (0.95 - 0.05 * k), plan.skin, light)
    a = np.asarray(pr.image.getchannel("A"), np.float32) / 255.0
    mask_layer = np.zeros((S, S), np.float32)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(S, x + lw), min(S, y + lh)
    if x0 < x1 and y0 < y1:
        mask_layer[y0:y1, x0:x1] = a[y0 - y:y1 - y, x0 - x:x1 - x]
    sh_len = (1.0 / math.tan(plan.light_elevation)) * (0.03 * S + 0.05 * max(lw, lh))
    ov.drop_shadow(img, mask_layer, -math.cos(plan.light_azimuth) * sh_len, -math.sin(plan.light_azimuth) * sh_len,
                   plan.shadow_blur, plan.shadow_strength)
    mask = _place(img, pr.image, x, y)
    if plan.in_hand:
        # the thumb presses on the part from the hand's side, hiding part of it
        # (pulled back until it hides at most MAX_OCCLUSION of the part)
        ha = plan.hand_angle + 0.35
        far = (cx + math.cos(ha) * S, cy + math.sin(ha) * S)
        r = float(np.clip(10.0 * plan.px_per_mm, 0.055 * S, 0.11 * S))
        part_area = max(float(mask.sum()), 1e-6)
        for reach in (0.22, 0.4, 0.6, 0.8, 1.0, 1.3):
            d = reach * max(lw, lh)
            tip = (cx + math.cos(ha) * d, cy + math.sin(ha) * d)
            cover = ov.capsule(img, far, tip, r, plan.skin, light, paint=False)
            if float((mask * cover).sum()) / part_area <= MAX_OCCLUSION:
                break
        cover_hand = ov.capsule(img, far, tip, r, plan.skin, light, nail=True)
        info["occluded_fraction"] = float((mask * cover_hand).sum() / max(mask.sum(), 1e-6))
    info["part_bbox"] = _bbox(mask)
    info["size_px"] = pr.size_px
    img *= ov.light_field(S, plan.light_azimuth, plan.light_strength, plan.vignette)[..., None]
    img *= np.asarray(plan.colour_cast, np.float32)
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")
    if plan.skew is not None:
        j = [v * S for v in plan.skew]
        src = [(j[0], j[1]), (S - j[2], j[3]), (S - j[4], S - j[5]), (j[6], S - j[7])]
        dst = [(0, 0), (S, 0), (S, S), (0, S)]
        out = out.transform((S, S), Image.PERSPECTIVE, ov.perspective_coeffs(src, dst), Image.BICUBIC)
    if plan.motion_blur:
        k = np.zeros((5, 5), np.float32)
        k[2, :] = 1.0 if rng.random() < 0.5 else 0.0
        if k.sum() == 0:
            k[:, 2] = 1.0
        out = out.filter(ImageFilter.Kernel((5, 5), k.ravel().tolist(), scale=float(k.sum())))
    if plan.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(plan.blur * S / 256))
    if plan.noise > 0:
        arr = np.asarray(out, np.float32)
        arr += rng.standard_normal(arr.shape[:2], dtype=np.float32)[..., None] * plan.noise
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * (plan.noise * 0.5)
        out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return Shot(out, plan, mask, info)


def _place_with_shadow(img: np.ndarray, layer: Image.Image, x: int, y: int, light: tuple[float, float, float],
                       plan: ShotPlan) -> np.ndarray:
    S = img.shape[0]
    a = np.zeros((S, S), np.float32)
    arr = np.asarray(layer.getchannel("A"), np.float32) / 255.0
    lh, lw = arr.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(S, x + lw), min(S, y + lh)
    if x0 < x1 and y0 < y1:
        a[y0:y1, x0:x1] = arr[y0 - y:y1 - y, x0 - x:x1 - x]
    d = 0.01 * S
    ov.drop_shadow(img, a, -light[0] * d, -light[1] * d, plan.shadow_blur * 0.6, plan.shadow_strength * 0.7)
    return _place(img, layer, x, y)


def _bbox(mask: np.ndarray, thr: float = 0.5) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask > thr)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality), optimize=False)
    return buf.getvalue()

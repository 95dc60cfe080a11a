"""The synthetic spare-parts generator: labels match pixels, scale cues, pools, layout, determinism, errors."""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edge_app.cli import main as cli_main
from edge_app.errors import UsageError
from edge_app.imageio import load_image
from training.synth import PARTS, generate, render_part, resistor_bands
from training.synth.compose import plan_shot, render_shot
from training.synth.overlays import draw_ruler, mat_grid
from training.synth.parts import PARTS_BY_NUMBER
from training.synth.scene import CATALOGUE_BACKGROUNDS, FIELD_BACKGROUNDS, background
from training.synth.shapes_misc import RESISTOR_RGB

generate_mod = importlib.import_module("training.synth.generate")  # the module, not the function
DIGITS = ["black", "brown", "red", "orange", "yellow", "green", "blue", "violet", "grey", "white"]
TINY = dict(catalogue_per_part=1, field_per_part=2, size=48)


def parse_resistance(code: str) -> float:
    """'4K7' -> 4700, '220R' -> 220, '1M' -> 1e6 (independent of the generator's own table)."""
    m = re.fullmatch(r"(\d+)([RKM])(\d*)", code)
    assert m, code
    mult = {"R": 1.0, "K": 1e3, "M": 1e6}[m.group(2)]
    return float(f"{m.group(1)}.{m.group(3) or 0}") * mult


# -- catalogue ---------------------------------------------------------------------------

def test_catalogue_covers_the_part_families_with_valid_metadata() -> None:
    assert 30 <= len(PARTS) <= 45
    numbers = [p.part_number for p in PARTS]
    assert len(set(numbers)) == len(numbers)
    prefixes = {n.split("-")[0] for n in numbers}
    assert {"NUT", "WSH", "SWS", "BLT", "CAP", "BRG", "GER", "ORG", "HCL", "FUS", "RLY", "FIT", "VLV", "RES"} <= prefixes
    for p in PARTS:
        assert re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", p.part_number)
        assert p.name and p.category and p.manufacturer and p.description
        assert p.size_mm > 0
    groups: dict[str, list] = {}
    for p in PARTS:
        if p.look_alike_group:
            groups.setdefault(p.look_alike_group, []).append(p)
    assert all(len(v) >= 2 for v in groups.values())
    for a, b in (("NUT-M8", "NUT-M10"), ("BRG-6204", "BRG-6205")):
        pa, pb = PARTS_BY_NUMBER[a], PARTS_BY_NUMBER[b]
        assert pa.look_alike_group == pb.look_alike_group != ""
        assert pa.shape == pb.shape and pa.size_mm < pb.size_mm


def test_resistor_colour_code() -> None:
    assert resistor_bands(4700) == ["yellow", "violet", "red", "gold"]
    assert resistor_bands(220) == ["red", "red", "brown", "gold"]
    assert resistor_bands(10) == ["brown", "black", "black", "gold"]
    assert resistor_bands(4.7) == ["yellow", "violet", "gold", "gold"]
    assert resistor_bands(1e6, 10.0) == ["brown", "black", "green", "silver"]
    with pytest.raises(ValueError):
        resistor_bands(4750)


@pytest.mark.parametrize("part_number", [p.part_number for p in PARTS if p.shape == "resistor"])
def test_rendered_resistor_bands_decode_to_the_labelled_value(part_number: str) -> None:
    part = PARTS_BY_NUMBER[part_number]
    pr = render_part(part, np.random.default_rng(0), px_per_mm=12.0, clean=True)
    arr = np.asarray(pr.image, np.float32)
    names = list(RESISTOR_RGB)
    palette = np.asarray([RESISTOR_RGB[n] for n in names], np.float32)
    decoded = []
    xs = []
    for band in pr.geometry["bands"]:
        x, y = int(band["x"]), int(band["y"])
        patch = arr[y - 1:y + 2, x - 1:x + 2]
        assert (patch[..., 3] > 250).all(), "band centre must be on the opaque body"
        rgb = patch[..., :3].reshape(-1, 3).mean(axis=0)
        decoded.append(names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))])
        xs.append(x)
    assert xs == sorted(xs)
    d1, d2, mult, tol = decoded
    exp = {"gold": -1, "silver": -2}.get(mult, DIGITS.index(mult) if mult in DIGITS else None)
    value = (DIGITS.index(d1) * 10 + DIGITS.index(d2)) * 10.0 ** exp
    assert value == pytest.approx(parse_resistance(part_number.split("-", 1)[1]))
    assert tol == "gold"
    # the tolerance band sits apart from the three value bands
    assert xs[3] - xs[2] > 1.5 * (xs[2] - xs[1])


# -- scale references ------------------------------------------------------------------------

def _scale_ref_shot(part_number: str, seed: int):
    """The planner's own field shot, made measurable: no hand, skew, turn or tilt."""
    part = PARTS_BY_NUMBER[part_number]
    plan = plan_shot(part, "field", np.random.default_rng(seed), 192)
    if plan.scale_ref == "none":
        return None
    plan = dataclasses.replace(plan, in_hand=False, skew=None, rotation_deg=0.0, tilt=1.0)
    return render_shot(part, plan)


@pytest.mark.parametrize("small,large", [("NUT-M8", "NUT-M10"), ("BRG-6204", "BRG-6205")])
def test_look_alikes_differ_in_pixels_exactly_by_their_size_ratio_with_a_scale_ref(small: str, large: str) -> None:
    seeds = [s for s in range(40) if plan_shot(PARTS_BY_NUMBER[small], "field", np.random.default_rng(s),
                                               192).scale_ref != "none"][:4]
    assert len(seeds) == 4
    for seed in seeds:
        a, b = _scale_ref_shot(small, seed), _scale_ref_shot(large, seed)
        assert a.info["scale_ref"] == b.info["scale_ref"] != "none"
        assert a.info["px_per_mm"] == b.info["px_per_mm"]  # same framing for the whole group
        ppm = a.info["px_per_mm"]
        for shot, pn in ((a, small), (b, large)):
            x0, y0, x1, y1 = shot.info["part_bbox"]
            assert (x1 - x0) / ppm == pytest.approx(PARTS_BY_NUMBER[pn].size_mm, rel=0.06)
        wa = a.info["part_bbox"][2] - a.info["part_bbox"][0]
        wb = b.info["part_bbox"][2] - b.info["part_bbox"][0]
        ratio = PARTS_BY_NUMBER[large].size_mm / PARTS_BY_NUMBER[small].size_mm
        assert wb / wa == pytest.approx(ratio, rel=0.05)


def test_ruler_ticks_are_drawn_at_px_per_mm() -> None:
    for ppm in (3.7, 6.0, 11.3):
        r = draw_ruler(400, 40, ppm, "white")
        row = np.asarray(r.image.convert("L"), np.float32)[int(r.mm_tick_len * 0.5)]
        dark = np.clip(200.0 - row, 0, None)
        dark -= dark.mean()
        ac = np.correlate(dark, dark, mode="full")[len(dark) - 1:]
        lag = int(np.argmax(ac[2:int(ppm * 1.6)])) + 2
        # refine with the 10th harmonic for sub-pixel precision
        lo, hi = int(ppm * 9.5), int(ppm * 10.5) + 1
        lag10 = lo + int(np.argmax(ac[lo:hi]))
        assert abs(lag - ppm) <= 1.0
        assert lag10 / 10.0 == pytest.approx(ppm, abs=0.15)


def test_cutting_mat_grid_spacing_is_ten_mm() -> None:
    ppm = 4.0
    img = mat_grid(256, ppm, 0.0, (0.0, 0.0), (30, 90, 70))
    col = img[:, :, 1].mean(axis=0)
    peaks = np.nonzero(col > col.mean() + 0.5 * (col.max() - col.mean()))[0]
    starts = peaks[np.r_[True, np.diff(peaks) > 2]]
    assert np.diff(starts).mean() == pytest.approx(10 * ppm, abs=0.6)


def test_scale_reference_shots_use_group_framing_and_no_ref_shots_do_not_follow_size() -> None:
    # without a scale ref the pixel size is random: M8 and M10 nuts have overlapping pixel sizes
    sizes = {pn: [] for pn in ("NUT-M8", "NUT-M10")}
    for pn in sizes:
        part = PARTS_BY_NUMBER[pn]
        for seed in range(200):
            plan = plan_shot(part, "field", np.random.default_rng(seed), 256)
            if plan.scale_ref == "none":
                sizes[pn].append(part.size_mm * plan.px_per_mm)
    assert min(sizes["NUT-M10"]) < np.median(sizes["NUT-M8"]) < max(sizes["NUT-M10"])


# -- backgrounds -------------------------------------------------------------------------

def test_catalogue_and_field_background_pools_are_disjoint() -> None:
    cat_fam = {s.family for s in CATALOGUE_BACKGROUNDS}
    field_fam = {s.family for s in FIELD_BACKGROUNDS}
    assert cat_fam and field_fam and not cat_fam & field_fam
    assert not {s.seed for s in CATALOGUE_BACKGROUNDS} & {s.seed for s in FIELD_BACKGROUNDS}
    assert not set(CATALOGUE_BACKGROUNDS) & set(FIELD_BACKGROUNDS)
    rng = np.random.default_rng(0)

    def stats(spec) -> tuple[float, float]:
        img = background(spec, 64, rng)
        lum = img.mean(axis=2)
        return float(lum.mean()), float(lum.std())

    for spec in CATALOGUE_BACKGROUNDS:
        mean, std = stats(spec)
        assert mean > 200 and std < 8, (spec, mean, std)
    for spec in FIELD_BACKGROUNDS:
        mean, std = stats(spec)
        assert mean < 200 or std >= 8, (spec, mean, std)
    # and the shot planner draws each kind from its own pool only
    part = PARTS_BY_NUMBER["GER-20T-M1"]
    for seed in range(40):
        assert plan_shot(part, "catalogue", np.random.default_rng(seed), 64).background in CATALOGUE_BACKGROUNDS
        plan = plan_shot(part, "field", np.random.default_rng(seed), 64)
        assert plan.background in FIELD_BACKGROUNDS
        assert plan.scale_ref in ("none", "ruler", "mat")


def test_held_out_field_photos_are_taken_on_textures_no_training_photo_shows(tmp_path) -> None:
    """An audit of the demo: its query photos were drawn from the training photos' 70 textures (26 of 126 queries
    on the very texture of a training photo of their part). Calibration and query photos now have pools of their own."""
    from training.synth.generate import generate
    from training.synth.scene import CALIBRATION_BACKGROUNDS, FIELD_POOLS, QUERY_BACKGROUNDS

    pools = [FIELD_BACKGROUNDS, CALIBRATION_BACKGROUNDS, QUERY_BACKGROUNDS]
    seeds = [{s.seed for s in pool} for pool in pools]
    assert all(seeds) and not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])
    assert {s.family for s in QUERY_BACKGROUNDS} == {s.family for s in FIELD_BACKGROUNDS}  # same kinds of surface
    rng = np.random.default_rng(0)
    textures = {name: [background(spec, 48, rng) for spec in pool] for name, pool in FIELD_POOLS.items()}
    for q in textures["query"]:  # no query texture is a training texture (they differ pixel by pixel)
        assert min(float(np.abs(q.astype(np.int16) - t.astype(np.int16)).mean()) for t in textures["field"]) > 2
    part = PARTS_BY_NUMBER["GER-20T-M1"]
    for seed in range(20):
        for name, pool in FIELD_POOLS.items():
            assert plan_shot(part, "field", np.random.default_rng(seed), 64, backgrounds=name).background in pool
    # the same seed gives the same pose on another pool: only the surface changes
    a = plan_shot(part, "field", np.random.default_rng(3), 64)
    b = plan_shot(part, "field", np.random.default_rng(3), 64, backgrounds="query")
    assert a.rotation_deg == b.rotation_deg and a.background != b.background
    res = generate(tmp_path / "q", seed=5, catalogue_per_part=0, field_per_part=1, size=64, parts=["GER-20T-M1"],
                   workers=1, backgrounds="query")
    assert json.loads((res.out_dir / "generate.json").read_text())["backgrounds"] == "query"
    with pytest.raises(UsageError, match="backgrounds must be one of"):
        generate(tmp_path / "bad", field_per_part=1, size=64, parts=["GER-20T-M1"], workers=1, backgrounds="studio")


def test_hand_occludes_part_of_the_part() -> None:
    part = PARTS_BY_NUMBER["BRG-6204"]
    seen = 0
    for seed in range(60):
        plan = plan_shot(part, "field", np.random.default_rng(seed), 128)
        if plan.in_hand:
            shot = render_shot(part, dataclasses.replace(plan, skew=None))
            assert 0.0 < shot.info["occluded_fraction"] <= 0.4
            seen += 1
        if seen == 3:
            break
    assert seen == 3


# -- generate ---------------------------------------------------------------------------------

def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_writes_the_documented_layout(tmp_path: Path) -> None:
    chosen = ["NUT-M8", "RES-4K7", "BRG-6204", "FUS-ATO-10A"]
    res = generate(tmp_path / "out", seed=3, parts=chosen, workers=1, **TINY)
    out = tmp_path / "out"
    assert res.n_images == len(chosen) * 3 and res.seconds > 0
    parts = _read_csv(res.parts_csv)
    assert list(parts[0]) == ["part_number", "name", "category", "manufacturer", "description", "size_mm",
                              "look_alike_group", "stock_site_a", "bin_site_a", "stock_site_b", "bin_site_b"]
    in_catalogue_order = [p.part_number for p in PARTS if p.part_number in chosen]
    assert [r["part_number"] for r in parts] == in_catalogue_order
    for r in parts:
        assert int(r["stock_site_a"]) >= 0 and int(r["stock_site_b"]) >= 0
        assert r["bin_site_a"] and r["bin_site_b"]
        assert float(r["size_mm"]) == PARTS_BY_NUMBER[r["part_number"]].size_mm
    rows = _read_csv(res.images_csv)
    assert list(rows[0]) == ["path", "part_number", "kind", "scale_ref", "in_hand", "seed", "wear"]
    assert all(r["wear"] == "" for r in rows)  # no wear unless asked
    assert len(rows) == res.n_images
    assert {r["part_number"] for r in rows} == set(chosen)
    for r in rows:
        assert re.fullmatch(rf"images/{r['part_number']}/{r['kind']}_\d{{4}}\.jpg", r["path"])
        assert r["kind"] in ("catalogue", "field") and r["scale_ref"] in ("none", "ruler", "mat")
        assert r["in_hand"] in ("0", "1")
        if r["kind"] == "catalogue":
            assert r["in_hand"] == "0" and r["scale_ref"] in ("none", "ruler")
        img = load_image(out / r["path"])
        assert img.size == (48, 48)
        assert np.asarray(img).std() > 3  # not a blank frame
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert files == sorted(r["path"] for r in rows)
    meta = json.loads((out / "generate.json").read_text())
    assert meta["seed"] == 3 and meta["size"] == 48 and meta["parts"] == in_catalogue_order and meta["n_images"] == len(rows)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or temp files left


def test_generate_is_deterministic_and_independent_of_worker_count(tmp_path: Path) -> None:
    kw = dict(parts=["NUT-M10", "GER-20T-M2"], **TINY)
    generate(tmp_path / "a", seed=7, workers=1, **kw)
    generate(tmp_path / "b", seed=7, workers=2, **kw)
    generate(tmp_path / "c", seed=8, workers=1, **kw)
    a, b, c = _all_bytes(tmp_path / "a"), _all_bytes(tmp_path / "b"), _all_bytes(tmp_path / "c")
    assert a == b
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert len(jpgs) == 6
    assert all(a[k] != c[k] for k in jpgs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=31), "size"), (dict(size=4096), "size"), (dict(catalogue_per_part=-1), "counts"),
    (dict(catalogue_per_part=0, field_per_part=0), "nothing to generate"), (dict(seed=-1), "seed"),
    (dict(workers=0), "workers"), (dict(size=64.0), "size"), (dict(parts=["NUT-M8", "NOPE-1"]), "NOPE-1"),
    (dict(parts=[]), "empty"), (dict(parts=["NUT-M8", "NUT-M8"]), "more than once"),
    (dict(worn=1.5), "worn"), (dict(worn=-0.1), "worn"), (dict(worn=float("nan")), "worn"), (dict(worn="all"), "worn"),
])
def test_bad_options_are_usage_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        generate(tmp_path / "out", **{**TINY, **kwargs})
    assert not (tmp_path / "out" / "images").exists()


# -- wear --------------------------------------------------------------------------------

def _twins(part_number: str, index: int, size: int = 128) -> tuple[Any, Any]:
    """The clean shot of (part, field, index) and the same shot with wear (their plans differ only in the wear)."""
    from training.synth.generate import WEAR_STREAM
    from training.synth.wear import plan_wear

    part = PARTS_BY_NUMBER[part_number]
    seed = generate_mod.image_seed(4, part_number, "field", index)
    plan = plan_shot(part, "field", np.random.default_rng(seed), size, index=index)
    plan = dataclasses.replace(plan, blur=0.0, motion_blur=False, noise=0.0, skew=None)  # compare raw pixels
    wrng = np.random.default_rng([seed, WEAR_STREAM])
    wrng.random()
    worn = dataclasses.replace(plan, wear=plan_wear(part, wrng), wear_seed=int(wrng.integers(2 ** 63)))
    return render_shot(part, plan), render_shot(part, worn)


@pytest.mark.parametrize("part_number,index", [("NUT-M10", 0), ("BRG-6204", 3), ("RES-1K", 1), ("HCL-12-22", 2)])
def test_wear_changes_the_part_and_nothing_else(part_number: str, index: int) -> None:
    from training.synth.wear import CHIP_RANGE

    clean, worn = _twins(part_number, index)
    a, b = np.asarray(clean.image, np.float32), np.asarray(worn.image, np.float32)
    diff = np.abs(a - b).max(axis=2)
    # the part (and its shadow, which follows a chipped outline) dilated by a few pixels: outside it, the same pixels
    near = np.asarray(Image.fromarray((clean.part_mask > 0.02).astype(np.uint8) * 255).filter(
        ImageFilter.MaxFilter(9)), bool)
    bx0, by0, bx1, by1 = clean.info["part_bbox"]
    far = ~near
    far[max(0, by0 - 12):by1 + 12, max(0, bx0 - 12):bx1 + 12] = False  # the drop shadow's reach
    assert far.sum() > 0.15 * far.size
    assert diff[far].max() <= 1.0 + 1e-6, worn.info["wear"]
    inside = clean.part_mask > 0.9
    assert diff[inside].mean() > 4.0, (worn.info["wear"], diff[inside].mean())
    if "chipped" in worn.info["wear"]:
        lost = 1 - worn.part_mask.sum() / clean.part_mask.sum()
        assert CHIP_RANGE[0] - 0.05 <= lost <= CHIP_RANGE[1] + 0.05, lost
        assert worn.info["chipped_fraction"] == pytest.approx(lost, abs=0.05)
    else:
        assert worn.part_mask.sum() == pytest.approx(clean.part_mask.sum(), rel=1e-4)


@pytest.mark.parametrize("kind", ["grease", "rust", "dust", "chipped"])
def test_each_kind_of_wear_does_what_it_says(kind: str) -> None:
    from training.synth.wear import apply_wear

    part = PARTS_BY_NUMBER["WSH-M8"]  # a bright steel washer
    layer = render_part(part, np.random.default_rng(0), px_per_mm=5.0).image
    out, info = apply_wear(layer, (kind,), np.random.default_rng(1))
    a, b = np.asarray(layer, np.float32), np.asarray(out, np.float32)
    solid = a[..., 3] > 200
    changed = np.abs(a[..., :3] - b[..., :3]).max(axis=2) > 12
    if kind == "chipped":
        assert 0.08 <= 1 - b[..., 3].sum() / a[..., 3].sum() <= 0.25 and info["chipped_fraction"] > 0.08
        assert (b[..., 3] <= a[..., 3] + 1).all()  # only takes material away
    else:
        share = changed[solid].mean()
        assert 0.1 <= share <= 0.9, share  # blotches, not the whole part and not nothing
        assert (b[..., 3] == a[..., 3]).all() and info["chipped_fraction"] == 0
        hue = (b[..., :3] - a[..., :3])[solid & changed].mean(axis=0)  # the colour the stain pulls towards
        if kind == "grease":
            assert hue.sum() < -60  # darker
        elif kind == "rust":
            assert hue[0] - hue[2] > 20  # towards red-brown
    with pytest.raises(ValueError, match="unknown wear"):
        apply_wear(layer, ("paint",), np.random.default_rng(1))


def test_rust_only_on_parts_that_can_rust() -> None:
    from training.synth.wear import plan_wear, wears_for

    assert "rust" in wears_for(PARTS_BY_NUMBER["NUT-M8"]) and "rust" in wears_for(PARTS_BY_NUMBER["BRG-6204"])
    for pn in ("ORG-20X2-NBR", "RES-1K", "FUS-ATO-10A", "FIT-ELB-DN15", "RLY-12V-40A"):
        assert "rust" not in wears_for(PARTS_BY_NUMBER[pn]), pn
        rng = np.random.default_rng(0)
        assert all("rust" not in plan_wear(PARTS_BY_NUMBER[pn], rng) for _ in range(200))
    rng = np.random.default_rng(0)
    drawn = [plan_wear(PARTS_BY_NUMBER["NUT-M8"], rng) for _ in range(400)]
    assert {k for d in drawn for k in d} == {"grease", "rust", "dust", "chipped"}
    assert 0.2 < np.mean([len(d) == 2 for d in drawn]) < 0.5
    assert all(d[-1] == "chipped" for d in drawn if "chipped" in d)  # the break is drawn last


def test_generate_worn_is_the_same_shots_plus_wear_and_deterministic(tmp_path: Path) -> None:
    kw = dict(parts=["NUT-M8", "ORG-20X2-NBR"], seed=5, workers=1, catalogue_per_part=1, field_per_part=4, size=64)
    clean = generate(tmp_path / "clean", **kw)
    worn = generate(tmp_path / "worn", worn=1.0, **kw)
    again = generate(tmp_path / "again", worn=1.0, **{**kw, "workers": 2})
    half = generate(tmp_path / "half", worn=0.5, **{**kw, "field_per_part": 16})
    assert _all_bytes(tmp_path / "worn") == _all_bytes(tmp_path / "again")
    c_rows, w_rows = _read_csv(clean.images_csv), _read_csv(worn.images_csv)
    for c, w in zip(c_rows, w_rows):
        assert (c["path"], c["seed"], c["scale_ref"], c["in_hand"]) == (w["path"], w["seed"], w["scale_ref"],
                                                                         w["in_hand"])
        same = (tmp_path / "clean" / c["path"]).read_bytes() == (tmp_path / "worn" / w["path"]).read_bytes()
        if c["kind"] == "catalogue":
            assert w["wear"] == "" and same  # catalogue shots stay clean
        else:
            assert w["wear"] and not same
    shares = [r["wear"] != "" for r in _read_csv(half.images_csv) if r["kind"] == "field"]
    assert 0.2 < np.mean(shares) < 0.8
    assert json.loads((tmp_path / "worn" / "generate.json").read_text())["worn"] == 1.0


def test_unknown_part_error_lists_valid_part_numbers(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as ei:
        generate(tmp_path / "o", parts=["NUT-M9"], **TINY)
    assert "NUT-M9" in str(ei.value) and "NUT-M8" in str(ei.value) and "RES-4K7" in str(ei.value)


def test_non_empty_output_needs_overwrite_and_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        generate(out, parts=["NUT-M8"], **TINY)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "images").mkdir()
    with pytest.raises(UsageError, match="not a partlens generate output"):
        generate(out, parts=["NUT-M8"], overwrite=True, **TINY)
    (out / "images").rmdir()
    generate(out, parts=["NUT-M8", "NUT-M10"], workers=1, overwrite=True, **TINY)
    (out / ".images.staging-12345" / "images").mkdir(parents=True)  # as left by a killed run
    generate(out, parts=["NUT-M10"], workers=1, overwrite=True, **TINY)
    assert not (out / ".images.staging-12345").exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["NUT-M10"]  # stale classes are gone
    assert [r["part_number"] for r in _read_csv(out / "parts.csv")] == ["NUT-M10"]


def test_a_failed_run_keeps_the_previous_output_and_leaves_no_partial_files(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    generate(out, parts=["WSH-M8"], workers=1, seed=1, **TINY)
    before = _all_bytes(out)
    calls = {"n": 0}
    real = generate_mod.render_image

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the run were killed
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_mod, "render_image", dying)
    with pytest.raises(KeyboardInterrupt):
        generate(out, parts=["WSH-M8"], workers=1, seed=2, overwrite=True, **TINY)
    assert _all_bytes(out) == before
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["generate", str(out), "--size", "40", "--parts", "ORG-20X2-NBR,RLY-12V-40A", "--catalogue-per-part",
            "1", "--field-per-part", "1", "--workers", "1", "--seed", "5", "--worn", "1"]
    assert cli_main(args) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert len(_read_csv(out / "images.csv")) == 4
    assert [r["wear"] != "" for r in _read_csv(out / "images.csv")] == [False, True, False, True]
    assert Image.open(out / "images" / "RLY-12V-40A" / "field_0000.jpg").size == (40, 40)
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite"]) == 0
    assert cli_main(["generate", str(tmp_path / "x"), "--parts", "BOGUS"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert cli_main(["generate", str(tmp_path / "y"), "--size", "8"]) == 2
    with pytest.raises(SystemExit) as ei:
        cli_main(["generate", "--help"])
    assert ei.value.code == 0

"""The grocery and resistor training benchmarks run end to end on tiny stand-in datasets."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.runner import BenchContext

from .conftest import make_folder

TINY = dict(model="tiny", image_size=32, epochs=1, batch_size=8, freeze_stages=0)


def _grocery(root: Path, n: int = 5) -> Path:
    make_folder(root / "train", n_classes=n, per_class=6)
    make_folder(root / "val", n_classes=n, per_class=2, seed=1)
    (root / "iconic").mkdir(parents=True)
    rows = ["Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
            "Iconic Image Path (str),Product Description Path (str)"]
    for k in range(n):
        Image.open(root / "train" / f"c{k}" / "000.jpg").save(root / "iconic" / f"c{k}.jpg")
        rows.append(f"P{k},{k},C{k},{k},/iconic/c{k}.jpg,/d.txt")
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    for split, per in (("train", 6), ("val", 2)):
        lines = [f"{split}/c{k}/{i:03d}.jpg, {k}, {k}" for k in range(n) for i in range(per)]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _ctx(tmp_path: Path, name: str, **options) -> BenchContext:
    return BenchContext(name=name, work_dir=tmp_path / "work" / name, data=tmp_path / "data", options=options)


@pytest.mark.slow
def test_grocery_benchmarks_on_stand_in(tmp_path: Path) -> None:
    _grocery(tmp_path / "data" / "grocery")
    g = importlib.import_module("benchmarks.bench_train_grocery").run(_ctx(tmp_path, "g", **TINY))
    assert g["val_images_listed"] == g["val_images_evaluated"] == 10
    assert 0 <= g["iconic_recall@1"] <= 1 and g["meets_top1"] == (g["top1"] >= 0.85)
    new = importlib.import_module("benchmarks.bench_train_grocery_new_products")
    r = new.run(_ctx(tmp_path, "n", folds=2, **TINY))
    assert r["folds"] == 2 and all(row["held_out_products"] == 1 for row in r["table"])
    assert r["gallery_repeats"] == 8 and r["options_overridden"] == TINY  # what ran, not the module default
    assert all(row["new_val_photos"] == 2 for row in r["table"])
    # the supplementary number also scores the held-out product's TRAIN photos (never trained on in its fold)
    assert all(row["new_all_photos"] == 2 + 6 and row["new_all_photos_products"] == 1 for row in r["table"])
    assert r["new_all_photos_total"] == 16 and 0 <= r["new_all_photos_recall@1_pooled"] <= 1
    assert all(0 <= row["frozen_new_recall@1"] <= 1 for row in r["table"]) and "frozen_new_recall@1_mean" in r
    # the like-for-like floor (frozen features, the same catalogue views) is beside it
    assert r["frozen_new_recall@1_views_mean"] == pytest.approx(sum(row["frozen_new_recall@1_views"] for row in r["table"]) / 2)
    # the headline uses the product's catalogue views; the single-view number stays beside it
    assert r["catalogue_views"] == "flip-crop5"
    assert all(0 <= row["new_recall@1_no_views"] <= 1 and 0 <= row["seen_recall@1"] <= 1 for row in r["table"])
    # catalogue images are trained on: all 5 in the grocery run, only the 4 trained products' in each fold
    import json

    g_cfg = json.loads((tmp_path / "work" / "g" / "run" / "config.json").read_text())
    assert g["gallery_repeats"] == 8 and g_cfg["split"]["gallery"]["gallery_images"] == 5
    assert g_cfg["n_train"] == 30 + 5 * 8
    for fold in range(2):
        f_cfg = json.loads((tmp_path / "work" / "n" / f"fold{fold}" / "config.json").read_text())
        assert f_cfg["split"]["gallery"] == {"gallery_images": 4, "gallery_repeats": 8,
                                             "gallery_left_out_in_val": 0, "gallery_other_classes": 1}


@pytest.mark.slow
def test_resistor_benchmark_on_stand_in(tmp_path: Path) -> None:
    make_folder(tmp_path / "data" / "resistors", n_classes=3, per_class=10)
    mod = importlib.import_module("benchmarks.bench_train_resistors")
    r = mod.run(_ctx(tmp_path, "r", **{**TINY, "image_size": [16, 40]}))
    assert r["folds"] == 5 and r["val_images_evaluated"] == 30
    assert 0 <= r["top1_mean"] <= 1


@pytest.mark.parametrize("n_classes", [5, 81, 83])
def test_new_product_folds_partition_the_products(n_classes: int) -> None:
    """Every product is held out by exactly one of the 5 folds (not 5 overlapping draws), the fold sizes differ by
    at most one, and the partition is the same on every call."""
    new = importlib.import_module("benchmarks.bench_train_grocery_new_products")
    folds = [new.held_out_classes(n_classes, f) for f in range(new.FOLDS)]
    flat = [c for f in folds for c in f]
    assert sorted(flat) == list(range(n_classes))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert folds == [new.held_out_classes(n_classes, f) for f in range(new.FOLDS)]
    assert folds[0] != list(range(len(folds[0])))  # shuffled, not the first classes
    with pytest.raises(ValueError, match="fold 5"):
        new.held_out_classes(n_classes, new.FOLDS)

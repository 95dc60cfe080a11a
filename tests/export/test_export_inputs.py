"""Export inputs an ML engineer gets wrong (an audit of export, calibrate and bundle build, 22nd session)."""
from __future__ import annotations

import os
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.errors import GateError, InputError


def test_folder_part_numbers_are_stored_as_the_catalogue_stores_them(tmp_path: Path) -> None:
    """macOS writes "Ö" in folder names as two code points, and a folder name may keep a trailing space: a bundle
    built from such folders held vectors for parts the device's catalogue (NFC, stripped) did not know."""
    from edge_app.partfolders import part_folder, part_from_folder
    from export.catalogue import images_from_dir

    nfd = unicodedata.normalize("NFD", "Ölfilter-Ö")
    assert nfd != "Ölfilter-Ö" and part_from_folder(nfd) == "Ölfilter-Ö" and part_from_folder("trail ") == "trail"
    assert part_from_folder(part_folder("DIN 934/M8")) == "DIN 934/M8"  # the encoding still round-trips
    for name in (nfd, "trail "):
        (tmp_path / "cat" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "cat" / name / "a.jpg")
    assert sorted(i.part_number for i in images_from_dir(tmp_path / "cat")) == ["trail", "Ölfilter-Ö"]


def test_a_part_left_without_a_readable_image_stops_the_bundle_catalogue(tmp_path: Path) -> None:
    from edge_app.preprocess import PreprocessSpec
    from export.catalogue import embed_catalogue, images_from_dir

    for part in ("good", "broken"):
        (tmp_path / "cat" / part).mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "cat" / "good" / "a.jpg")
    (tmp_path / "cat" / "broken" / "b.jpg").write_bytes(b"not a jpeg")
    items = images_from_dir(tmp_path / "cat")
    spec = PreprocessSpec(size=(8, 8))

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"embedding": np.ones((len(x), 4), np.float32)}

    emb, rows = embed_catalogue(run, items, spec)  # query photos: a warning, the rest goes on
    assert [r["part_number"] for r in rows] == ["good"]
    with pytest.raises(InputError, match=r"1 part\(s\) have no readable catalogue image.*broken"):
        embed_catalogue(run, items, spec, every_part=True)  # a bundle's catalogue: the part would vanish


def test_an_export_killed_long_ago_leaves_no_model_copy_behind(tmp_path: Path) -> None:
    from export.pipeline import _sweep_stale_exports

    old, young = tmp_path / ".export-killed", tmp_path / ".export-running"
    for d in (old, young):
        d.mkdir()
        (d / "model.tflite").write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 7 * 3600, time.time() - 7 * 3600))
    _sweep_stale_exports(tmp_path)
    assert not old.exists() and young.is_dir()


def test_too_few_validation_photos_are_refused_before_converting(tiny_model, image_dirs, tmp_path: Path,
                                                                 monkeypatch) -> None:
    from export import pipeline

    monkeypatch.setattr(pipeline, "_write_export", lambda *a, **k: pytest.fail("converted before the check"))
    with pytest.raises(GateError, match="only 3 validation photo"):
        pipeline.export_model(tiny_model, [f"P{i}" for i in range(4)], "onnx-fp32", tmp_path / "out",
                              calib_dir=image_dirs["catalogue"], val_dir=image_dirs["val"], val_images=3)

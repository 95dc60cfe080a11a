"""Bad input on the training side gets a one-line error and an exit code, never a traceback (found by an audit)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_app.cli import main
from edge_app.errors import InputError, IntegrityError, UsageError
from training.config import TrainConfig
from training.train import train


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="tiny", epochs=1, batch_size=8, lr=3e-3, image_size=32,
                seed=0, progress=False)
    return TrainConfig(**{**base, **kw})


def test_a_class_left_without_training_images_is_refused(tiny_folder: Path, tmp_path: Path) -> None:
    """Near-duplicates stay on one side of a split: a class made of copies of one photo in val whole (a split
    made by hand; ``make_split`` itself keeps such a class in train) leaves it no training image."""
    one = tiny_folder / "c2" / "000.jpg"
    for p in (tiny_folder / "c2").iterdir():
        if p != one:
            p.unlink()
    for i in range(1, 6):
        shutil.copy(one, tiny_folder / "c2" / f"copy{i}.jpg")
    from training.splits import content_sha256, make_split, write_split

    doc = make_split(str(tiny_folder), val_fraction=0.25, seed=0)
    assert any(lab == "c2" for _, lab in doc["train"])  # the group stays in train (the class's only group)
    doc["val"] += [r for r in doc["train"] if r[1] == "c2"]  # moved to val by hand
    doc["train"] = [r for r in doc["train"] if r[1] != "c2"]
    doc["sha256"] = content_sha256(doc)
    write_split(doc, tmp_path / "split.json")
    with pytest.raises(UsageError, match="no training image for 1 class.*c2"):
        train(_cfg(tiny_folder, tmp_path / "run", split=str(tmp_path / "split.json")))


def test_parts_layout_csv_problems_are_input_errors(tmp_path: Path) -> None:
    from training.data import load_parts_layout

    (tmp_path / "parts.csv").write_text("part_number,name\nP1,one\n")
    (tmp_path / "images.csv").write_text("file,part_number\na.jpg,P1\n")
    with pytest.raises(InputError, match="images.csv: no path column"):
        load_parts_layout(tmp_path)
    (tmp_path / "images.csv").write_bytes(b"path,part_number\n\xff\xfe.jpg,P1\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_parts_layout(tmp_path)


def test_checkpoint_without_model_config_is_an_integrity_error(tmp_path: Path) -> None:
    import torch

    from training.models import load_checkpoint

    path = tmp_path / "odd.pt"
    torch.save({"format": "partlens-checkpoint/1", "config": {"name": "tiny"}, "state_dict": {}, "labels": ["a"]},
               path)
    with pytest.raises(IntegrityError):
        load_checkpoint(path)


def test_cli_option_errors_are_one_line(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data", str(tiny_folder), "--model", "vit", "--model-option", "vit_depth=1x",
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "vit_depth: '1x' is not a number" in capsys.readouterr().err
    rc = main(["evaluate", str(tmp_path / "missing.pt"), "--batch-size", "0"])
    assert rc == 2 and "batch size must be >= 1" in capsys.readouterr().err


def test_an_output_path_that_is_a_folder_is_a_clear_error(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    out.mkdir()
    rc = main(["audit", str(tiny_folder), "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 3 and err.startswith("partlens audit: error: Is a directory") and str(out) in err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["data", "report"]  # no temp

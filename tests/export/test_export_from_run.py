"""``partlens export`` without --calib/--val: the images come from the split the checkpoint was trained on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import make_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-epoch ``tiny`` run on a generated folder with a split file (made once for the module)."""
    from training.config import TrainConfig
    from training.splits import make_split, write_split
    from training.train import train

    root = tmp_path_factory.mktemp("run")
    data = make_folder(root / "data", per_class=12)
    split = write_split(make_split(data, seed=0), root / "split.json")
    train(TrainConfig(data=str(data), out=str(root / "run"), model="tiny", epochs=1, batch_size=8, image_size=32,
                      seed=0, split=str(split), progress=False))
    return {"root": root, "data": data, "split": split, "ckpt": root / "run" / "last.pt"}


def test_export_takes_calibration_and_parity_images_from_the_training_split(
        run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main
    from training.splits import read_split

    split = read_split(run["split"])
    assert main(["export", str(run["ckpt"]), "--format", "onnx-int8", "--calib-images", "20",
                 "--out", str(tmp_path / "a")]) == 0
    assert "passed" in capsys.readouterr().out
    side = json.loads((tmp_path / "a" / "tiny-onnx-int8.onnx.json").read_text())
    where = f"split {run['split']} of {run['data']}"
    assert side["quantization"]["calibration_source"] == f"train images of the {where}"
    assert side["quantization"]["calibration_images"] == 20
    assert side["parity"]["source"] == f"val images of the {where}"
    assert side["parity"]["n_val"] == len(split["val"]) == 6  # every val image of the split, no other
    # one side given: the other still comes from the split
    assert main(["export", str(run["ckpt"]), "--format", "onnx-fp32", "--val", str(run["data"] / "c1"),
                 "--out", str(tmp_path / "b")]) == 0
    side = json.loads((tmp_path / "b" / "tiny-onnx-fp32.onnx.json").read_text())
    assert side["parity"]["n_val"] == 12 and side["parity"]["source"] == str(run["data"] / "c1")


def test_export_refuses_a_split_it_cannot_rebuild(run: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import torch

    from edge_app.cli import main
    from training.models import read_checkpoint
    from training.splits import make_split, write_split

    base = ["--format", "onnx-fp32", "--out", str(tmp_path / "o")]
    # a checkpoint that records no training run (saved by a program)
    raw = read_checkpoint(run["ckpt"])
    raw["extra"] = {}
    torch.save(raw, tmp_path / "bare.pt")
    assert main(["export", str(tmp_path / "bare.pt"), *base]) == 2
    assert "records no training split" in capsys.readouterr().err
    # the split file was replaced by another valid split since training
    moved = tmp_path / "copy"
    shutil.copytree(run["root"], moved, symlinks=True)
    raw = read_checkpoint(moved / "run" / "last.pt")
    cfg = raw["extra"]["train_config"]
    raw["extra"]["train_config"] = {**cfg, "data": str(moved / "data")}
    raw["extra"]["data_path"] = str(moved / "data")
    raw["extra"]["split"] = {**raw["extra"]["split"], "path": str(moved / "split.json")}
    torch.save(raw, moved / "run" / "last.pt")
    write_split(make_split(moved / "data", seed=1), moved / "split.json")
    assert main(["export", str(moved / "run" / "last.pt"), *base]) == 4
    assert "the split changed since" in capsys.readouterr().err
    assert main(["evaluate", str(moved / "run" / "last.pt"), "--no-figures"]) == 4  # evaluate checks it too
    assert "the split changed since" in capsys.readouterr().err
    assert main(["evaluate", str(moved / "run" / "last.pt"), "--no-figures", "--split", str(moved / "split.json")]) == 0
    capsys.readouterr()
    # the training data is not where training read it
    shutil.rmtree(moved / "data")
    assert main(["export", str(moved / "run" / "last.pt"), *base]) == 3
    assert "which is not here" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_checkpoint_split_rebuilds_the_recorded_sets_and_links_them(run: dict[str, Path], tmp_path: Path) -> None:
    from training.models import load_checkpoint
    from training.splits import checkpoint_split, link_image_folders, read_split

    _, meta = load_checkpoint(run["ckpt"])
    train, val, where = checkpoint_split(meta)
    doc = read_split(run["split"])
    assert [[p, train.labels[y]] for p, y in train.items] == doc["train"]
    assert [[p, val.labels[y]] for p, y in val.items] == doc["val"]
    assert where == f"split {run['split']} of {run['data']}"
    linked = link_image_folders({"train": train, "val": val}, tmp_path)
    for name, images in (("train", train), ("val", val)):
        files = sorted(linked[name].rglob("*.jpg"))
        assert len(files) == len(images)
        assert sorted(f.resolve() for f in files) == sorted((images.root / p).resolve() for p, _ in images.items)
        assert all(f.parent.name == images.labels[dict(images.items)[f.name.replace("__", "/")]] for f in files)


def test_export_finds_the_split_of_a_run_trained_with_relative_paths(run: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch) -> None:
    from edge_app.cli import main

    monkeypatch.chdir(run["root"])
    assert main(["train", "--data", "data", "--split", "split.json", "--model", "tiny", "--out", "rel",
                 "--epochs", "1", "--batch-size", "8", "--image-size", "32"]) == 0
    monkeypatch.chdir(tmp_path)  # elsewhere: "data" and "split.json" mean nothing here
    assert main(["export", str(run["root"] / "rel" / "last.pt"), "--format", "onnx-fp32", "--out", "o"]) == 0
    side = json.loads((tmp_path / "o" / "tiny-onnx-fp32.onnx.json").read_text())
    assert side["parity"]["source"] == f"val images of the split {run['split']} of {run['data']}"

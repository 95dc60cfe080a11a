"""The shared benchmark steps run end to end on a tiny stand-in for pc-parts-14 (and resume)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.runner import BenchContext
from training import benchutil
from training.splits import make_split, write_split

from .conftest import make_folder


@pytest.mark.slow
def test_pcparts_benchmark_flow(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "datasets"
    root = make_folder(data / "pc-parts-14", per_class=10)
    splits = tmp_path / "repo" / "training" / "splits"
    write_split(make_split(root, val_fraction=0.2, seed=0), splits / "pc-parts-14.json")
    monkeypatch.setattr(benchutil, "SPLITS_DIR", splits)
    ctx = BenchContext(name="t", work_dir=tmp_path / "work", data=data)
    res = benchutil.pcparts_benchmark(ctx, "tiny", 0.5, image_size=32, epochs=2, batch_size=8, cache=True)
    assert res["val_images_in_split"] == res["val_images_evaluated"] == 6
    assert res["split_file"] == "training/splits/pc-parts-14.json" and len(res["split_sha256"]) == 64
    assert res["errors"] == round((1 - res["top1"]) * 6)
    assert Path(res["checkpoint"]).is_file() and len(res["history"]) == 2
    json.dumps(res)
    # a second call resumes from the recorded steps (no retraining)
    state = json.loads(ctx.state_path.read_text())
    assert {"train", "evaluate"} <= set(state)
    ctx2 = BenchContext(name="t", work_dir=tmp_path / "work", data=data)
    ctx2.load_state()
    monkeypatch.setattr("training.train.train", lambda *a, **k: pytest.fail("retrained"))
    assert benchutil.pcparts_benchmark(ctx2, "tiny", 0.5, image_size=32, epochs=2, batch_size=8)["top1"] == res["top1"]

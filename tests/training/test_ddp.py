"""DDP: two CPU processes on gloo train one model in lockstep."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import make_folder


def _worker(cfg: dict, result_dir: str) -> None:
    import os

    import torch

    from training.config import TrainConfig
    from training.train import train

    torch.set_num_threads(1)
    res = train(TrainConfig(**cfg))
    digest = hashlib.sha256()
    for k, v in sorted(res.model.named_parameters()):  # BN buffers are rank-local between broadcasts
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    rank = os.environ["RANK"]
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"digest": digest.hexdigest(),
                                                                 "history": len(res.history)}))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_two_process_gloo(tmp_path: Path) -> None:
    from training.ddp import launch

    data = make_folder(tmp_path / "data", per_class=12)
    out = tmp_path / "run"
    cfg = dict(data=str(data), out=str(out), model="tiny", epochs=1, batch_size=6, pk_k=3, lr=3e-3, image_size=32,
               progress=False, device="cpu")
    launch(_worker, 2, cfg, str(tmp_path))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["digest"] == r1["digest"], "ranks diverged: gradients were not all-reduced"
    conf = json.loads((out / "config.json").read_text())
    assert conf["world_size"] == 2
    assert (out / "best.pt").is_file() and r0["history"] == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_skips_a_batch_with_no_readable_image_on_every_process(tmp_path: Path) -> None:
    """Found by an audit: one process skipped a batch whose images were all unreadable, the other waited in
    backward's all-reduce forever (the run hung)."""
    from training.ddp import launch

    data = make_folder(tmp_path / "data", per_class=24)
    for k in range(3):  # a third of each class unreadable: some batches keep fewer than 2 readable images
        for f in sorted((data / f"c{k}").iterdir())[::3]:
            f.write_bytes(b"broken")
    out = tmp_path / "run"
    cfg = dict(data=str(data), out=str(out), model="tiny", epochs=1, batch_size=3, lr=3e-3, image_size=32,
               progress=False, device="cpu", sampler="random", val_fraction=0.25)
    launch(_worker, 2, cfg, str(tmp_path))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["digest"] == r1["digest"] and r0["history"] == 1
    row = json.loads((out / "metrics.json").read_text())["history"][0]
    assert row["skipped_steps"] >= 1 and row["train_images"] > 0

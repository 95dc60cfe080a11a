"""Training runs on tiny generated images: loss goes down, run folder, resume, distillation, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_app.errors import UsageError
from training.config import TrainConfig
from training.models import load_checkpoint
from training.train import lr_factor, train


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="tiny", epochs=2, batch_size=8, lr=3e-3, image_size=32,
                warmup_epochs=0.5, seed=0, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_two_epochs_lower_loss_and_write_run_folder(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train(_cfg(tiny_folder, out, epochs=3))
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    for name in ("config.json", "last.pt", "best.pt", "metrics.json", "split.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["model"] == "tiny" and cfg["git_sha"]
    assert cfg["split"]["source"] == "generated" and len(cfg["split"]["sha256"]) == 64
    assert cfg["n_train"] + cfg["n_val"] == 48
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and 0 <= metrics["best_val_top1"] <= 1
    model, meta = load_checkpoint(out / "best.pt")
    assert meta["labels"] == ["c0", "c1", "c2"] and meta["epoch"] == metrics["best_epoch"]
    assert model.preprocess.size == (32, 32)
    with pytest.raises(UsageError, match="already holds a run"):
        train(_cfg(tiny_folder, out))


def test_resume_continues_from_last_epoch(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import training.train as T

    out = tmp_path / "run"
    real_barrier = T.ddp.barrier

    def killed(info):  # the process dies right after epoch 0 was checkpointed
        raise KeyboardInterrupt

    monkeypatch.setattr(T.ddp, "barrier", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_folder, out, epochs=2))
    monkeypatch.setattr(T.ddp, "barrier", real_barrier)
    _, meta = load_checkpoint(out / "last.pt")
    assert meta["epoch"] == 0
    stale = out / ".last.pt.k1ll3d.tmp"  # what a kill between writing and renaming a checkpoint leaves
    stale.write_bytes(b"x" * 1000)
    resumed = train(_cfg(tiny_folder, out, epochs=2, resume=True))
    assert not stale.exists()
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    _, meta = load_checkpoint(out / "last.pt")
    assert meta["epoch"] == 1
    # the resumed run equals an uninterrupted one (same data order, RNG, optimizer and schedule)
    straight = train(_cfg(tiny_folder, tmp_path / "straight", epochs=2))
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-4)
    assert resumed.history[1]["val_top1"] == straight.history[1]["val_top1"]
    # a longer run may continue; other changed options are refused
    longer = train(_cfg(tiny_folder, out, epochs=3, resume=True))
    assert [h["epoch"] for h in longer.history] == [0, 1, 2]
    with pytest.raises(UsageError, match="changed option"):
        train(_cfg(tiny_folder, out, epochs=4, lr=1e-2, resume=True))
    # a batch larger than the data: named as the changed option it is (was "fewer than one batch")
    with pytest.raises(UsageError, match=r"changed option\(s\) \['batch_size'\]"):
        train(_cfg(tiny_folder, out, epochs=4, batch_size=10_000, resume=True))
    with pytest.raises(UsageError, match="nothing to resume"):
        train(_cfg(tiny_folder, tmp_path / "empty", resume=True))


def test_resume_keeps_a_best_pt_written_just_before_the_kill(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """best.pt is written before last.pt: a kill between them must not let the re-run epoch overwrite it
    with a worse model."""
    import training.models as M

    out = tmp_path / "run"
    real_save = M.save_checkpoint

    def killed_between(path, model, labels, metrics=None, epoch=0, extra=None):
        if Path(path).name == "last.pt" and epoch == 1:
            # epoch 1's best.pt (here with a score no re-run can beat) is on disk; the kill comes before last.pt
            real_save(Path(path).with_name("best.pt"), model, labels, metrics, epoch,
                      {**(extra or {}), "best_top1": 2.0, "best_epoch": 1})
            raise KeyboardInterrupt
        return real_save(path, model, labels, metrics, epoch, extra)

    monkeypatch.setattr(M, "save_checkpoint", killed_between)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_folder, out, epochs=2))
    monkeypatch.setattr(M, "save_checkpoint", real_save)
    assert load_checkpoint(out / "last.pt")[1]["epoch"] == 0
    resumed = train(_cfg(tiny_folder, out, epochs=2, resume=True))
    assert (resumed.best_epoch, resumed.best_top1) == (1, 2.0)  # the saved best stands: the re-run did not beat it
    _, meta = load_checkpoint(out / "best.pt")
    assert meta["epoch"] == 1 and meta["extra"]["best_top1"] == 2.0
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 1
    # a best.pt older than last.pt changes nothing (the usual case): last.pt's record is used
    from training.train import _best_saved_after

    assert _best_saved_after(out / "best.pt", 1, 0.5, 0) == (0.5, 0)
    assert _best_saved_after(tmp_path / "none.pt", 0, 0.5, 0) == (0.5, 0)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert _best_saved_after(tmp_path / "junk.pt", 0, 0.5, 0) == (0.5, 0)


def test_distillation_and_options(tiny_folder: Path, tmp_path: Path) -> None:
    teacher = train(_cfg(tiny_folder, tmp_path / "teacher", epochs=1, embed_dim=32))
    res = train(_cfg(tiny_folder, tmp_path / "student", model="vit", epochs=1, embed_dim=32, teacher=str(teacher.best),
                     model_options={"patch": 8, "vit_dim": 32, "vit_depth": 1, "vit_heads": 2},
                     metric_loss="triplet", grad_clip=1.0, label_smoothing=0.1, sampler="random",
                     split=str(tmp_path / "teacher" / "split.json")))
    assert res.history[0]["train_kd"] > 0
    with pytest.raises(UsageError, match="embedding dim"):
        train(_cfg(tiny_folder, tmp_path / "bad", embed_dim=16, teacher=str(teacher.best)))
    # resuming with another file at the teacher's path is refused (paths alone were compared; an audit)
    other = train(_cfg(tiny_folder, tmp_path / "teacher2", epochs=1, embed_dim=32, seed=3,
                       split=str(tmp_path / "teacher" / "split.json")))
    import shutil

    shutil.copy(other.best, teacher.best)
    with pytest.raises(UsageError, match="is not the file the run started with"):
        train(_cfg(tiny_folder, tmp_path / "student", model="vit", epochs=2, embed_dim=32, teacher=str(teacher.best),
                   model_options={"patch": 8, "vit_dim": 32, "vit_depth": 1, "vit_heads": 2},
                   metric_loss="triplet", grad_clip=1.0, label_smoothing=0.1, sampler="random",
                   split=str(tmp_path / "teacher" / "split.json"), resume=True))


def test_unreadable_training_image_is_skipped(tiny_folder: Path, tmp_path: Path) -> None:
    (tiny_folder / "c0" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "run"
    res = train(_cfg(tiny_folder, out, epochs=1, cache=True))
    cfg = json.loads((out / "config.json").read_text())
    skipped = [p for p, _ in cfg["skipped_train"]]
    val_skipped = res.history[0]["val_skipped"]
    assert skipped == ["c0/broken.jpg"] or val_skipped == 1
    # without --cache the images are read while training: the run records them after its first epoch too
    out2 = tmp_path / "run2"
    res2 = train(_cfg(tiny_folder, out2, epochs=2))
    cfg2 = json.loads((out2 / "config.json").read_text())
    in_train = [p for p, _ in cfg2["skipped_train"]] == ["c0/broken.jpg"]
    assert in_train != (res2.history[0]["val_skipped"] == 1)  # recorded on exactly the side it is on


def test_bad_options_are_errors(tiny_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        train(_cfg(tiny_folder, tmp_path / "r", epochs=0))
    with pytest.raises(UsageError, match="freezable"):
        train(_cfg(tiny_folder, tmp_path / "r", freeze_stages=9))
    with pytest.raises(UsageError, match="augmentation"):
        train(_cfg(tiny_folder, tmp_path / "r", augment={"sparkle": 1}))


def test_lr_schedule_warmup_then_cosine() -> None:
    vals = [lr_factor(s, 100, 10) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[9:], vals[10:])) and vals[-1] < 0.01


def test_train_cli(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    from edge_app.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--data", str(tiny_folder), "--model", "tiny", "--out", str(out), "--epochs", "1",
               "--batch-size", "8", "--image-size", "32"])
    assert rc == 0 and (out / "best.pt").is_file()
    assert json.loads(capsys.readouterr().out)["best_epoch"] == 0
    assert main(["train", "--data", str(tiny_folder), "--model", "nope", "--out", str(tmp_path / "x")]) == 2


def test_backbone_lr_multiplier(tiny_folder: Path, tmp_path: Path) -> None:
    from training.models import read_checkpoint

    train(_cfg(tiny_folder, tmp_path / "run", epochs=1, backbone_lr_mult=0.1, warmup_epochs=0))
    groups = read_checkpoint(tmp_path / "run" / "last.pt")["extra"]["optimizer"]["param_groups"]
    assert len(groups) == 2
    assert groups[0]["initial_lr"] == pytest.approx(3e-4) and groups[1]["initial_lr"] == pytest.approx(3e-3)
    with pytest.raises(UsageError, match="multiplier"):
        train(_cfg(tiny_folder, tmp_path / "bad", backbone_lr_mult=0))


def test_gallery_repeats_train_on_catalogue_images_and_record_it(tmp_path: Path) -> None:
    from .test_data_eval import _write_grocery

    root = tmp_path / "g"
    _write_grocery(root)
    res = train(_cfg(root, tmp_path / "run", epochs=1, batch_size=4, gallery_repeats=3, sampler="random"))
    cfg = json.loads((res.out_dir / "config.json").read_text())
    assert cfg["n_train"] == 6 + 2 * 3 and cfg["n_val"] == 4
    assert cfg["split"]["gallery"]["gallery_images"] == 2 and cfg["gallery_repeats"] == 3
    with pytest.raises(UsageError, match="catalogue images"):
        train(_cfg(tiny_folder_path(tmp_path), tmp_path / "run2", gallery_repeats=1))
    with pytest.raises(UsageError, match="gallery repeats"):
        train(_cfg(root, tmp_path / "run3", gallery_repeats=-1))
    with pytest.raises(UsageError, match="gallery_repeats >= 1"):
        train(_cfg(root, tmp_path / "run4", sampler="pk_catalogue"))


def test_pk_catalogue_sampler_trains_on_photos_led_by_catalogue_images(tmp_path: Path) -> None:
    from .test_data_eval import _write_grocery

    root = tmp_path / "g"
    _write_grocery(root)
    res = train(_cfg(root, tmp_path / "run", epochs=1, batch_size=4, gallery_repeats=2, sampler="pk_catalogue",
                     pk_k=2))
    cfg = json.loads((res.out_dir / "config.json").read_text())
    assert cfg["sampler"] == "pk_catalogue" and cfg["n_train"] == 6 + 2 * 2
    assert (res.out_dir / "last.pt").is_file()


def tiny_folder_path(tmp_path: Path) -> Path:
    from .conftest import make_folder

    return make_folder(tmp_path / "folder")


def test_non_finite_and_negative_loss_options_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    for kw, what in ((dict(lr=float("nan")), "lr must be a finite"), (dict(weight_decay=float("inf")), "weight decay"),
                     (dict(kd_temperature=0.0), "temperature must be > 0"), (dict(kd_weight=-5.0), "distillation"),
                     (dict(metric_weight=-1.0), "metric weight"), (dict(grad_clip=float("nan")), "grad clip")):
        with pytest.raises(UsageError, match=what):
            train(_cfg(tiny_folder, tmp_path / "r", **kw))


def test_a_diverged_run_stops_with_a_clear_error_and_saves_no_nan_model(tiny_folder: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    import torch.nn.functional as F

    from edge_app.errors import TrainingError

    real_ce, calls = F.cross_entropy, []

    def diverging(*a, **k):  # the loss turns NaN at the 7th step (epoch 2 of 2: epoch 1 was saved)
        calls.append(1)
        loss = real_ce(*a, **k)
        return loss * float("nan") if len(calls) >= 7 else loss

    monkeypatch.setattr(F, "cross_entropy", diverging)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="training diverged: the loss is nan at epoch 2"):
        train(_cfg(tiny_folder, out, epochs=2))
    _, meta = load_checkpoint(out / "last.pt")
    assert meta["epoch"] == 0  # the last good checkpoint stays; nothing from the NaN epoch
    with pytest.raises(UsageError, match="at most 10"):
        train(_cfg(tiny_folder, out, lr=1e39))  # would overflow float32 weights at the first update


def test_weights_gone_nan_at_an_epochs_last_step_are_never_saved(tiny_folder: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The loss of the step that poisons the weights is still finite; the check before saving catches it."""
    import torch

    from edge_app.errors import TrainingError

    real_step = torch.optim.AdamW.step

    def poisoned(self, *a, **k):
        out = real_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[-1]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(TrainingError, match="weights hold NaN"):
        train(_cfg(tiny_folder, tmp_path / "one", epochs=1, batch_size=24, val_fraction=0.5))
    assert not (tmp_path / "one" / "best.pt").exists() and not (tmp_path / "one" / "last.pt").exists()


def test_no_readable_validation_image_is_an_error(tiny_folder: Path, tmp_path: Path) -> None:
    from edge_app.errors import InputError
    from training.splits import make_split, write_split

    doc = make_split(str(tiny_folder), val_fraction=0.25, seed=0)
    write_split(doc, tmp_path / "split.json")
    for rel, _label in doc["val"]:
        (tiny_folder / rel).write_bytes(b"broken")  # every val image unreadable
    with pytest.raises(InputError, match="none of the .* validation images could be read"):
        train(_cfg(tiny_folder, tmp_path / "run", epochs=1, split=str(tmp_path / "split.json")))


def test_a_fresh_run_does_not_reuse_the_split_a_failed_start_left(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(UsageError):
        train(_cfg(tiny_folder, out, val_fraction=0.5, model="nosuch"))  # fails after writing split.json
    assert (out / "split.json").is_file()
    res = train(_cfg(tiny_folder, out, epochs=1, val_fraction=0.25, seed=3))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_val"] == 12 and res.history[0]["val_n"] == 12  # 25% of 48, not the stale 50%


def test_resume_refuses_a_changed_split_and_a_non_training_checkpoint(tiny_folder: Path, tmp_path: Path) -> None:
    import shutil

    from edge_app.errors import IntegrityError
    from training.splits import make_split, write_split

    split = tmp_path / "split.json"
    write_split(make_split(str(tiny_folder), val_fraction=0.25, seed=0), split)
    out = tmp_path / "run"
    train(_cfg(tiny_folder, out, epochs=1, split=str(split)))
    # the same paths spelled differently resume; a moved run folder resumes too
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    res = train(_cfg(str(tiny_folder) + "/.", moved, epochs=2, split=str(split), resume=True))
    assert [h["epoch"] for h in res.history] == [0, 1]
    write_split(make_split(str(tiny_folder), val_fraction=0.5, seed=5), split)  # the split file changed
    with pytest.raises(IntegrityError, match="split changed since the run started"):
        train(_cfg(tiny_folder, out, epochs=2, split=str(split), resume=True))
    shutil.copy(out / "best.pt", out / "last.pt")  # a best.pt copied over last.pt: no optimizer state
    write_split(make_split(str(tiny_folder), val_fraction=0.25, seed=0), split)
    with pytest.raises(IntegrityError, match="not a resumable training checkpoint"):
        train(_cfg(tiny_folder, out, epochs=2, split=str(split), resume=True))


def test_training_audit_faults(tiny_folder: Path, tmp_path: Path) -> None:
    """Found by an audit of `partlens train` by experiment."""
    from edge_app.errors import InputError
    from training.evaluate import evaluate_checkpoint
    from training.train import _lock_out

    # options that could not work are refused before anything runs
    for bad, msg in ((dict(seed=-1), "seed must be"), (dict(seed=2**32), "seed must be"),
                     (dict(kd_weight=2.0), "need --teacher")):
        with pytest.raises(UsageError, match=msg):
            train(_cfg(tiny_folder, tmp_path / "opts", **bad))
    # an empty validation side is refused before the first epoch (it was after one, with a misleading message)
    with pytest.raises(UsageError, match="validation side is empty"):
        train(_cfg(tiny_folder, tmp_path / "noval", val_fraction=0.01))
    assert not (tmp_path / "noval" / "metrics.json").exists()

    out = tmp_path / "run"
    train(_cfg(tiny_folder, out, epochs=2))
    # resuming with fewer epochs than done was a silent no-op that rewrote config.json
    with pytest.raises(UsageError, match="has done 2 epochs"):
        train(_cfg(tiny_folder, out, epochs=1, resume=True))
    res = train(_cfg(tiny_folder, out, epochs=3, resume=True))
    conf = json.loads((out / "config.json").read_text())
    assert len(res.history) == 3 and "git_sha_started" in conf
    # a finished run without its last.pt (deleted to save space) is not overwritten by a new run
    (out / "last.pt").unlink()
    with pytest.raises(UsageError, match=r"already holds a run \(best.pt, metrics.json\); it cannot be resumed "
                                         r"\(no last.pt.*delete best.pt and metrics.json to start over"):
        train(_cfg(tiny_folder, out, epochs=1))
    # ...and --resume says the same way out (an audit: a full disk left best.pt alone, and both refusals
    # pointed at each other)
    with pytest.raises(UsageError, match=r"nothing to resume \(no last.pt\) and its best.pt cannot be continued"):
        train(_cfg(tiny_folder, out, epochs=3, resume=True))
    assert conf["git_dirty"] in (True, False, None)
    # a second run on a folder another run is writing is refused (they mixed their files before)
    busy = tmp_path / "busy"
    held = _lock_out(busy)
    try:
        with pytest.raises(UsageError, match="another training run is writing this folder"):
            train(_cfg(tiny_folder, busy, epochs=1))
    finally:
        held.close()
    # evaluate with no readable validation image: an error, not NaN scores with exit 0
    split = json.loads((out / "split.json").read_text())
    for rel, _label in split["val"]:
        (tiny_folder / rel).write_bytes(b"broken")
    with pytest.raises(InputError, match="none of the .* validation images could be read"):
        evaluate_checkpoint(out / "best.pt", str(tiny_folder), split=str(out / "split.json"), out=tmp_path / "ev",
                            figures=False)


def test_a_batch_with_one_readable_image_is_skipped_not_a_crash(tiny_folder: Path, tmp_path: Path) -> None:
    """BatchNorm cannot train on one image: such a batch (the others unreadable) crashed the run."""
    for k in range(3):
        for f in sorted((tiny_folder / f"c{k}").iterdir())[:8]:
            f.write_bytes(b"broken")
    res = train(_cfg(tiny_folder, tmp_path / "run", epochs=1, batch_size=2, sampler="random", val_fraction=0.25))
    assert res.history[0]["skipped_steps"] >= 1 and res.history[0]["train_images"] > 0


def test_vit_options_are_checked_and_freezing_takes_the_position_embedding(tmp_path: Path) -> None:
    from training.models import create_model

    for opt in ({"vit_depth": 0}, {"vit_depth": "abc"}, {"vit_dim": 1.5}, {"vit_heads": 0}, {"patch": 0}):
        with pytest.raises(UsageError, match="must be a whole number >= 1"):
            create_model("vit", 3, pretrained=False, image_size=32, **{"patch": 8, **opt})
    m = create_model("vit", 3, pretrained=False, image_size=32, patch=8, vit_dim=16, vit_depth=2, vit_heads=2)
    m.freeze_stages(1)
    assert not m.backbone.pos_embed.requires_grad and m.backbone.norm.weight.requires_grad
    m.freeze_stages(len(m.stages()))
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert "pos_embed" in dict(m.backbone.named_parameters())  # state-dict keys unchanged


def test_a_class_of_only_unreadable_images_is_refused_before_training(tiny_folder: Path, tmp_path: Path) -> None:
    """It trained on the other classes and reported val top-1 0.0 for it, without a word (an audit)."""
    for f in (tiny_folder / "c0").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(UsageError, match=r"no training image for 1 class\(es\): c0"):
        train(_cfg(tiny_folder, tmp_path / "run", epochs=1))
    assert not (tmp_path / "run" / "metrics.json").exists()

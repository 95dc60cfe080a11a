"""The training loop: ``train(TrainConfig) -> RunResult``.

Loss = cross-entropy (optional label smoothing) + ``metric_weight`` x metric loss on the
L2-normalised embedding (+ distillation from a teacher checkpoint). AdamW with linear warmup and
a per-step cosine schedule. Mixed precision on CUDA, fp32 on CPU. DDP when launched by torchrun
(or :func:`training.ddp.launch`). The run folder holds ``config.json`` (resolved, git SHA, seed,
split), ``last.pt``, ``best.pt`` and ``metrics.json``; ``resume=True`` continues from ``last.pt``.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.atomic import atomic_write_json
from edge_app.errors import InputError, IntegrityError, TrainingError, UsageError

from . import ddp
from .config import RESUMABLE_CHANGES, TrainConfig
from .gitinfo import git_dirty, git_sha
from .data import ImageSet, load_dataset

log = logging.getLogger(__name__)

#: Without a progress bar (not a TTY), log the running loss every this many steps.
LOG_EVERY = 20


@dataclass
class RunResult:
    out_dir: Path
    last: Path
    best: Path
    best_epoch: int
    best_top1: float
    history: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)  # the trained PartModel (last epoch), in memory


def resolve_split(cfg: TrainConfig, out: Path, is_main: bool) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    """(train, val, split info): a split file, the layout's own split, or a fresh duplicate-aware split."""
    from .splits import file_sha256, load_split, make_split, write_split, apply_split

    ds = load_dataset(cfg.data, cfg.layout)
    if cfg.split:
        s = load_split(cfg.split, cfg.data)
        return s.train, s.val, {"source": "file", "path": str(Path(cfg.split).resolve()), "sha256": s.sha256,
                                "file_sha256": file_sha256(cfg.split)}
    if ds.train is not None and ds.val is not None:
        return ds.train, ds.val, {"source": f"{ds.layout} layout (train/val lists)"}
    path = out / "split.json"
    if cfg.resume and path.exists():  # a resumed run keeps its split
        s = load_split(path, cfg.data)
        return s.train, s.val, {"source": "run folder", "path": str(path.resolve()), "sha256": s.sha256}
    if path.exists():  # left by a start that never finished an epoch (no last.pt): this run's options decide
        log.info("%s: replacing the split left by a run that did not finish its first epoch", path)
    doc = make_split(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if is_main:
        write_split(doc, path)
    train, val = apply_split(doc, ds.images, str(path))
    return train, val, {"source": "generated", "path": str(path.resolve()), "sha256": doc["sha256"]}


def _add_gallery(cfg: TrainConfig, train_set: ImageSet, val_set: ImageSet) -> tuple[ImageSet, dict[str, int]]:
    """``train_set`` plus the layout's catalogue images (``cfg.gallery_repeats`` times; never val images)."""
    from .data import with_gallery

    gallery = load_dataset(cfg.data, cfg.layout).gallery
    if gallery is None:
        raise UsageError(f"{cfg.data}: --gallery-repeats needs a layout with catalogue images (grocery or parts)")
    out, counts = with_gallery(train_set, gallery, cfg.gallery_repeats, exclude=val_set)
    log.info("training also on %d catalogue images x %d (%d left out: in val)", counts["gallery_images"],
             cfg.gallery_repeats, counts["gallery_left_out_in_val"])
    return out, counts


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 over the remaining steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class TeacherAdapter:
    """Runs a teacher checkpoint on the student's input batch (re-normalised / resized to the teacher's spec)."""

    def __init__(self, path: str, student_spec, labels: list[str], embed_dim: int, device: str) -> None:
        import torch

        from .models import load_checkpoint

        self.model, meta = load_checkpoint(path)
        if meta["labels"] != labels:
            raise UsageError(f"teacher {path}: its labels differ from the training data's")
        if self.model.embed_dim != embed_dim:
            raise UsageError(f"teacher {path}: embedding dim {self.model.embed_dim} != student {embed_dim}")
        ts = self.model.preprocess
        if ts.resize != student_spec.resize:
            raise UsageError(f"teacher {path}: resize mode {ts.resize!r} differs from the student's "
                             f"{student_spec.resize!r}")
        self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)  # noqa: E731
        self.s_mean, self.s_std, self.t_mean, self.t_std = (t(student_spec.mean), t(student_spec.std), t(ts.mean),
                                                            t(ts.std))
        self.size = tuple(ts.size)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            rgb = x * self.s_std + self.s_mean
            if tuple(rgb.shape[-2:]) != self.size:
                rgb = F.interpolate(rgb, size=self.size, mode="bilinear", align_corners=False)
            return self.model((rgb - self.t_mean) / self.t_std)


#: the run folder's files written atomically (``.<name>.<random>.tmp`` first): a kill leaves such a temp file
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "config.json", "split.json")


def _classes_with_a_readable_image(images: ImageSet) -> set[int]:
    """Class indices with at least one training image whose header Pillow reads (about 0.1 ms an image): a class
    of only broken files used to train as if absent, without a word (an audit). Unreadable files are still
    skipped, and reported, as training reads them."""
    from edge_app.imageio import header_error

    found: set[int] = set()
    for i, (_rel, y) in enumerate(images.items):
        if y not in found and header_error(images.path(i)) is None:
            found.add(y)
    return found


def _remove_stale_temp_files(out: Path) -> None:
    """Delete temp files a killed run left (a checkpoint-sized ``.last.pt.*.tmp``); only one run writes a folder."""
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            size = tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            log.info("removed %s (%d bytes) left by a run that was stopped mid-write", tmp.name, size)


def _prepare_out(cfg: TrainConfig, out: Path) -> None:
    last = out / "last.pt"
    if cfg.resume and not last.is_file():
        # (a run stopped while saving its first epoch, e.g. a full disk, leaves best.pt alone: say what to do)
        hint = (" and its best.pt cannot be continued: delete it to start over, or choose another --out"
                if (out / "best.pt").is_file() else "")
        raise UsageError(f"{out}: nothing to resume (no last.pt){hint}")
    held = [n for n in ("last.pt", "best.pt", "metrics.json") if (out / n).exists()]
    if not cfg.resume and held:  # best.pt alone too: last.pt is often deleted to save space once a run is done
        how = ("pass --resume to continue it" if last.is_file() else
               "it cannot be resumed (no last.pt: it stopped while saving, or last.pt was deleted); delete "
               f"{' and '.join(held)} to start over")
        raise UsageError(f"{out} already holds a run ({', '.join(held)}); {how}, or choose another --out")


def _lock_out(out: Path) -> Any:
    """Hold ``out/.train.lock`` while this run writes the folder (released when the returned file is closed or
    the process ends): a second run started on the same --out is refused instead of mixing its checkpoints,
    config and split with the first's. No lock where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".train.lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UsageError(f"{out}: another training run is writing this folder; wait for it or choose another "
                         "--out") from None
    except OSError as exc:  # a file system without flock (some network mounts): train without the guard
        log.warning("%s: cannot lock the run folder (%s); make sure no other run writes it", out, exc)
    return fh


#: options that name files: compared as resolved paths on resume (``./runs/a`` is ``runs/a``)
PATH_OPTIONS = ("data", "split", "teacher", "weights")


def _same_option(key: str, saved: Any, now: Any) -> bool:
    if key in PATH_OPTIONS and isinstance(saved, str) and isinstance(now, str) and saved and now:
        return Path(saved).expanduser().resolve() == Path(now).expanduser().resolve()
    return saved == now


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    now = cfg.to_dict()
    # options added after the run started count as their defaults
    defaults = TrainConfig(data="", out="").to_dict()
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES
                  and not _same_option(k, saved.get(k, defaults[k]), now[k]))
    if diff:
        raise UsageError(f"{out}: cannot resume with changed option(s) {diff}; "
                         f"only {sorted(RESUMABLE_CHANGES)} may change")


def _best_saved_after(best_path: Path, last_epoch: int, best_top1: float, best_epoch: int) -> tuple[float, int]:
    """The best score to beat on resume: ``best.pt`` is written before ``last.pt``, so a run killed between
    the two leaves a ``best.pt`` from an epoch ``last.pt`` does not know. Its score stands (the re-run of that
    epoch replaces it only by beating it), instead of being overwritten by a worse model."""
    from .models import read_checkpoint

    if not best_path.exists():
        return best_top1, best_epoch
    try:
        saved = read_checkpoint(best_path)
        epoch, top1 = int(saved["epoch"]), float(saved["extra"]["best_top1"])
    except (IntegrityError, OSError, KeyError, TypeError, ValueError) as exc:  # replaced by the next best, as before
        log.warning("%s: cannot read its score (%s); the next best epoch replaces it", best_path, exc)
        return best_top1, best_epoch
    if epoch > last_epoch and top1 > best_top1:
        log.warning("%s is from epoch %d (val top-1 %.4f), saved after last.pt (epoch %d) when the run stopped; "
                    "it stays unless a resumed epoch beats it", best_path, epoch + 1, top1, last_epoch + 1)
        return top1, epoch
    return best_top1, best_epoch


def train(cfg: TrainConfig, train_set: ImageSet | None = None, val_set: ImageSet | None = None) -> RunResult:
    """Train (or resume) one run; see the module docstring.

    ``train_set``/``val_set`` (library use, e.g. class-subset folds) replace the split that
    ``cfg.data``/``cfg.split`` would give; both or neither.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .allocator import tune_for_torch
    from .augment import AugmentConfig, TrainTransform
    from .data import TorchImageDataset, collate_skip
    from .losses import distillation_loss, make_metric_loss
    from .metrics import classification_metrics
    from .models import create_model, read_checkpoint, save_checkpoint
    from .predict import predict
    from .sampler import BatchSampler

    cfg.validate()
    tune_for_torch()
    aug = AugmentConfig.from_dict(cfg.augment)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda requested but no CUDA device is available")
    device_type = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    dist = ddp.setup(device_type)
    device = f"cuda:{dist.local_rank}" if device_type == "cuda" else "cpu"
    out = Path(cfg.out)
    _prepare_out(cfg, out)
    run_lock = _lock_out(out) if dist.is_main else None  # noqa: F841 - held until train() returns
    if dist.is_main:
        _prepare_out(cfg, out)  # again under the lock: a run that started meanwhile has written it
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed + dist.rank)

    if (train_set is None) != (val_set is None):
        raise UsageError("pass both train_set and val_set, or neither")
    if train_set is not None and val_set is not None:
        if train_set.labels != val_set.labels:
            raise UsageError("train_set and val_set must share one label list")
        split_info = {"source": "caller", "train": train_set.name, "val": val_set.name}
    else:
        train_set, val_set, split_info = resolve_split(cfg, out, dist.is_main)
        have = _classes_with_a_readable_image(train_set)
        empty = [lab for i, lab in enumerate(train_set.labels) if i not in have]
        if empty:
            raise UsageError(f"no training image for {len(empty)} class(es): {', '.join(empty[:10])}"
                             f"{' ...' if len(empty) > 10 else ''}; the split put all their images in validation "
                             "(near-duplicates stay on one side) or they are unreadable: add photos or change the split")
    if not len(val_set):  # before any training: epochs are judged on it
        raise UsageError(f"the validation side is empty ({len(train_set)} training images, --val "
                         f"{cfg.val_fraction}): raise --val or add images")
    n_photos = len(train_set.items)
    if cfg.gallery_repeats:
        train_set, split_info["gallery"] = _add_gallery(cfg, train_set, val_set)
    catalogue_flags = [i >= n_photos for i in range(len(train_set.items))]  # with_gallery appends them
    labels = train_set.labels
    # a resumed run takes every weight from last.pt, so it needs no ImageNet file
    model = create_model(cfg.model, len(labels), embed_dim=cfg.embed_dim, pretrained=cfg.pretrained and not cfg.resume,
                         weights=cfg.weights, image_size=cfg.image_size, resize=cfg.resize, **cfg.model_options)
    if cfg.freeze_stages:
        model.freeze_stages(cfg.freeze_stages)
    model.to(device)
    spec = model.preprocess
    params = [p for p in model.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups = [{"params": [p for p in params if id(p) in backbone_ids], "lr": cfg.lr * cfg.backbone_lr_mult},
              {"params": [p for p in params if id(p) not in backbone_ids], "lr": cfg.lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)

    # a resumed run's options are compared first: a changed --batch-size is named as such (not as "fewer images
    # than one batch" from the sampler), before the data is loaded and cached
    ck = read_checkpoint(out / "last.pt") if cfg.resume else None
    if ck is not None:
        _check_resume_config(ck.get("extra", {}).get("train_config", {}), cfg, out)
    show = (sys.stderr.isatty() if cfg.progress is None else cfg.progress) and dist.is_main
    train_ds = TorchImageDataset(train_set, spec, TrainTransform(spec, aug), cache=cfg.cache, progress=show)
    sampler = BatchSampler([y for _, y in train_ds.items], cfg.batch_size, mode=cfg.sampler, k=cfg.pk_k,
                           seed=cfg.seed, rank=dist.rank, world=dist.world,
                           catalogue=[catalogue_flags[j] for j in train_ds.source_index])  # after the cache's drops
    # workers draw their seeds from this generator when an epoch's iteration starts: seeded per epoch (not
    # persistent workers that carry their RNG on), a resumed run augments each epoch as the straight run did
    worker_seeds = torch.Generator()
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_skip,
                        generator=worker_seeds)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup))

    history: list[dict[str, Any]] = []
    start_epoch, best_top1, best_epoch = 0, -1.0, -1
    from edge_app.bundle import sha256_file

    teacher_sha = sha256_file(cfg.teacher) if cfg.teacher and Path(cfg.teacher).is_file() else None
    if ck is not None:
        extra = ck.get("extra", {})
        if ck["labels"] != labels:
            raise IntegrityError(f"{out / 'last.pt'}: labels differ from the data's")
        was = (extra.get("split") or {}).get("sha256")
        if was and split_info.get("sha256") and was != split_info["sha256"]:
            raise IntegrityError(f"{out}: the train/val split changed since the run started (sha256 {was[:12]}... "
                                 f"then, {split_info['sha256'][:12]}... now): resuming would validate on images it "
                                 "trained on; start a new run")
        had = extra.get("teacher_sha256")
        if had and teacher_sha and had != teacher_sha:  # the same path, another file (paths alone were compared)
            raise UsageError(f"{out}: the teacher {cfg.teacher} is not the file the run started with (sha256 "
                             f"{had[:12]}... then, {teacher_sha[:12]}... now); start a new run")
        missing = [k for k in ("optimizer", "scheduler", "rng", "history", "best_top1", "best_epoch") if k not in extra]
        if missing:
            raise IntegrityError(f"{out / 'last.pt'}: not a resumable training checkpoint (no {', '.join(missing)}; "
                                 "was best.pt copied over it?)")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])
        history, best_top1, best_epoch = list(extra["history"]), extra["best_top1"], extra["best_epoch"]
        start_epoch = ck["epoch"] + 1
        if start_epoch > cfg.epochs:  # a silent no-op before, and config.json then said fewer epochs than done
            raise UsageError(f"{out}: the run has done {start_epoch} epochs; --epochs {cfg.epochs} would end before "
                             f"that (pass --epochs {start_epoch} or more to continue it)")
        best_top1, best_epoch = _best_saved_after(out / "best.pt", ck["epoch"], best_top1, best_epoch)
        log.info("resuming %s at epoch %d", out, start_epoch)

    teacher = TeacherAdapter(cfg.teacher, spec, labels, cfg.embed_dim, device) if cfg.teacher else None
    metric_loss = make_metric_loss(cfg.metric_loss, cfg.metric_margin)
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if device_type == "cuda" else None)
    use_amp = cfg.amp and device_type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    resolved = {**cfg.to_dict(), "git_sha": git_sha(), "git_dirty": git_dirty(), "torch": torch.__version__,
                "device": device,
                "world_size": dist.world, "labels": labels, "split": split_info, "n_train": len(train_ds),
                "n_val": len(val_set), "skipped_train": train_ds.skipped, "preprocess": spec.to_dict(),
                "model_config": model.config, "steps_per_epoch": steps_per_epoch}
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(out)
        if cfg.resume:  # the commit the run started on stays on record beside the one that resumed it
            try:
                before = json.loads((out / "config.json").read_text("utf-8"))
                resolved["git_sha_started"] = before.get("git_sha_started", before.get("git_sha"))
            except (OSError, ValueError, AttributeError):
                pass
        atomic_write_json(out / "config.json", resolved)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        worker_seeds.manual_seed((cfg.seed * 1_000_003 + dist.rank * 10_007 + epoch) % 2**63)
        net.train()
        sums = {"loss": 0.0, "ce": 0.0, "metric": 0.0, "kd": 0.0, "correct": 0.0, "n": 0, "skipped_steps": 0}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
        for step_i, batch in enumerate(bar, 1):
            # a batch with fewer than 2 readable images (unreadable files are dropped) cannot train BatchNorm;
            # under DDP every process skips it together, or the others would wait in backward's all-reduce forever
            if ddp.any_rank(batch is None or len(batch[1]) < 2, dist):
                sums["skipped_steps"] += 1
                continue
            x, y, _ = batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type, enabled=use_amp):
                logits, emb = net(x)
                ce = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                ml = metric_loss(emb.float(), y) if metric_loss is not None else ce.new_zeros(())
                loss = ce + cfg.metric_weight * ml
                kd = ce.new_zeros(())
                if teacher is not None:
                    t_logits, t_emb = teacher(x)
                    kd_l, kd_e = distillation_loss(logits.float(), t_logits.float(), emb.float(), t_emb.float(),
                                                   cfg.kd_temperature)
                    kd = cfg.kd_weight * kd_l + cfg.kd_embed_weight * kd_e
                    loss = loss + kd
            if ddp.any_rank(not bool(torch.isfinite(loss.detach())), dist):
                raise TrainingError(
                    f"training diverged: the loss is {float(loss.detach())} at epoch {epoch + 1}, step {step_i} "
                    f"(lr {opt.param_groups[-1]['lr']:.3g}); nothing was saved from this epoch, {out / 'last.pt'} "
                    "is the last good checkpoint (if any). Try a lower --lr or --grad-clip")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            b = len(y)
            for k, v in (("loss", loss), ("ce", ce), ("metric", ml), ("kd", kd)):
                sums[k] += float(v.detach()) * b
            sums["correct"] += float((logits.argmax(1) == y).sum())
            sums["n"] += b
            bar.set_postfix(loss=f"{sums['loss'] / max(1, sums['n']):.3f}")
            if not show and dist.is_main and step_i % LOG_EVERY == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.0f s)", epoch + 1, step_i, steps_per_epoch,
                         sums["loss"] / max(1, sums["n"]), time.perf_counter() - t0)
        n = max(1, sums["n"])
        row: dict[str, Any] = {"epoch": epoch, "train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n,
                               "train_metric": sums["metric"] / n, "train_kd": sums["kd"] / n,
                               "train_top1": sums["correct"] / n, "lr": opt.param_groups[-1]["lr"],
                               "train_images": sums["n"]}
        if sums["skipped_steps"]:
            row["skipped_steps"] = sums["skipped_steps"]
            log.warning("epoch %d: %d of %d steps skipped (fewer than 2 readable images in the batch on some process)",
                        epoch + 1, sums["skipped_steps"], steps_per_epoch)
        bad_weights = not all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters())
        if ddp.any_rank(bad_weights, dist):  # an update at the epoch's last step: never save such a model
            raise TrainingError(f"training diverged: the weights hold NaN or infinite values after epoch {epoch + 1} "
                                f"(lr {opt.param_groups[-1]['lr']:.3g}); nothing was saved from this epoch. Try a "
                                "lower --lr or --grad-clip")
        if dist.is_main:
            pred = predict(model, val_set, batch_size=cfg.eval_batch_size, device=device, progress=show)
            if not len(pred.targets):
                raise InputError(f"none of the {len(val_set)} validation images could be read "
                                 f"({len(pred.skipped)} skipped; see the warnings above): nothing to judge epochs by")
            m = classification_metrics(pred.logits, pred.targets, labels)
            row.update({"val_top1": m["top1"], "val_top5": m["top5"], "val_n": m["n"],
                        "val_skipped": len(pred.skipped), "seconds": time.perf_counter() - t0})
            history.append(row)
            is_best = m["top1"] > best_top1
            if is_best:
                best_top1, best_epoch = m["top1"], epoch
            metrics = {k: v for k, v in row.items()}
            extra = {"train_config": cfg.to_dict(), "data_path": str(Path(cfg.data).resolve()),
                     "teacher_sha256": teacher_sha,
                     "history": history, "best_top1": best_top1,
                     "best_epoch": best_epoch, "split": split_info}
            if is_best:
                save_checkpoint(out / "best.pt", model, labels, metrics, epoch, extra)
            save_checkpoint(out / "last.pt", model, labels, metrics, epoch,
                            {**extra, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                             "rng": torch.get_rng_state()})
            atomic_write_json(out / "metrics.json", {"history": history, "best_epoch": best_epoch,
                                                     "best_val_top1": best_top1, "split": split_info})
            log.info("epoch %d/%d loss %.4f val top1 %.4f (%.0f s)", epoch + 1, cfg.epochs, row["train_loss"],
                     m["top1"], row["seconds"])
            met = sorted({tuple(s) for s in train_ds.skipped}) if not cfg.cache and cfg.workers == 0 \
                and dist.world == 1 else []
            if met and met != resolved.get("skipped_train"):
                # the unreadable training images this process met so far: a PK epoch draws floor(n / batch)
                # batches, so an image may go unread for epochs (an audit: the list claimed to be complete)
                resolved["skipped_train"] = met
                resolved["skipped_train_note"] = ("unreadable training images met while training; the sampler does "
                                                  "not draw every image every epoch (`partlens audit` lists all)")
                atomic_write_json(out / "config.json", resolved)
        ddp.barrier(dist)
    result = RunResult(out, out / "last.pt", out / "best.pt", best_epoch, best_top1, history, labels, split_info, model)
    if dist.enabled:
        ddp.teardown()
    return result


def load_run_metrics(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "metrics.json"
    if not path.is_file():
        raise UsageError(f"{path}: no metrics (is this a run folder?)")
    return json.loads(path.read_text())

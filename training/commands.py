"""``partlens train | evaluate | audit | split``: thin CLI over the training library (no torch at import)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .sampler import SAMPLERS


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .train import train

    model_options = {}
    for item in args.model_option or []:
        key, sep, value = item.partition("=")
        if not sep:
            from edge_app.errors import UsageError

            raise UsageError(f"--model-option expects KEY=VALUE, got {item!r}")
        try:
            model_options[key] = json.loads(value) if value[:1].isdigit() or value[:1] in "[{-" else value
        except json.JSONDecodeError:
            from edge_app.errors import UsageError

            raise UsageError(f"--model-option {key}: {value!r} is not a number or JSON value") from None
    cfg = TrainConfig(
        data=args.data, out=args.out, model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        backbone_lr_mult=args.backbone_lr_mult,
        weight_decay=args.wd, warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip,
        freeze_stages=args.freeze_stages, label_smoothing=args.label_smoothing, metric_loss=args.metric_loss,
        metric_weight=args.metric_weight, embed_dim=args.embed_dim, image_size=args.image_size, resize=args.resize,
        pretrained=not args.from_scratch, weights=args.weights, model_options=model_options, layout=args.layout,
        split=args.split, val_fraction=args.val, seed=args.seed, sampler=args.sampler, workers=args.workers,
        cache=args.cache, teacher=args.teacher, kd_weight=args.kd_weight, kd_temperature=args.kd_temperature,
        device=args.device, amp=not args.no_amp, resume=args.resume, gallery_repeats=args.gallery_repeats,
    )
    # the epoch lines (and, without a progress bar, the running loss) are the run's progress: shown without -v
    # (an audit: piped to a log, a run printed nothing until its final JSON)
    train_log = logging.getLogger("training.train")
    if train_log.getEffectiveLevel() > logging.INFO:
        train_log.setLevel(logging.INFO)
    res = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only the main process reports (the others have
        _print_json({"out": str(res.out_dir), "best": str(res.best), "best_epoch": res.best_epoch,  # no val)
                     "best_val_top1": res.best_top1})
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, out=args.out, layout=args.layout,
                              batch_size=args.batch_size, figures=not args.no_figures)
    keys = ("n_listed", "n", "n_unreadable", "top1", "top5", "top5_note", "mean_per_class", "retrieval", "split",
            "figures")
    _print_json({k: rep[k] for k in keys if k in rep})
    return 0


def _add_reference(args: argparse.Namespace) -> int:
    from .models import add_reference_to_checkpoint

    out = add_reference_to_checkpoint(args.checkpoint, args.out, weight=args.weight)
    print(out)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from edge_app.atomic import atomic_write_json

    from .audit import audit, contact_sheet

    rep = audit(args.root, phash_threshold=args.phash_threshold, dhash_threshold=args.dhash_threshold,
                tiny_side=args.tiny_side, progress=sys.stderr.isatty())
    if args.json:
        atomic_write_json(args.json, rep.to_dict())
    if args.contact_sheet:
        contact_sheet(rep, args.contact_sheet)
    _print_json(rep.summary() if not args.full else rep.to_dict())
    return 0


def _split(args: argparse.Namespace) -> int:
    from edge_app.errors import UsageError

    from .splits import make_split, write_split

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    doc = make_split(args.root, val_fraction=args.val, seed=args.seed, name=args.name or out.stem,
                     phash_threshold=args.phash_threshold, dhash_threshold=args.dhash_threshold)
    write_split(doc, out)
    _print_json({"out": str(out), "sha256": doc["sha256"], "counts": doc["counts"], "dedup": doc["dedup"]})
    return 0


def _dup_args(p: argparse.ArgumentParser) -> None:
    from .phash import DHASH_THRESHOLD, PHASH_THRESHOLD

    p.add_argument("--phash-threshold", type=int, default=PHASH_THRESHOLD,
                   help=f"max pHash Hamming distance of a near-duplicate (default {PHASH_THRESHOLD})")
    p.add_argument("--dhash-threshold", type=int, default=DHASH_THRESHOLD,
                   help=f"max dHash Hamming distance of a near-duplicate (default {DHASH_THRESHOLD})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (run folder with config, checkpoints, metrics)",
                       description="Train a registered model on a dataset folder (image folder, grocery or "
                                   "generated parts layout). Writes OUT/config.json, last.pt, best.pt, metrics.json.")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--model", required=True, help="tiny, mobilenet_v2, efficientnet_lite0, resnet50, resnet101, vit")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="backbone learning rate = lr x this (e.g. 0.1 to fine-tune gently; default 1)")
    p.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm (default: off)")
    p.add_argument("--freeze-stages", type=int, default=0, help="freeze the first N backbone stages")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--metric-loss", default="multi_similarity", choices=["multi_similarity", "triplet", "none"])
    p.add_argument("--metric-weight", type=float, default=1.0)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--image-size", type=int, default=None, help="input side in px (default: the model's)")
    p.add_argument("--resize", default="squash", choices=["squash", "shorter_crop", "letterbox"])
    p.add_argument("--from-scratch", action="store_true", help="random init instead of ImageNet weights")
    p.add_argument("--weights", help="backbone state-dict file to start from")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="model-specific option, e.g. vit_depth=8")
    p.add_argument("--layout", default="auto", choices=["auto", "folder", "grocery", "parts"])
    p.add_argument("--split", help="split file (partlens split); default: the layout's own, else a fresh one")
    p.add_argument("--val", type=float, default=0.2, help="val fraction when making a fresh split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="pk", choices=list(SAMPLERS),
                   help="pk: P classes x 4 images per batch; pk_catalogue: the same, each class's 4 led by one of "
                        "its catalogue images (needs --gallery-repeats); random: plain shuffle")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--cache", action="store_true", help="decode training images once and keep them in memory")
    p.add_argument("--gallery-repeats", type=int, default=0, metavar="N",
                   help="also train on the layout's catalogue images (grocery iconic images, generated "
                        "catalogue shots), each N times per epoch; never the val images (default 0: off)")
    p.add_argument("--teacher", help="teacher checkpoint for distillation (KD on logits + embedding cosine)")
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from last.pt")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint: accuracy, retrieval, figures",
                       description="Top-1/top-5/per-class accuracy and retrieval Recall@1/@5/mAP (training images, "
                                   "and catalogue images when the layout has them, as gallery).")
    p.add_argument("checkpoint", help="a partlens checkpoint (.pt)")
    p.add_argument("--data", help="dataset root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", help="split file (default: the one recorded in the checkpoint, or the layout's)")
    p.add_argument("--out", help="folder for evaluation.json, confusion.png, predictions.png, curves.png")
    p.add_argument("--layout", default="auto", choices=["auto", "folder", "grocery", "parts"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("add-reference", help="fuse frozen ImageNet features into a checkpoint's embedding",
                       description="Write a copy of a checkpoint whose embedding is the trained embedding fused with "
                                   "the architecture's frozen ImageNet features (cosine = w * trained + (1 - w) * "
                                   "ImageNet). No training: it helps parts the model never saw (parts added at the "
                                   "hub later). The embedding grows by the backbone's feature size (1280 for "
                                   "efficientnet_lite0 and mobilenet_v2) and the model runs the backbone twice.")
    p.add_argument("checkpoint", help="a partlens checkpoint (.pt) from `partlens train`")
    p.add_argument("--out", required=True, help="the new checkpoint file (must not exist)")
    p.add_argument("--weight", type=float, default=0.5,
                   help="weight of the trained embedding in (0, 1) (default 0.5: equal weights)")
    p.set_defaults(func=_add_reference)

    p = sub.add_parser("audit", help="audit a dataset: unreadable/odd-mode/tiny images, near-duplicates",
                       description="Report unreadable, grayscale, CMYK, RGBA, palette and tiny images and "
                                   "near-duplicates (pHash and dHash), also near-duplicates with different labels.")
    p.add_argument("root", help="dataset root or image folder")
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--contact-sheet", metavar="PNG", help="write a PNG of near-duplicate pairs")
    p.add_argument("--full", action="store_true", help="print the full report, not just the summary")
    p.add_argument("--tiny-side", type=int, default=64, help="images with a side below this are 'tiny'")
    _dup_args(p)
    p.set_defaults(func=_audit)

    p = sub.add_parser("split", help="write a stratified, duplicate-aware train/val split file",
                       description="Near-duplicate groups stay on one side; seeded and stratified by class.")
    p.add_argument("root", help="dataset root")
    p.add_argument("--out", required=True, help="split file, e.g. training/splits/NAME.json")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="split name (default: the file stem)")
    p.add_argument("--force", action="store_true", help="replace an existing split file")
    _dup_args(p)
    p.set_defaults(func=_split)

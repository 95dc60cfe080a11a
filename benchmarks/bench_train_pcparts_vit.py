"""Small ViT from scratch on pc-parts-14 (committed split), without and with distillation from a MobileNetV2 teacher."""
from __future__ import annotations

from typing import Any

#: Distilled ViT target (above the MobileNetV2 teacher's own top-1).
TARGET_DISTILLED_TOP1 = 0.80


def run(ctx) -> dict[str, Any]:
    from training.benchutil import SPLITS_DIR, evaluate_run, run_training
    from training.config import TrainConfig
    from training.splits import load_split

    root = ctx.require_data("pc-parts-14")
    split_path = SPLITS_DIR / "pc-parts-14.json"
    split = load_split(split_path, root)
    # Every model is evaluated at its LAST epoch: no checkpoint is chosen on the val split that is reported.
    # History: 12 epochs, patchify stem (2026-11-22): 0.2348 / 0.2546 (distilled); conv stem (2026-12-06, morning):
    # 0.3476 / 0.3704, best epochs on val, the 224 px MobileNetV2 benchmark checkpoint as teacher (80 s per
    # distilled epoch against 24 s: the teacher ran at 224 px on the upsampled batch), both still rising.
    # Now: a teacher at the student's 128 px, trained here (the MobileNetV2 recipe, 8 epochs; 0.7363 when tried
    # at 128 px), so a distilled epoch costs little more than a plain one and both runs get 30 epochs.
    # Result (2026-12-06): 0.4101 / 0.4802, teacher 0.7439, 39.4 min. Tried outside the bench once: the distilled
    # run at lr 1e-3 instead of 5e-4 gave 0.4253 (train top-1 0.497), so the learning rate is not what holds it.
    quick = ctx.quick
    epochs = 1 if quick else 30
    common = dict(data=str(root), split=str(split_path), image_size=128, batch_size=32, cache=True, seed=0)
    t = run_training(ctx, "teacher-128px", TrainConfig(
        out=str(ctx.work_dir / "teacher_128px"), model="mobilenet_v2", epochs=1 if quick else 8, lr=1e-3,
        backbone_lr_mult=0.1, label_smoothing=0.1, weight_decay=0.05, freeze_stages=3, **common))
    teacher_ev = evaluate_run(ctx, "eval-teacher-128px", t["last"], split.val, {"train": split.train})
    rows = [_row("mobilenet_v2 teacher (128 px)", t, teacher_ev)]
    for name, extra in (("vit", {}), ("vit+distill", {"teacher": t["last"]})):
        cfg = TrainConfig(out=str(ctx.work_dir / f"{name.replace('+', '_')}_{epochs}ep"), model="vit", epochs=epochs,
                          lr=5e-4, weight_decay=0.05, warmup_epochs=2, grad_clip=1.0, label_smoothing=0.1, **common,
                          **extra)
        trained = run_training(ctx, f"train-{name}-{epochs}ep", cfg)
        rows.append(_row(name, trained, evaluate_run(ctx, f"eval-{name}-{epochs}ep", trained["last"], split.val,
                                                     {"train": split.train})))
    distilled = rows[-1]["top1"]
    return {"table": rows, "split_sha256": split.sha256, "val_images_in_split": len(split.val),
            "evaluated_epoch": "last (no selection on the val split)",
            "target_distilled_top1": TARGET_DISTILLED_TOP1, "meets_target": distilled >= TARGET_DISTILLED_TOP1}


def _row(name: str, trained: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    hist = trained["history"]
    return {"run": name, "epochs": len(hist), "top1": ev["top1"], "top5": ev["top5"],
            "recall@1_train_gallery": ev["retrieval"]["train"]["recall@1"], "val_images_evaluated": ev["n"],
            "train_top1_last_epoch": hist[-1].get("train_top1") if hist else None,
            "seconds_per_epoch": round(sum(h["seconds"] for h in hist) / max(1, len(hist)), 1)}

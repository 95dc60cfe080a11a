"""Small ViT from scratch on pc-parts-14 (committed split), without and with distillation from a MobileNetV2 teacher."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def run(ctx) -> dict[str, Any]:
    from training.benchutil import SPLITS_DIR, evaluate_run, run_training
    from training.config import TrainConfig
    from training.splits import load_split

    root = ctx.require_data("pc-parts-14")
    split_path = SPLITS_DIR / "pc-parts-14.json"
    split = load_split(split_path, root)
    epochs = 1 if ctx.quick else 12
    common = dict(data=str(root), split=str(split_path), image_size=128, batch_size=32, cache=True, seed=0)
    # the teacher: the pc-parts MobileNetV2 benchmark's checkpoint if present, else trained here
    teacher = ctx.work_dir.parent / "train-pcparts-mobilenet-v2" / "run" / "best.pt"
    if not teacher.is_file():
        t = run_training(ctx, "teacher", TrainConfig(out=str(ctx.work_dir / "teacher"), model="mobilenet_v2",
                                                      epochs=1 if ctx.quick else 6, lr=1e-3, freeze_stages=3,
                                                      **common))
        teacher = Path(t["best"])
    # 2026-12-06, the default convolutional stem (training/vit.py): 0.3476 / 0.3704 (with distillation); the plain
    # patchify stem, same recipe (2026-11-22): 0.2348 / 0.2546
    rows = []
    for name, extra in (("vit", {}), ("vit+distill", {"teacher": str(teacher)})):
        cfg = TrainConfig(out=str(ctx.work_dir / name.replace("+", "_")), model="vit", epochs=epochs, lr=5e-4,
                          weight_decay=0.05, warmup_epochs=2, grad_clip=1.0, label_smoothing=0.1, **common, **extra)
        trained = run_training(ctx, f"train-{name}", cfg)
        ev = evaluate_run(ctx, f"eval-{name}", trained["best"], split.val, {"train": split.train})
        rows.append({"run": name, "epochs": epochs, "top1": ev["top1"], "top5": ev["top5"],
                     "recall@1_train_gallery": ev["retrieval"]["train"]["recall@1"],
                     "val_images_evaluated": ev["n"], "best_epoch": trained["best_epoch"]})
    return {"table": rows, "teacher": str(teacher), "split_sha256": split.sha256,
            "val_images_in_split": len(split.val)}

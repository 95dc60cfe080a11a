"""Train EfficientNet-Lite0 (ImageNet init) on pc-parts-14, committed duplicate-aware split (top-1 >= 95%)."""
from __future__ import annotations

from typing import Any

TARGET_TOP1 = 0.95


def run(ctx) -> dict[str, Any]:
    from training.benchutil import pcparts_benchmark

    # CPU budget (<= 45 min on 2 cores, alone): 160 px input, whole network fine-tuned at lr 1e-3, 12 epochs
    # (about 130 s each here; 27 min in all): top-1 0.7744 (the committed result). A transfer-learning recipe
    # chosen before its run (backbone at 0.1 x lr, label smoothing 0.1, weight decay 0.05; 30 min) gave 0.7470,
    # so this configuration stays; both numbers are in docs/benchmarks.md. The first run (128 px, 5 stages frozen,
    # 4 epochs, shared CPU) gave 74.5%.
    # The grocery recipe that met its target (224 px, first 3 stages frozen, 12 epochs; 29 min) was tried on
    # 2026-12-06: top-1 0.7729, top-5 0.9588, 0.8034 excluding label-noise errors: no better, so this stays.
    return pcparts_benchmark(ctx, "efficientnet_lite0", TARGET_TOP1, image_size=160, epochs=12, lr=1e-3,
                             freeze_stages=0)

"""Train EfficientNet-Lite0 (ImageNet init) on pc-parts-14, committed duplicate-aware 80/20 split (target top-1 >= 95%)."""
from __future__ import annotations

from typing import Any

TARGET_TOP1 = 0.95


def run(ctx) -> dict[str, Any]:
    from training.benchutil import pcparts_benchmark

    # CPU budget (<= 45 min on 2 shared cores): 160 px, stem and first three block stages frozen, 5 epochs.
    return pcparts_benchmark(ctx, "efficientnet_lite0", TARGET_TOP1, image_size=160, epochs=5, lr=1e-3,
                             freeze_stages=4)

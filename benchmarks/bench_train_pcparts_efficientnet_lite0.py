"""Train EfficientNet-Lite0 (ImageNet init) on pc-parts-14, committed duplicate-aware split (top-1 >= 95%)."""
from __future__ import annotations

from typing import Any

TARGET_TOP1 = 0.95


def run(ctx) -> dict[str, Any]:
    from training.benchutil import pcparts_benchmark

    # CPU budget (<= 45 min on 2 cores; on a shared CPU run with OMP_NUM_THREADS=1): 128 px input,
    # stem and the first four block stages frozen, 4 epochs.
    return pcparts_benchmark(ctx, "efficientnet_lite0", TARGET_TOP1, image_size=128, epochs=4, lr=1e-3,
                             freeze_stages=5)

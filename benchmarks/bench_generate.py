"""Synthetic generator throughput: 1,000 images at 256 px (multiprocess), plus single-process ms per image."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def _single_process(n: int, size: int) -> dict[str, float]:
    from training.synth.generate import image_seed, render_image
    from training.synth.parts import PARTS

    render_image(PARTS[0], "field", 0, 1, size)  # warm caches (fonts, background textures)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        part = PARTS[i % len(PARTS)]
        kind = "catalogue" if i % 5 == 0 else "field"
        render_image(part, kind, i, image_seed(99, part.part_number, kind, i), size)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"single_process_ms_per_image": 1000.0 * wall / n, "single_process_cpu_ms_per_image": 1000.0 * cpu / n}


def run(ctx: Any) -> dict[str, Any]:
    from training.synth import PARTS, generate

    size = 256
    field = 3 if ctx.quick else 23  # 40 parts x (2 + 23) = 1,000 images
    workers = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    res = generate(ctx.work_dir / "out", seed=0, catalogue_per_part=2, field_per_part=field, size=size,
                   workers=workers, overwrite=True)
    load_after = os.getloadavg()[0]
    single = _single_process(40 if ctx.quick else 120, size)
    sizes = [p.stat().st_size for p in (ctx.work_dir / "out" / "images").rglob("*.jpg")]
    return {
        "images": res.n_images,
        "parts": len(PARTS),
        "size_px": size,
        "workers": workers,
        "seconds": round(res.seconds, 2),
        "images_per_s": round(res.n_images / res.seconds, 2),
        "wall_ms_per_image": round(1000.0 * res.seconds / res.n_images, 2),
        **{k: round(v, 2) for k, v in single.items()},
        "mean_jpeg_kb": round(float(np.mean(sizes)) / 1024.0, 1),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(load_after, 2),
    }

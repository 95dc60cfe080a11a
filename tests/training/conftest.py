"""Tiny synthetic image folders made by the tests themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 30)]


def make_folder(root: Path, n_classes: int = 3, per_class: int = 16, size: int = 48, seed: int = 0) -> Path:
    """``root/c<k>/<i>.jpg``: class k is a shape of colour k at a random place on a noisy background."""
    rng = np.random.default_rng(seed)
    for k in range(n_classes):
        d = root / f"c{k}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
            img = Image.fromarray(bg)
            draw = ImageDraw.Draw(img)
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = rng.integers(r, size - r, size=2)
            box = (cx - r, cy - r, cx + r, cy + r)
            if k % 2 == 0:
                draw.ellipse(box, fill=COLOURS[k % len(COLOURS)])
            else:
                draw.rectangle(box, fill=COLOURS[k % len(COLOURS)])
            img.save(d / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The CI/dev CPU is shared: one intra-op thread avoids OpenMP spin contention (3x faster here)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

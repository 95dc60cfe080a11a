"""Shared fixtures: a tiny model and small generated image folders (no downloads, no real data)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLASSES = ["P0", "P1", "P2", "P3"]


def make_image_folder(root: Path, per_class: int, seed: int, size: int = 80) -> Path:
    """ImageFolder of JPEGs: each class a different colour and shape on a noisy background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
            img = Image.fromarray(bg, "RGB")
            draw = ImageDraw.Draw(img)
            x0, y0 = rng.integers(5, size // 3, size=2)
            x1, y1 = x0 + rng.integers(size // 3, size // 2), y0 + rng.integers(size // 3, size // 2)
            box = [int(x0), int(y0), int(x1), int(y1)]
            (draw.ellipse if c % 2 else draw.rectangle)(box, fill=colours[c])
            img.save(d / f"img_{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("images")
    return {"calib": make_image_folder(base / "calib", 8, seed=1),
            "val": make_image_folder(base / "val", 6, seed=2),
            "catalogue": make_image_folder(base / "catalogue", 2, seed=3)}


@pytest.fixture(scope="session")
def tiny_model(image_dirs: dict[str, Path]):
    """The registry's ``tiny`` model (64 px), briefly trained on the generated calibration images.

    An untrained model has near-tied logits and a collapsed embedding space, which makes argmax
    and nearest-neighbour comparisons meaningless; a few hundred milliseconds of training fix that.
    """
    torch = pytest.importorskip("torch")
    from training.models import create_model

    from export.inputs import load_inputs

    torch.set_num_threads(1)  # the machine is shared; one thread is faster under contention
    torch.manual_seed(0)
    model = create_model("tiny", len(CLASSES), embed_dim=16, pretrained=False)
    paths = sorted(image_dirs["calib"].rglob("*.jpg"))
    x, kept = load_inputs(paths, model.preprocess)
    y = torch.tensor([CLASSES.index(p.parent.name) for p in kept])
    xt = torch.from_numpy(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        logits, emb = model(xt)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()

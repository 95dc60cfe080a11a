"""A contact sheet of generated shots (``docs/synth_samples.png`` is made with ``make_contact_sheet``)."""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from edge_app.atomic import atomic_write_bytes

from .generate import image_seed, render_image
from .parts import PARTS


def make_contact_sheet(path: str | os.PathLike[str], *, seed: int = 0, tile: int = 128, cols: int = 8,
                       size: int = 256, colours: int = 256) -> Path:
    """One row of catalogue shots, then one field shot per part, as a palette PNG (small file)."""
    shots = [(p, "catalogue", i % 2) for i, p in enumerate(PARTS[::5])][:cols]
    shots += [(p, "field", i) for i, p in enumerate(PARTS)]
    rows = (len(shots) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    for k, (part, kind, index) in enumerate(shots):
        data, _ = render_image(part, kind, index, image_seed(seed, part.part_number, kind, index), size)
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((tile, tile), Image.LANCZOS)
        sheet.paste(img, ((k % cols) * tile, (k // cols) * tile))
    buf = io.BytesIO()
    sheet.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        buf, "PNG", optimize=True)
    return atomic_write_bytes(path, buf.getvalue())

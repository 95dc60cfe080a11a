"""Real images -> model input arrays, through the one device preprocessing path."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_app.errors import InputError
from edge_app.imageio import iter_image_files, load_image
from edge_app.preprocess import PreprocessSpec, preprocess_image

log = logging.getLogger(__name__)


def load_inputs(paths: Sequence[str | os.PathLike[str]], spec: PreprocessSpec) -> tuple[np.ndarray, list[Path]]:
    """Decode + preprocess images exactly as the device does -> (float32 (N,C,H,W) or NHWC, paths kept).

    Unreadable images are skipped with a warning naming the file.
    """
    arrays, kept = [], []
    for p in paths:
        try:
            img = load_image(p, draft_size=spec.draft_size)
        except InputError as exc:
            log.warning("skipping %s", exc)
            continue
        arrays.append(preprocess_image(img, spec))
        kept.append(Path(p))
    if not arrays:
        raise InputError(f"none of the {len(paths)} images could be read")
    return np.stack(arrays).astype(np.float32), kept


def sample_images(root: str | os.PathLike[str], n: int | None, *, seed: int = 0, what: str = "images") -> list[Path]:
    """``n`` image files drawn with a fixed seed from the folder ``root`` (all if ``n`` is None).

    Asking for more images than the folder holds is an error, never a silent shortfall.
    """
    files = iter_image_files(root)
    if n is None:
        return files
    if len(files) < n:
        raise InputError(f"{root}: {what} need {n} images but the folder holds {len(files)} "
                         "(lower the count explicitly if that is intended)")
    rng = random.Random(seed)
    return sorted(rng.sample(files, n))

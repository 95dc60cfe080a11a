"""Catalogue-view averaging: one catalogue image -> several fixed views -> one mean embedding.

A catalogue image (often a clean studio shot) is one framing of the part; a field photo is
another. Embedding a few fixed views of each catalogue image (the image, its mirror, and
centre and corner crops at 80% side) and storing their L2-normalised mean as the image's one
vector makes the catalogue side less sensitive to framing, with no retraining, no extra index
entries and no schema change: the device still stores one vector per image and still embeds
a query photo once. Views apply to reference images (``kind`` in :data:`VIEWED_KINDS`); field
photos added to the catalogue (a tablet's accepted upload) already vary in framing and are
embedded once. Measured on grocery with 160 px models: new products' Recall@1 0.28 -> 0.37 against
iconic images; with the 224 px models the benchmark now trains, 0.40 -> 0.42
(``benchmarks/results/train-grocery-new-products.md``). On a catalogue of iconic images plus two
phone photos per product (160 px model), views on every image cost 3.7 points of top-1 (0.735 ->
0.699), views on the iconic images only kept it (0.735) and lowered ECE 0.110 -> 0.095
(``benchmarks/results/identify-quality.md``).

The view set is part of the bundle (``manifest["catalogue"]["views"]``): the bundle builder,
the calibration and the hub must embed catalogue images the same way, or the vectors of parts
added later differ from the bundle's. Pillow and NumPy only (the hub and the tablet import it).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .errors import UsageError

#: view set name -> number of views. ``none``: the image as it is (bundles without the key).
VIEW_SETS = {"none": 1, "flip-crop5": 7}
DEFAULT_VIEWS = "flip-crop5"
#: image kinds (hub ``images.kind``) embedded with views; other kinds (``field``) once
VIEWED_KINDS = ("catalogue",)
CROP_SIDE = 0.8


def check_views(name: str) -> str:
    """``name`` if it is a known view set, else :class:`UsageError`."""
    if name not in VIEW_SETS:
        raise UsageError(f"unknown catalogue view set {name!r} (known: {', '.join(VIEW_SETS)})")
    return name


def views(img: Any, name: str) -> list[Any]:
    """The fixed views of a decoded PIL image for view set ``name`` (the image itself first)."""
    check_views(name)
    if name == "none":
        return [img]
    from PIL import Image

    w, h = img.size
    cw, ch = max(1, round(w * CROP_SIDE)), max(1, round(h * CROP_SIDE))
    corners = [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    return [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            *(img.crop((x, y, x + cw, y + ch)) for x, y in corners)]


def mean_of_views(vectors: np.ndarray, n_views: int) -> np.ndarray:
    """(N * n_views, D) raw view embeddings, image-major -> (N, D) L2-normalised means of unit views."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or len(v) % n_views:
        raise UsageError(f"{v.shape} view embeddings are not a multiple of {n_views} views")
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    m = unit.reshape(-1, n_views, v.shape[1]).mean(axis=1)
    return (m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def embed_with_views(embed: Callable[[Sequence[Any]], np.ndarray], images: Sequence[Any],
                     name: str | Sequence[str]) -> np.ndarray:
    """``embed(list of PIL images) -> (N, D)`` applied once to every view of every image; (len(images), D)
    unit vectors, each the normalised mean of its image's unit view vectors. ``name``: one view set for
    all images, or one per image (e.g. ``none`` for field photos beside viewed reference images)."""
    names = [name] * len(images) if isinstance(name, str) else list(name)
    if len(names) != len(images):
        raise UsageError(f"{len(names)} view sets for {len(images)} images")
    if not images:
        return np.zeros((0, 0), np.float32)
    counts = [VIEW_SETS[check_views(n)] for n in names]
    expanded = [v for img, n in zip(images, names) for v in views(img, n)]
    vecs = np.asarray(embed(expanded), dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(expanded):
        raise UsageError(f"embedder returned {vecs.shape} for {len(expanded)} views")
    if len(set(counts)) == 1:
        return mean_of_views(vecs, counts[0])
    ends = np.cumsum(counts)
    return np.concatenate([mean_of_views(vecs[e - c:e], c) for e, c in zip(ends, counts)])

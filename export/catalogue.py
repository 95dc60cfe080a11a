"""Catalogue images -> embeddings computed with the exported model the device will run.

:func:`embed_catalogue` takes any runner (a callable batch -> {"embedding": ...}), so the
catalogue vectors in a bundle come from the same TFLite (or ONNX) file the device uses.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_app.errors import InputError
from edge_app.imageio import iter_image_files, load_image
from edge_app.partfolders import normal_part_number, part_from_folder
from edge_app.preprocess import PreprocessSpec, preprocess_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueImage:
    path: Path
    image_id: str
    part_number: str


def catalogue_from_dir(root: str | os.PathLike[str]) -> list[CatalogueImage]:
    """Catalogue images of a folder.

    A generated data folder (``images.csv``): its ``kind == catalogue`` rows. Otherwise an
    ImageFolder layout: the part number is the image's parent folder name. ``image_id`` is the
    path relative to ``root``.
    """
    return images_from_dir(root, kind="catalogue")


def images_from_dir(root: str | os.PathLike[str], *, kind: str = "catalogue",
                    flat_part: str | None = None) -> list[CatalogueImage]:
    """Labelled images of a folder: ``images.csv`` rows of ``kind`` (``catalogue`` or ``field``), else
    an ImageFolder layout (part number = parent folder name).

    ``flat_part``: the part number for images directly in ``root`` (e.g. a plain folder of photos
    of parts outside the catalogue); without it such images are an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    index = root / "images.csv"
    if index.is_file():
        with open(index, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("kind") == kind]
        if not rows:
            raise InputError(f"{index}: no rows with kind={kind}")
        return [CatalogueImage(root / r["path"], r["path"], normal_part_number(r["part_number"])) for r in rows]
    out = []
    for p in iter_image_files(root):
        rel = p.relative_to(root)
        if len(rel.parts) < 2 and flat_part is None:
            raise InputError(f"{p}: images must sit in a folder named by part number")
        out.append(CatalogueImage(p, rel.as_posix(),
                                   part_from_folder(rel.parts[-2]) if len(rel.parts) >= 2 else flat_part))
    return out


def embed_catalogue(run: Callable[[np.ndarray], Mapping[str, np.ndarray]], items: Sequence[CatalogueImage],
                    spec: PreprocessSpec, *, batch_size: int = 16, views: str = "none",
                    every_part: bool = False) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Embed catalogue images with ``run`` -> (float32 (N, D) unit embeddings, rows in the same order).

    ``views``: a :mod:`edge_app.catalogue_views` view set; each image's vector is the normalised
    mean of its views' embeddings, by :func:`edge_app.catalogue_views.embed_with_views` (the rule the
    hub and the benchmarks use too). Query photos are embedded with ``views="none"``. Unreadable
    images are left out with a warning naming the file (and are not in the rows); ``every_part``: a part left with
    no readable image is an error (a bundle's catalogue lost such parts with exit 0, an audit).
    """
    from edge_app.catalogue_views import check_views, embed_with_views

    check_views(views)

    def embed(images: Sequence[Any]) -> np.ndarray:
        out = run(np.stack([preprocess_image(im, spec) for im in images]).astype(np.float32))
        if "embedding" not in out:
            raise InputError(f"the model has no output named 'embedding' (has: {', '.join(out)})")
        return np.asarray(out["embedding"], dtype=np.float32)

    embs: list[np.ndarray] = []
    rows: list[dict[str, str]] = []
    images: list[Any] = []
    pending: list[CatalogueImage] = []

    def flush() -> None:
        if pending:
            embs.append(embed_with_views(embed, images, views))
            rows.extend({"image_id": c.image_id, "part_number": c.part_number} for c in pending)
            images.clear()
            pending.clear()

    for item in items:
        try:
            images.append(load_image(item.path, draft_size=spec.draft_size))
        except InputError as exc:
            log.warning("catalogue image skipped: %s", exc)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
    flush()
    if not rows:
        raise InputError("no catalogue image could be read")
    lost = sorted({i.part_number for i in items} - {r["part_number"] for r in rows})
    if every_part and lost:
        raise InputError(f"{len(lost)} part(s) have no readable catalogue image (see the warnings above): "
                         f"{', '.join(lost[:10])}{' ...' if len(lost) > 10 else ''}; fix or remove their images")
    return np.concatenate(embs).astype(np.float32), rows

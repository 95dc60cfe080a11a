"""Datasets: image-folder catalogues, the grocery layout and the generated parts layout.

An :class:`ImageSet` is a root folder, class labels and ``(relative path, label index)`` items.
Decoding always goes through :func:`edge_app.imageio.load_image` (with the model's draft size);
the eval transform is :func:`edge_app.preprocess.preprocess_image`, the very function the device
calls. Unreadable images are skipped and listed; they never crash an epoch.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge_app.errors import ImageError, InputError
from edge_app.imageio import IMAGE_SUFFIXES, is_hidden, load_image, log_unread_files
from edge_app.partfolders import part_from_folder
from edge_app.preprocess import PreprocessSpec, preprocess_image

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Labelled images under ``root``; ``items`` are (path relative to root, label index)."""

    root: Path
    labels: list[str]
    items: list[tuple[str, int]]
    name: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def path(self, i: int) -> Path:
        return self.root / self.items[i][0]

    def targets(self) -> list[int]:
        return [y for _, y in self.items]

    def subset(self, rel_paths: Sequence[str], name: str = "") -> "ImageSet":
        """The items whose relative paths are listed (in that order); an unknown path is an error."""
        index = {p: y for p, y in self.items}
        missing = [p for p in rel_paths if p not in index]
        if missing:
            raise InputError(f"{self.root}: {len(missing)} listed image(s) are not in the dataset, e.g. {missing[0]}")
        return ImageSet(self.root, self.labels, [(p, index[p]) for p in rel_paths], name or self.name)

    def class_counts(self) -> dict[str, int]:
        counts = {lab: 0 for lab in self.labels}
        for _, y in self.items:
            counts[self.labels[y]] += 1
        return counts


def with_gallery(train: ImageSet, gallery: ImageSet, repeats: int, exclude: ImageSet | None = None
                 ) -> tuple[ImageSet, dict[str, int]]:
    """``train`` plus each catalogue (gallery) image ``repeats`` times, for the classes ``train`` has.

    Catalogue images are clean studio shots; field photos are not. Training on both teaches the
    embedding to put a photo next to its part's catalogue image, which is what the device's search
    needs, also for parts added later without retraining. Gallery images of classes ``train`` does
    not have (e.g. held-out products) are never added, and neither are images in ``exclude`` (the
    val set: a catalogue image being evaluated must not be trained on). Labels are matched by NAME,
    so ``train`` may use a remapped subset of the gallery's labels. Returns the set and counts.
    """
    if repeats < 0:
        raise InputError(f"gallery repeats must be >= 0, got {repeats}")
    if Path(gallery.root) != Path(train.root):
        raise InputError(f"gallery root {gallery.root} differs from the training root {train.root}")
    index = {lab: i for i, lab in enumerate(train.labels)}
    held = {p for p, _ in exclude.items} if exclude is not None else set()
    picked = [(p, index[gallery.labels[y]]) for p, y in gallery.items
              if gallery.labels[y] in index and p not in held]
    counts = {"gallery_images": len(picked), "gallery_repeats": repeats,
              "gallery_left_out_in_val": sum(1 for p, y in gallery.items if p in held),
              "gallery_other_classes": sum(1 for _, y in gallery.items if gallery.labels[y] not in index)}
    if not repeats or not picked:
        return train, counts
    items = list(train.items) + [it for it in picked for _ in range(repeats)]
    return ImageSet(train.root, train.labels, items, f"{train.name}+gallery x{repeats}"), counts


@dataclass
class Dataset:
    """What a layout provides: all labelled images, plus optional predefined splits and a gallery."""

    layout: str
    images: ImageSet
    train: ImageSet | None = None
    val: ImageSet | None = None
    gallery: ImageSet | None = None  # catalogue/iconic images (one or a few clean images per class)
    extra: dict[str, Any] = field(default_factory=dict)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def load_image_folder(root: str | os.PathLike[str]) -> ImageSet:
    """``root/<class>/*.jpg`` (classes sorted by name; images searched recursively inside a class)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))
    _check_layout(root, folders)
    items: list[tuple[str, int]] = []
    everything: list[Path] = []
    for idx, cls in enumerate(folders):
        found = _files_under(root / cls)
        everything += found
        files = sorted(p for p in found if _is_image(p) and not is_hidden(p.relative_to(root)))
        items += [(p.relative_to(root).as_posix(), idx) for p in files]
    log_unread_files(root, everything)
    if not items:
        raise InputError(f"{root}: no class folders with images (expected ROOT/<class>/*.jpg)")
    empty = [c for c, n in zip(folders, np.bincount([y for _, y in items], minlength=len(folders))) if n == 0]
    if empty:
        raise InputError(f"{root}: class folder(s) with no images: {', '.join(empty)}")
    classes = [part_from_folder(f) for f in folders]  # "DIN 934%2FM8" is the part "DIN 934/M8"
    if len(set(classes)) != len(classes):
        clash = sorted(f for f, c in zip(folders, classes) if classes.count(c) > 1)
        raise InputError(f"{root}: folders {', '.join(clash)} name the same class")
    return ImageSet(root, classes, items, root.name)


#: folder names of a dataset already split into subsets (each holding the class folders)
SUBSET_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})


def _check_layout(root: Path, folders: list[str]) -> None:
    """Refuse the two wrong layouts that otherwise trained without a word (an audit): ``--data`` one level too
    high (one folder, which became the only class: val top-1 1.0 by construction) and a dataset already split
    into ``train/`` and ``val/`` (which became the classes "train" and "val")."""
    if len(folders) == 1:
        raise InputError(f"{root}: one class folder ({folders[0]}); a classifier needs two or more. Is --data one "
                         f"level too high? Then the classes are the folders in {root / folders[0]}")
    if len(folders) >= 2 and {f.lower() for f in folders} <= SUBSET_NAMES:
        raise InputError(f"{root}: its folders ({', '.join(folders)}) look like a dataset already split into "
                         f"subsets, not classes: pass --data {root / folders[0]} (ROOT/<class>/*.jpg); partlens "
                         "makes its own duplicate-aware validation split (`partlens split`)")


def _files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``; a folder that cannot be read is an error naming it (``rglob`` skipped it
    silently, so a class folder without read permission was reported as "no images", an audit)."""
    def fail(exc: OSError) -> None:
        raise InputError(f"{exc.filename or folder}: cannot be read ({exc.strerror or exc})")

    out: list[Path] = []
    for dirpath, _dirs, files in os.walk(folder, onerror=fail):  # (symlinked folders not followed, as rglob)
        out += [Path(dirpath) / f for f in files if (Path(dirpath) / f).is_file()]
    return out


def _list_path(raw: str, where: Path | str, line: int | None = None) -> str:
    """A listed image path in one spelling (``./train/a.jpg``, ``train//a.jpg`` and ``/train/a.jpg`` are
    ``train/a.jpg``), so "listed twice" and "in both lists" see through spellings; a Windows path or one that
    leaves the dataset folder is refused (every such image was "no such file" later)."""
    import posixpath

    at = f"{where}:{line}" if line is not None else str(where)
    if "\\" in raw:
        raise InputError(f"{at}: {raw!r} uses backslashes; write the path with '/'")
    rel = posixpath.normpath(raw.lstrip("/"))
    if rel in (".", "") or rel == ".." or rel.startswith("../"):
        raise InputError(f"{at}: {raw!r} is not a path inside the dataset folder")
    return rel


def _read_grocery_list(root: Path, name: str, ids: dict[int, int]) -> list[tuple[str, int]]:
    path = root / name
    if not path.is_file():
        raise InputError(f"{path}: missing (grocery layout needs train.txt, val.txt, classes.csv)")
    out = []
    lines: dict[str, int] = {}
    try:  # utf-8-sig: a list saved by Windows Notepad starts with a BOM (its first image was "no such file")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [s.strip() for s in line.split(",")]
        try:
            fine = int(parts[1])
        except (IndexError, ValueError):
            raise InputError(f"{path}:{n}: expected 'path, fine_id, coarse_id', got {line!r}") from None
        if fine not in ids:
            raise InputError(f"{path}:{n}: class id {fine} is not in classes.csv")
        rel = _list_path(parts[0], path, n)
        if rel in lines:  # scored (or trained on) twice
            raise InputError(f"{path}:{n}: {rel} is already listed on line {lines[rel]}")
        lines[rel] = n
        out.append((rel, ids[fine]))
    return out


def _read_grocery_classes(path: Path) -> list[list[str]]:
    """classes.csv rows (name, fine id, coarse id, ...) sorted by fine id; a malformed row or a repeated id is
    an error naming its line (a repeated id would silently relabel one class's images as another)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        raw = list(csv.reader(fh))
    rows: list[list[str]] = []
    seen: dict[int, int] = {}
    for n, r in enumerate(raw[1:], 2):
        if not r or not any(c.strip() for c in r):
            continue
        try:
            fine = int(r[1])
            if len(r) < 3:
                raise IndexError
        except (IndexError, ValueError):
            raise InputError(f"{path}:{n}: expected 'class name, fine id, coarse id, ...', got {','.join(r)!r}"
                             ) from None
        if fine in seen:
            raise InputError(f"{path}:{n}: class id {fine} is already used on line {seen[fine]}")
        seen[fine] = n
        rows.append(r)
    if not rows:
        raise InputError(f"{path}: no classes")
    return sorted(rows, key=lambda r: int(r[1]))


def load_grocery(root: str | os.PathLike[str]) -> Dataset:
    """The Grocery Store Dataset layout: train.txt/val.txt, classes.csv, iconic images (the gallery)."""
    root = Path(root)
    classes_csv = root / "classes.csv"
    if not classes_csv.is_file():
        raise InputError(f"{classes_csv}: missing")
    rows = _read_grocery_classes(classes_csv)
    labels = [r[0] for r in rows]
    ids = {int(r[1]): i for i, r in enumerate(rows)}
    coarse = {labels[i]: r[2] for i, r in enumerate(rows)}
    # one spelling, as train.txt / val.txt (a val image listed as ./iconic/x.jpg matched itself in the gallery)
    iconic = [(_list_path(r[4], f"{classes_csv} (class id {r[1]})"), i)
              for i, r in enumerate(rows) if len(r) > 4 and r[4]]
    train = ImageSet(root, labels, _read_grocery_list(root, "train.txt", ids), "grocery-train")
    val = ImageSet(root, labels, _read_grocery_list(root, "val.txt", ids), "grocery-val")
    both = sorted({p for p, _ in train.items} & {p for p, _ in val.items})
    if both:  # trained on and scored as unseen: every number would be inflated
        raise InputError(f"{root}: {len(both)} image(s) listed in both train.txt and val.txt, e.g. {both[0]}")
    gallery = ImageSet(root, labels, iconic, "grocery-iconic")
    everything = ImageSet(root, labels, train.items + val.items, "grocery")
    return Dataset("grocery", everything, train, val, gallery, {"coarse": coarse})


def load_parts_layout(root: str | os.PathLike[str]) -> Dataset:
    """Generated layout (``images.csv`` + ``parts.csv``); catalogue images form the gallery."""
    root = Path(root)
    parts_csv, images_csv = root / "parts.csv", root / "images.csv"
    for p in (parts_csv, images_csv):
        if not p.is_file():
            raise InputError(f"{p}: missing (parts layout needs parts.csv and images.csv)")
    from edge_app.runtime.importer import read_csv_rows

    labels = sorted({r["part_number"] for r in read_csv_rows(parts_csv, ("part_number",))})
    index = {lab: i for i, lab in enumerate(labels)}
    items, catalogue = [], []
    seen: dict[str, int] = {}
    for n, r in enumerate(read_csv_rows(images_csv, ("path", "part_number")), 2):
        pn = r.get("part_number")
        if pn not in index:
            raise InputError(f"{images_csv}:{n}: part_number {pn!r} is not in parts.csv")
        rel = _list_path(r["path"], images_csv, n)
        if rel in seen:  # a split would list it twice (and then refuse its own file), maybe under two labels
            raise InputError(f"{images_csv}:{n}: {rel} is already listed on line {seen[rel]}")
        seen[rel] = n
        item = (rel, index[pn])
        items.append(item)
        if r.get("kind") == "catalogue":
            catalogue.append(item)
    images = ImageSet(root, labels, items, root.name)  # read_csv_rows refused an images.csv with no rows
    gallery = ImageSet(root, labels, catalogue, root.name + "-catalogue") if catalogue else None
    return Dataset("parts", images, gallery=gallery)


def detect_layout(root: str | os.PathLike[str]) -> str:
    root = Path(root)
    if (root / "classes.csv").is_file() and (root / "train.txt").is_file():
        return "grocery"
    if (root / "images.csv").is_file() and (root / "parts.csv").is_file():
        return "parts"
    return "folder"


def load_dataset(root: str | os.PathLike[str], layout: str = "auto") -> Dataset:
    """Load any supported layout (``auto`` detects it)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    kind = detect_layout(root) if layout == "auto" else layout
    if kind == "grocery":
        return load_grocery(root)
    if kind == "parts":
        return load_parts_layout(root)
    if kind == "folder":
        return Dataset("folder", load_image_folder(root))
    raise InputError(f"unknown dataset layout {layout!r} (auto, folder, grocery, parts)")


# ---------------------------------------------------------------- torch datasets


def cache_size(spec: PreprocessSpec, scale: float = 1.25) -> int:
    """Longest side kept for an in-memory training cache (room for random crops)."""
    return int(round(max(spec.size) * scale))


def decode_for_cache(path: Path, spec: PreprocessSpec, scale: float = 1.25) -> np.ndarray:
    """Decode once and keep a uint8 HWC array no longer than ``cache_size`` (aspect kept)."""
    from PIL import Image

    img = load_image(path, draft_size=spec.draft_size)
    side = cache_size(spec, scale)
    if max(img.size) > side:
        img.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


class TorchImageDataset:
    """A torch-style dataset over an :class:`ImageSet`.

    ``transform``: ``None`` = the device's eval transform (:func:`preprocess_image` on the full
    decode); otherwise ``transform(pil_rgb) -> float32 CHW``. ``cache=True`` decodes every image
    once up front (uint8, see :func:`decode_for_cache`); unreadable images are then dropped and
    listed in ``skipped``. Without a cache an unreadable image yields ``None`` (dropped by
    :func:`collate_skip`) and is listed in ``skipped``.
    """

    def __init__(self, images: ImageSet, spec: PreprocessSpec, transform: Callable[[Any], np.ndarray] | None = None,
                 *, cache: bool = False, progress: bool = False) -> None:
        self.images = images
        self.spec = spec
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        self.items = list(images.items)
        #: for each item, its index in ``images.items`` (the cache drops unreadable images)
        self.source_index = list(range(len(self.items)))
        self._cache: list[np.ndarray] | None = None
        if cache:
            self._fill_cache(progress)

    def _fill_cache(self, progress: bool) -> None:
        from tqdm import tqdm

        kept, arrays, source = [], [], []
        decoded: dict[str, np.ndarray] = {}  # an image listed several times (gallery repeats) is decoded once
        for j, (rel, y) in enumerate(tqdm(self.items, desc=f"decode {self.images.name}", disable=not progress,
                                          leave=False)):
            try:
                if rel not in decoded:
                    decoded[rel] = decode_for_cache(self.images.root / rel, self.spec)
                arrays.append(decoded[rel])
                kept.append((rel, y))
                source.append(j)
            except ImageError as exc:
                log.warning("skipping unreadable image %s", exc)
                self.skipped.append((rel, exc.reason))
        self.items, self._cache, self.source_index = kept, arrays, source

    def __len__(self) -> int:
        return len(self.items)

    def _pil(self, i: int):
        from PIL import Image

        if self._cache is not None:
            return Image.fromarray(self._cache[i])
        return load_image(self.images.root / self.items[i][0], draft_size=self.spec.draft_size)

    def __getitem__(self, i: int):
        import torch

        rel, y = self.items[i]
        try:
            img = self._pil(i)
        except ImageError as exc:
            log.warning("skipping unreadable image %s", exc)
            self.skipped.append((rel, exc.reason))
            return None
        arr = preprocess_image(img, self.spec) if self.transform is None else self.transform(img)
        return torch.from_numpy(arr), y, i


def collate_skip(batch: list):
    """Default collate that drops ``None`` items (unreadable images); ``None`` for an empty batch."""
    import torch

    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    xs, ys, idx = zip(*batch)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), torch.tensor(idx, dtype=torch.long)

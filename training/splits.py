"""Stratified, seeded, duplicate-aware train/val splits, stored as hashed JSON files.

Near-duplicate groups (union-find over the audit's near-duplicate pairs) are assigned as a
whole, so no image has a near-copy on the other side. Groups are visited in a seeded order and
go to val while the val count of the group's majority label is under its target
(``round(n_class * val_fraction)``), which keeps every class close to the requested fraction.

File (``partlens-split/1``): paths are relative to the dataset root, each with its label name;
``sha256`` is over the canonical JSON of everything else and is verified on load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.atomic import atomic_write_json
from edge_app.errors import InputError, IntegrityError, UsageError
from edge_app.partfolders import part_folder

from .audit import DHASH_THRESHOLD, PHASH_THRESHOLD, audit_records, duplicate_groups, near_duplicate_pairs
from .data import ImageSet, load_dataset

log = logging.getLogger(__name__)

SPLIT_FORMAT = "partlens-split/1"
#: which assignment rule wrote a split (2: targets round halves up, a group goes to val only if that brings its
#: class nearer its target, commit 063b7c5); files without the field were written by the first rule, so
#: ``partlens split`` with their seed no longer remakes them exactly (they stay valid: their hash is checked)
#: 3 (20th session): near-duplicates include left-right mirrored copies (``training.audit.near_duplicate_pairs``)
SPLIT_ALGORITHM = 3


@dataclass
class Split:
    train: ImageSet
    val: ImageSet
    doc: dict[str, Any]
    path: Path | None = None

    @property
    def sha256(self) -> str:
        return self.doc["sha256"]


def content_sha256(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def assign_groups(labels: list[int], groups: list[list[int]], val_fraction: float, seed: int) -> list[bool]:
    """``is_val`` per item; every group lands on one side, per-class val counts near the fraction."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val fraction must be in (0, 1), got {val_fraction}")
    n_per_class = Counter(labels)
    target = {c: math.floor(n * val_fraction + 0.5) for c, n in n_per_class.items()}  # halves up, not to even
    in_val = Counter()
    order = sorted(groups, key=lambda g: min(g))
    random.Random(seed).shuffle(order)
    is_val = [False] * len(labels)
    for g in order:
        counts = Counter(labels[i] for i in g)
        majority = counts.most_common(1)[0][0]
        # a group goes to val only if that brings its class nearer its target (a 10-image group must not
        # fill a target of 4), and never takes a class's last training images
        if len(g) >= 2 * (target[majority] - in_val[majority]):
            continue
        if any(n_per_class[c] - in_val[c] - k < 1 for c, k in counts.items()):
            continue
        for i in g:
            is_val[i] = True
            in_val[labels[i]] += 1
    return is_val


def make_split(root: str | os.PathLike[str], *, val_fraction: float = 0.2, seed: int = 0, name: str | None = None,
               phash_threshold: int = PHASH_THRESHOLD, dhash_threshold: int = DHASH_THRESHOLD,
               progress: bool = False) -> dict[str, Any]:
    """Compute a duplicate-aware split of the dataset at ``root``; returns the split document."""
    root = Path(root)
    images = load_dataset(root).images
    records = audit_records(root, progress=progress)
    by_path = {r.path: r for r in records}
    recs = [by_path[rel] for rel, _ in images.items]
    unreadable = [r.path for r in recs if r.error]
    pairs = near_duplicate_pairs(recs, phash_threshold, dhash_threshold)
    multi = duplicate_groups(len(recs), pairs)
    in_multi = {i for g in multi for i in g}
    groups = multi + [[i] for i in range(len(recs)) if i not in in_multi]
    labels = images.targets()
    is_val = assign_groups(labels, groups, val_fraction, seed)
    train = [[rel, images.labels[y]] for (rel, y), v in zip(images.items, is_val) if not v]
    val = [[rel, images.labels[y]] for (rel, y), v in zip(images.items, is_val) if v]
    cross = sum(1 for i, j, *_ in pairs if labels[i] != labels[j])
    no_val = sorted(set(images.labels) - {lab for _, lab in val})
    if no_val:  # too few images, or one duplicate group: nothing of these classes is ever validated
        log.warning("%d class(es) have no validation image (too few images, or all in one near-duplicate group): "
                    "%s", len(no_val), ", ".join(no_val[:10]) + (", ..." if len(no_val) > 10 else ""))
    doc: dict[str, Any] = {
        "format": SPLIT_FORMAT,
        "name": name or root.name,
        "dataset": root.name,
        "seed": seed,
        "algorithm": SPLIT_ALGORITHM,
        "val_fraction": val_fraction,
        "labels": images.labels,
        "dedup": {"method": "phash64+dhash64+mirror", "phash_threshold": phash_threshold, "dhash_threshold": dhash_threshold,
                  "pairs": len(pairs), "cross_label_pairs": cross, "groups": len(multi),
                  "images_in_groups": len(in_multi)},
        "counts": {"train": len(train), "val": len(val), "unreadable": len(unreadable),
                   "val_per_class": dict(sorted(Counter(lab for _, lab in val).items()))},
        "unreadable": unreadable,
        "train": train,
        "val": val,
    }
    doc["sha256"] = content_sha256(doc)
    return doc


def write_split(doc: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    return atomic_write_json(out, doc)


def read_split(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a split file (format and content hash)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: not a JSON split file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise IntegrityError(f"{path}: not a {SPLIT_FORMAT} file")
    if doc.get("sha256") != content_sha256(doc):
        raise IntegrityError(f"{path}: content hash mismatch (the split file was edited or truncated)")
    _check_shape(doc, path)
    return doc


def _check_shape(doc: dict[str, Any], path: Path) -> None:
    """A hashed split file can still be ill-formed (written by hand, hash recomputed): say so, not a traceback."""
    if not isinstance(doc.get("labels"), list) or not all(isinstance(x, str) for x in doc["labels"]):
        raise IntegrityError(f"{path}: 'labels' must be a list of class names")
    for side in ("train", "val"):
        rows = doc.get(side)
        if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rows):
            raise IntegrityError(f"{path}: '{side}' must be a list of [path, label] pairs")
        seen: set[str] = set()
        for rel, _ in rows:
            if rel in seen:
                raise IntegrityError(f"{path}: {rel} is listed twice in '{side}'")
            seen.add(rel)


def file_sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def apply_split(doc: dict[str, Any], images: ImageSet, source: str = "split") -> tuple[ImageSet, ImageSet]:
    """(train, val) image sets; every listed path must exist in the dataset with the same label."""
    if list(doc["labels"]) != list(images.labels):
        raise IntegrityError(f"{source}: labels differ from the dataset at {images.root}")
    index = dict(images.items)
    out = []
    for side in ("train", "val"):
        items = []
        for rel, lab in doc[side]:
            if rel not in index:
                raise InputError(f"{source}: {rel} is not in the dataset at {images.root}")
            if images.labels[index[rel]] != lab:
                raise IntegrityError(f"{source}: {rel} is labelled {lab!r} in the split, "
                                     f"{images.labels[index[rel]]!r} in the dataset")
            items.append((rel, index[rel]))
        out.append(ImageSet(images.root, images.labels, items, f"{images.name}-{side}"))
    overlap = {r for r, _ in out[0].items} & {r for r, _ in out[1].items}
    if overlap:
        raise IntegrityError(f"{source}: {len(overlap)} image(s) on both sides, e.g. {sorted(overlap)[0]}")
    listed = {r for r, _ in doc["train"]} | {r for r, _ in doc["val"]}
    unlisted = sorted(r for r in index if r not in listed)
    if unlisted:  # added after the split was written: neither trained on nor scored
        log.warning("%s: %d image(s) of the dataset at %s are on neither side (added after the split was "
                    "written?), e.g. %s; write a new split to use them", source, len(unlisted), images.root,
                    unlisted[0])
    if doc.get("dataset") and doc["dataset"] != Path(images.root).name:
        log.warning("%s was written for the dataset %r, applied to the one at %s", source, doc["dataset"],
                    images.root)
    return out[0], out[1]


def load_split(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Split:
    """Read, verify and apply a split file to the dataset at ``root``."""
    doc = read_split(path)
    train, val = apply_split(doc, load_dataset(root).images, str(path))
    return Split(train, val, doc, Path(path))


def kfold_groups(labels: list[int], groups: list[list[int]], k: int, seed: int) -> list[int]:
    """Fold index per item for stratified, group-aware k-fold CV (a group never spans two folds).

    Groups are dealt per majority class, in a seeded order, to the fold holding the fewest
    images of that class so far.
    """
    if k < 2:
        raise UsageError(f"k must be >= 2, got {k}")
    rng = random.Random(seed)
    order = sorted(groups, key=lambda g: min(g))
    rng.shuffle(order)
    counts = [Counter() for _ in range(k)]
    fold = [0] * len(labels)
    for g in order:
        majority = Counter(labels[i] for i in g).most_common(1)[0][0]
        f = min(range(k), key=lambda j: (counts[j][majority], sum(counts[j].values()), rng.random()))
        for i in g:
            fold[i] = f
            counts[f][labels[i]] += 1
    return fold


def duplicate_aware_groups(root: str | os.PathLike[str], images: ImageSet) -> list[list[int]]:
    """Near-duplicate groups (and singletons) over ``images``' items, as index lists."""
    records = {r.path: r for r in audit_records(root)}
    recs = [records[rel] for rel, _ in images.items]
    multi = duplicate_groups(len(recs), near_duplicate_pairs(recs))
    seen = {i for g in multi for i in g}
    return multi + [[i] for i in range(len(recs)) if i not in seen]


def recorded_data_path(meta: dict[str, Any]) -> str | None:
    """The data folder a ``partlens train`` checkpoint was trained on: absolute since runs record it, else as typed."""
    extra = meta.get("extra") or {}
    return extra.get("data_path") or (extra.get("train_config") or {}).get("data")


def checkpoint_split(meta: dict[str, Any], what: str = "the checkpoint") -> tuple[ImageSet, ImageSet, str]:
    """The (train, val) image sets a ``partlens train`` checkpoint was trained and validated on, rebuilt from the
    training config and split it records, and a one-line description of where they came from.

    A split file must still hash to what training recorded; the data folder must be where training read it.
    """
    extra = meta.get("extra") or {}
    cfg, info = extra.get("train_config"), extra.get("split")
    if not cfg or not info:
        raise UsageError(f"{what} records no training split (not made by `partlens train`)")
    source = str(info.get("source", ""))
    if source == "caller":
        raise UsageError(f"{what} was trained on image sets given by a program ({info.get('train')}), "
                         "not on a split that can be rebuilt")
    data = Path(recorded_data_path(meta))
    if not data.is_dir():
        raise InputError(f"{what} was trained on {data}, which is not here")
    if info.get("path"):
        s = load_split(info["path"], data)
        if info.get("sha256") and s.sha256 != info["sha256"]:
            raise IntegrityError(f"{info['path']}: the split changed since {what} was trained")
        return s.train, s.val, f"split {info['path']} of {data}"
    ds = load_dataset(data, cfg.get("layout", "auto"))
    if ds.train is None or ds.val is None:
        raise InputError(f"{data}: the layout has no train/val lists any more ({what}: {source})")
    return ds.train, ds.val, f"{source} of {data}"


def link_image_folders(sets: dict[str, ImageSet], dest: str | os.PathLike[str]) -> dict[str, Path]:
    """Symlink each image set into ``dest/<name>/<label>/<file>`` (an ImageFolder for folder-based tools);
    file names carry the relative path, so two images with one base name stay apart."""
    out = {}
    for name, images in sets.items():
        root = Path(dest) / name
        for rel, y in images.items:
            link = root / part_folder(images.labels[y]) / rel.replace("/", "__")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((images.root / rel).resolve())
        out[name] = root
    return out

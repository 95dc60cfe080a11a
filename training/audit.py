"""Dataset audit: unreadable files, odd colour modes, tiny images, near-duplicates (also across labels).

Near-duplicates: two images whose 64-bit pHash differ in <= ``phash_threshold`` bits **and** whose
64-bit dHash differ in <= ``dhash_threshold`` bits (both hashes must agree; either alone
over-matches plain white-background product shots). On pc-parts-14 the defaults (8, 12) find
~290 pairs; the exact-hash pairs alone are the ~256 the dataset README describes.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_app.atomic import atomic_write_bytes
from edge_app.errors import ImageError, InputError
from edge_app.imageio import iter_image_files, load_image

from .data import load_dataset
from .phash import DHASH_THRESHOLD, PHASH_THRESHOLD, UnionFind, dhash, hamming_cross_pairs, hamming_pairs, phash

log = logging.getLogger(__name__)

TINY_SIDE = 64


@dataclass
class ImageRecord:
    path: str
    label: str | None
    mode: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    dhash: int | None = None
    phash: int | None = None
    error: str | None = None
    #: the hashes of the image mirrored left-right: a flipped copy is a near-duplicate too
    dhash_mirror: int | None = None
    phash_mirror: int | None = None


@dataclass
class AuditReport:
    root: str
    n_images: int
    unreadable: list[dict[str, str]] = field(default_factory=list)
    grayscale: list[str] = field(default_factory=list)
    cmyk: list[str] = field(default_factory=list)
    rgba: list[str] = field(default_factory=list)
    palette: list[str] = field(default_factory=list)
    tiny: list[str] = field(default_factory=list)
    duplicate_pairs: list[dict[str, Any]] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    thresholds: dict[str, int] = field(default_factory=dict)
    #: False when the folder did not load as a dataset (then no label is known: cross-label pairs are not found)
    labelled: bool = True
    unlabelled_because: str | None = None

    @property
    def cross_label_pairs(self) -> list[dict[str, Any]]:
        return [p for p in self.duplicate_pairs if p["label_a"] != p["label_b"]]

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.n_images,
            "labelled": self.labelled,
            "unreadable": len(self.unreadable),
            "grayscale": len(self.grayscale),
            "cmyk": len(self.cmyk),
            "rgba": len(self.rgba),
            "palette": len(self.palette),
            "tiny": len(self.tiny),
            "duplicate_pairs": len(self.duplicate_pairs),
            "duplicate_images": sum(len(g) for g in self.duplicate_groups),
            "duplicate_groups": len(self.duplicate_groups),
            "cross_label_pairs": len(self.cross_label_pairs),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary()
        d["cross_label_pairs"] = self.cross_label_pairs
        return d


def inspect_image(path: Path, label: str | None, rel: str) -> ImageRecord:
    """Header facts (original mode, size) plus hashes of the decoded image; errors are recorded."""
    from PIL import Image

    rec = ImageRecord(rel, label)
    try:
        with Image.open(path) as im:
            rec.mode, rec.format = im.mode, im.format or ""
            rec.width, rec.height = im.size
            rec.mode += "+transparency" if im.mode == "P" and "transparency" in im.info else ""
    except Exception as exc:  # noqa: BLE001 - recorded, load_image below gives the canonical reason
        log.debug("%s: header unreadable: %s", path, exc)
    try:
        img = load_image(path, draft_size=(64, 64))
    except ImageError as exc:
        rec.error = exc.reason
        return rec
    rec.dhash, rec.phash = dhash(img), phash(img)
    from PIL import ImageOps

    flipped = ImageOps.mirror(img)
    rec.dhash_mirror, rec.phash_mirror = dhash(flipped), phash(flipped)
    return rec


def _labelled_items(root: Path) -> tuple[list[tuple[str, str | None]], str | None]:
    """(relative path, label) of every image: the dataset's own labels, else unlabelled files (and why the
    folder is not a labelled dataset: then near-duplicates across labels cannot be found)."""
    if root.is_file():
        return [(root.name, None)], "a single file"
    try:
        ds = load_dataset(root)
    except InputError as exc:
        log.warning("%s is not a labelled dataset (%s): auditing its images unlabelled, so near-duplicates "
                    "across labels cannot be found", root, exc)
        return [(p.relative_to(root).as_posix(), None) for p in iter_image_files(root)], str(exc)
    items = [(rel, ds.images.labels[y]) for rel, y in ds.images.items]
    if ds.gallery is not None:
        seen = {rel for rel, _ in items}
        items += [(rel, ds.gallery.labels[y]) for rel, y in ds.gallery.items if rel not in seen]
    return items, None


#: a left-right mirrored copy counts as a near-duplicate only this close (pHash and dHash bits, one orientation)
MIRROR_PHASH_THRESHOLD = 4
MIRROR_DHASH_THRESHOLD = 4


def near_duplicate_pairs(records: list[ImageRecord], phash_threshold: int = PHASH_THRESHOLD,
                         dhash_threshold: int = DHASH_THRESHOLD) -> list[tuple[int, int, int, int]]:
    """``(i, j, phash distance, dhash distance)`` for every near-duplicate pair of readable records: as they are,
    or one of them mirrored left-right (a flipped copy; then the distances are to the mirrored image)."""
    import numpy as np

    def dist(a: int | None, b: int | None) -> int:
        return int(np.bitwise_count(np.uint64(a) ^ np.uint64(b)))

    ok = [i for i, r in enumerate(records) if r.phash is not None]
    found: dict[tuple[int, int], tuple[int, int]] = {}
    for a, b, dp in hamming_pairs([records[i].phash for i in ok], phash_threshold):
        i, j = ok[a], ok[b]
        dd = dist(records[i].dhash, records[j].dhash)
        if dd <= dhash_threshold:
            found[(i, j)] = (dp, dd)
    # Mirrored copies need a much closer match, both hashes in ONE orientation: on centred product shots the
    # mirrored comparison is near chance at the plain thresholds (pc-parts-14: 11 extra pairs, all unrelated
    # products, e.g. a keyboard and a RAM stick at pHash 8-10 mirrored, 30 direct), while a real flipped copy is 0-2.
    mirrored = [i for i in ok if records[i].phash_mirror is not None]
    mp, md = min(phash_threshold, MIRROR_PHASH_THRESHOLD), min(dhash_threshold, MIRROR_DHASH_THRESHOLD)
    for a, b, _dp in hamming_cross_pairs([records[i].phash for i in mirrored],
                                         [records[i].phash_mirror for i in mirrored], mp):
        i, j = mirrored[a], mirrored[b]
        if (i, j) in found:
            continue
        ri, rj = records[i], records[j]
        for dp, dd in ((dist(ri.phash, rj.phash_mirror), dist(ri.dhash, rj.dhash_mirror)),
                       (dist(ri.phash_mirror, rj.phash), dist(ri.dhash_mirror, rj.dhash))):
            if dp <= mp and dd <= md:
                found[(i, j)] = (dp, dd)
                break
    return [(i, j, dp, dd) for (i, j), (dp, dd) in sorted(found.items())]


def duplicate_groups(n: int, pairs: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Connected components (union-find) of the near-duplicate graph, only groups of 2+."""
    uf = UnionFind(n)
    for i, j, *_ in pairs:
        uf.union(i, j)
    return [g for g in uf.groups() if len(g) > 1]


def audit_records(root: str | os.PathLike[str], *, progress: bool = False) -> list[ImageRecord]:
    """Inspect every image of a dataset (any layout) or of a plain folder."""
    return _audit_records(Path(root), progress)[0]


def _audit_records(root: Path, progress: bool) -> tuple[list[ImageRecord], str | None]:
    from tqdm import tqdm

    items, unlabelled = _labelled_items(root)
    base = root.parent if root.is_file() else root
    return [inspect_image(base / rel, label, rel)
            for rel, label in tqdm(items, desc="audit", disable=not progress, leave=False)], unlabelled


def audit(root: str | os.PathLike[str], *, phash_threshold: int = PHASH_THRESHOLD,
          dhash_threshold: int = DHASH_THRESHOLD, tiny_side: int = TINY_SIDE, progress: bool = False) -> AuditReport:
    """Audit a dataset folder; see the module docstring for the duplicate rule."""
    root = Path(root)
    records, unlabelled = _audit_records(root, progress)
    rep = AuditReport(str(root.parent if root.is_file() else root), len(records),
                      thresholds={"phash": phash_threshold, "dhash": dhash_threshold, "tiny_side": tiny_side},
                      labelled=unlabelled is None, unlabelled_because=unlabelled)
    for r in records:
        if r.error:
            rep.unreadable.append({"path": r.path, "reason": r.error})
            continue
        base = r.mode.split("+")[0]
        if base in ("L", "LA", "1", "I", "I;16", "F"):
            rep.grayscale.append(r.path)
        if base == "CMYK":
            rep.cmyk.append(r.path)
        if base in ("RGBA", "LA", "PA", "RGBa") or r.mode.endswith("+transparency"):
            rep.rgba.append(r.path)
        if base == "P":
            rep.palette.append(r.path)
        if min(r.width, r.height) < tiny_side:
            rep.tiny.append(r.path)
    pairs = near_duplicate_pairs(records, phash_threshold, dhash_threshold)
    rep.duplicate_pairs = [
        {"a": records[i].path, "b": records[j].path, "label_a": records[i].label, "label_b": records[j].label,
         "phash_distance": dp, "dhash_distance": dd}
        for i, j, dp, dd in pairs
    ]
    rep.duplicate_groups = [[records[i].path for i in g] for g in duplicate_groups(len(records), pairs)]
    log.info("audit %s: %s", root, rep.summary())
    return rep


def contact_sheet(report: AuditReport, out: str | os.PathLike[str], *, max_pairs: int = 60, thumb: int = 128) -> Path:
    """PNG of near-duplicate pairs (cross-label pairs first), labels printed under each thumbnail."""
    from PIL import Image, ImageDraw

    pairs = sorted(report.duplicate_pairs, key=lambda p: (p["label_a"] == p["label_b"], p["a"]))[:max_pairs]
    cols, label_h = 2, 28
    rows = max(1, len(pairs))
    sheet = Image.new("RGB", (cols * thumb * 2 + 3 * 8, rows * (thumb + label_h) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    root = Path(report.root)
    for k, p in enumerate(pairs):
        y0 = 4 + k * (thumb + label_h)
        colour = "red" if p["label_a"] != p["label_b"] else "black"
        for c, key in enumerate(("a", "b")):
            x0 = 8 + c * (thumb * 2 + 8)
            try:
                img = load_image(root / p[key], draft_size=(thumb, thumb))
                img.thumbnail((thumb * 2, thumb))
                sheet.paste(img, (x0, y0))
            except ImageError:
                draw.rectangle((x0, y0, x0 + thumb, y0 + thumb), outline="red")
            draw.text((x0, y0 + thumb + 2), f"{p['label_' + key]}: {p[key]}"[:48], fill=colour)
    if not pairs:
        draw.text((8, 8), "no near-duplicates found", fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write_bytes(out, buf.getvalue())

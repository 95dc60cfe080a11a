"""Import a catalogue in the generated layout (``parts.csv`` + ``images.csv``) into the device DB.

``parts.csv``: part_number,name,category,manufacturer,description,size_mm,look_alike_group and
any number of ``stock_<site>``/``bin_<site>`` column pairs (one inventory row per site).
``images.csv``: path,part_number,kind,... (paths relative to the CSV's folder); only catalogue
images are imported by default (field photos are queries, not references). One transaction:
a bad row leaves the database as it was.
"""
from __future__ import annotations

import csv
import datetime as _dt
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError, UsageError
from .catalogue import CatalogueDB

log = logging.getLogger(__name__)

#: stock per site and part size bounds: a value beyond them is a typo, not a part
MAX_STOCK = 10**9
MAX_SIZE_MM = 100_000.0
#: a part number is printable text of at most this many characters (it becomes a folder name in exports)
MAX_PART_NUMBER_LEN = 100
#: image kinds of ``images.csv``: reference shots of the part, and photos taken in the field
IMAGE_KINDS = ("catalogue", "field")
PART_FIELDS = ("part_number", "name", "category", "manufacturer", "description", "size_mm", "look_alike_group")


def read_csv_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV with these columns (also the training side's parts layout); InputError naming the
    file (and line) for a missing file or column, text that is not UTF-8, extra fields, or no rows."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            twice = sorted({c for c in cols if c and cols.count(c) > 1})  # ("a,b,," from a spreadsheet: fine)
            if twice:  # DictReader keeps the last one silently
                raise InputError(f"{path}: column {', '.join(twice)} appears more than once in the header")
            missing = [c for c in required if c not in cols]
            if missing:
                raise InputError(f"{path}: no {', '.join(missing)} column (has: {', '.join(cols) or 'nothing'})")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    for line, r in enumerate(rows, start=2):
        if None in r:  # csv puts the fields beyond the header under the key None
            raise InputError(f"{path}:{line}: more fields than the header has columns")
        if any(v is None for v in r.values()):  # and None for the fields a short row lacks
            raise InputError(f"{path}:{line}: fewer fields than the header has columns")
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def check_part_number(value: Any, where: str) -> str:
    """A part number as stored: stripped, Unicode NFC (a macOS export writes "Ö" as two code points: it must be
    the same part), non-empty, printable, at most MAX_PART_NUMBER_LEN characters."""
    pn = unicodedata.normalize("NFC", str(value or "").strip())
    if not pn:
        raise InputError(f"{where}: empty part_number")
    if len(pn) > MAX_PART_NUMBER_LEN or not pn.isprintable():
        raise InputError(f"{where}: part_number {pn[:40]!r}{'...' if len(pn) > 40 else ''} must be printable text "
                         f"of at most {MAX_PART_NUMBER_LEN} characters")
    return pn


def parse_size_mm(value: Any, where: str) -> float | None:
    """A part's size in mm: empty is None, else a number above 0 and below MAX_SIZE_MM."""
    if value in (None, ""):
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: size_mm {value!r} is not a number") from None
    if not 0 < size < MAX_SIZE_MM:  # also NaN and infinity
        raise InputError(f"{where}: size_mm {value!r} must be above 0 and below {MAX_SIZE_MM:g}")
    return size


def parse_stock(value: Any, where: str) -> int | None:
    """A stock count: empty is None, else a whole number 0..MAX_STOCK."""
    if value in (None, ""):
        return None
    if not isinstance(value, int) and not re.fullmatch(r"[+-]?[0-9]+", str(value)):  # int() took "1_000", "٣"
        raise InputError(f"{where}: {value!r} is not a whole number")
    stock = int(value)
    if not 0 <= stock <= MAX_STOCK:
        raise InputError(f"{where}: {value!r} must be 0..{MAX_STOCK}")
    return stock


def read_parts_csv(parts_csv: Path, *, as_of: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """``parts.csv`` of the generated layout -> (parts, inventory rows dated ``as_of``, sites), checked row by
    row (the device's import and the hub's read it the same way); InputError naming the file and line."""
    rows = read_csv_rows(parts_csv, ("part_number", "name"))
    sites = sorted(c[len("stock_"):] for c in rows[0] if c.startswith("stock_"))
    if "" in sites:
        raise InputError(f"{parts_csv}: a column is named 'stock_' without a site (stock_<site>)")
    lone_bins = sorted(c for c in rows[0] if c.startswith("bin_") and c[len("bin_"):] not in sites)
    if lone_bins:  # dropped without a word before
        raise InputError(f"{parts_csv}: {', '.join(lone_bins)} without the matching stock_<site> column")
    parts, inventory, seen = [], [], set()
    for line, r in enumerate(rows, start=2):
        where = f"{parts_csv}:{line}"
        pn = check_part_number(r.get("part_number"), where)
        if pn in seen:
            raise InputError(f"{where}: duplicate part_number {pn}")
        seen.add(pn)
        part = {k: ((r.get(k) or "").strip() or None) for k in PART_FIELDS if k in r}
        part["part_number"] = pn
        part["size_mm"] = parse_size_mm((r.get("size_mm") or "").strip(), where)
        parts.append(part)
        for col_site in sites:
            stock = parse_stock((r.get(f"stock_{col_site}") or "").strip(), f"{where}: stock_{col_site}")
            inventory.append({"part_number": pn, "site": col_site, "stock": stock,
                              "bin": (r.get(f"bin_{col_site}") or "").strip() or None, "as_of": as_of})
    return parts, inventory, sites


def read_images_csv(images_csv: str | os.PathLike[str], kinds: Sequence[str], is_known: Callable[[str], bool],
                    parts_csv: str | os.PathLike[str] = "parts.csv") -> list[dict[str, Any]]:
    """The rows of ``images.csv`` to import (the device's import and the hub's read it the same way): kinds among
    :data:`IMAGE_KINDS` (others and unknown ``kinds`` refused), part numbers as :func:`check_part_number` stores
    them and known (``is_known``), files inside the CSV's folder, each listed once (also under another spelling of
    its path), each an image. Rows ``{"image_id", "part_number", "path", "kind"}`` (``path`` resolved)."""
    unknown_kinds = sorted(set(kinds) - set(IMAGE_KINDS))
    if unknown_kinds:  # imported 0 images without a word before
        raise UsageError(f"unknown image kind(s) {', '.join(unknown_kinds)} (known: {', '.join(IMAGE_KINDS)})")
    images_csv = Path(images_csv)
    root = images_csv.parent.resolve()
    images: list[dict[str, Any]] = []
    paths_seen: dict[Path, int] = {}
    for line, r in enumerate(read_csv_rows(images_csv, ("path", "part_number")), start=2):
        where = f"{images_csv}:{line}"
        kind = (r.get("kind") or "").strip() or "catalogue"
        if kind not in IMAGE_KINDS:  # "Catalogue" was skipped as another kind, silently
            raise InputError(f"{where}: kind {kind!r} is not one of {', '.join(IMAGE_KINDS)}")
        if kind not in kinds:
            continue
        pn = check_part_number(r["part_number"], where)  # stripped and normalised as in parts.csv
        if not is_known(pn):
            raise InputError(f"{where}: part {pn!r} is not in {parts_csv}")
        rel = (r["path"] or "").strip()
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise InputError(f"{where}: {rel!r} is outside the CSV's folder {root}")
        if not path.is_file():
            raise InputError(f"{where}: {path}: no such image")
        if path in paths_seen:  # one file listed for two parts (also as ./a.png or by its absolute path)
            raise InputError(f"{where}: {rel} is listed twice (first on line {paths_seen[path]})")
        _check_image_file(path, where)
        paths_seen[path] = line
        images.append({"image_id": rel, "part_number": pn, "path": str(path), "kind": kind})
    return images


def import_catalogue(db: CatalogueDB, parts_csv: str | os.PathLike[str], images_csv: str | os.PathLike[str] | None
                     = None, *, kinds: Sequence[str] = ("catalogue",), as_of: str | None = None,
                     site: str | None = None) -> dict[str, Any]:
    """Upsert parts, inventory and images; bump ``catalogue_version``; return counts.

    ``as_of`` (ISO time the stock figures date from) defaults to the modification time of
    ``parts_csv``; it is stored per inventory row and as ``meta.hub_time``. ``site``: this device's site,
    set in the same transaction. A catalogue a hub keeps (synced) is refused: its versions are the hub's, and
    a local import would make the next syncs skip hub changes.
    """
    hub_id = db.get_meta("hub_id")
    if hub_id or db.get_meta("managed_by_hub"):
        raise UsageError(f"{db.path}: this catalogue is kept by a hub{' (' + hub_id + ')' if hub_id else ''}: add "
                         "the parts at the hub (`partlens hub import`) and sync; a local import would make the next "
                         "syncs skip hub changes")
    parts_csv = Path(parts_csv)
    if as_of is None and parts_csv.is_file():  # (a missing file is read_parts_csv's error)
        as_of = _dt.datetime.fromtimestamp(parts_csv.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    parts, inventory, sites = read_parts_csv(parts_csv, as_of=as_of or "")
    seen = {p["part_number"] for p in parts}
    images = read_images_csv(images_csv, kinds, seen.__contains__, parts_csv) if images_csv is not None else []
    with db.read():
        others = [r[0] for r in db.db.conn.execute("SELECT part_number FROM parts") if r[0] not in seen]
    if others:  # an import adds and updates; it never deletes (say so: their stock would look current)
        log.warning("%d part(s) in %s are not in %s and stay as they were (their stock dates from an earlier "
                    "import), e.g. %s", len(others), db.path, parts_csv, ", ".join(others[:5]))
    with db.transaction():
        if site:
            db.set_meta("site", site)
        db.upsert_parts(parts)
        db.upsert_inventory(inventory)
        db.upsert_images(images)
        version = db.catalogue_version + 1
        db.set_meta("catalogue_version", version)
        db.set_meta("hub_time", as_of)
    log.info("imported %d parts, %d inventory rows, %d images (catalogue version %d)", len(parts), len(inventory),
             len(images), version)
    return {"parts": len(parts), "inventory": len(inventory), "images": len(images), "sites": sites,
            "catalogue_version": version, "as_of": as_of, "parts_not_in_file": len(others)}


def _check_image_file(path: Path, where: str) -> None:
    """An image Pillow recognises (header only: cheap); a CSV or a document listed as a catalogue image is refused."""
    from ..imageio import header_error

    reason = header_error(path)
    if reason is not None:
        raise InputError(f"{where}: {path.name} is not an image ({reason})")

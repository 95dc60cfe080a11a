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
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError, UsageError
from ..partfolders import normal_part_number
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


#: the delimiters a catalogue export uses: comma; semicolon (Excel where the decimal mark is a comma); tab
DELIMITERS = (",", ";", "\t")


def _encoding(path: Path) -> str:
    """UTF-16 when the file starts with its BOM (Excel's "Unicode text"), else UTF-8 (a BOM is dropped)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def _not_utf8(path: Path, where: str, exc: UnicodeDecodeError) -> InputError:
    return InputError(f"{path}{where}: not UTF-8 text ({exc.reason}); save it as UTF-8 (Excel: \"CSV UTF-8 (Comma "
                      "delimited)\"), so names like \"Dichtung Ø20\" arrive as written")


def _header_name(raw: str, known: Sequence[str], prefixes: Sequence[str]) -> str:
    """A header cell as partlens names it: ``Part Number`` / ``PART_NUMBER`` is ``part_number``, ``Stock_site_a``
    is ``stock_site_a`` (the site keeps its spelling; ``Stock Total`` is not a stock column); anything else stays as
    written."""
    name = raw.strip()
    low = name.lower()
    if low.replace(" ", "_") in known:
        return low.replace(" ", "_")
    for prefix in prefixes:  # the underscore as written: "Stock Total" or "Bin Location" is no site's column
        if low.startswith(prefix):
            return prefix + name[len(prefix):].strip()
    return name


def _site_pairs(cols: list[str], prefixes: Sequence[str]) -> list[str]:
    """``Stock site_a`` and ``Bin site_a`` side by side (an ERP export's spelling, with a space) are the site's
    columns: the pair says so, where ``Stock Total`` alone is no site (an audit: the stock of a first import was
    dropped with a warning, and the import went on with none)."""
    if not {"stock_", "bin_"} <= set(prefixes):
        return cols
    spaced = {}
    for i, c in enumerate(cols):
        word, _, rest = c.partition(" ")
        if rest.strip() and word.lower() in ("stock", "bin") and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
                                                                              rest.strip()):
            spaced.setdefault(rest.strip(), {})[word.lower()] = i
    out = list(cols)
    for site, where in spaced.items():
        if set(where) == {"stock", "bin"}:
            out[where["stock"]], out[where["bin"]] = f"stock_{site}", f"bin_{site}"
    return out


def read_csv_records(path: Path, required: Sequence[str], known: Sequence[str] = (),
                     prefixes: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV with these columns; InputError naming the file (and line) for a missing file or
    column, text that is not UTF-8 (or UTF-16 with a BOM), a field that opens a quote and does not close it
    properly, extra or missing fields, or no rows. The delimiter may be a comma, semicolon or tab (read from the
    header); header names in ``known`` and starting with ``prefixes`` are matched without regard to case and
    spaces; rows with every field empty (a spreadsheet's trailing ``,,,``) are skipped."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="", encoding=_encoding(path)) as fh:  # streamed: a 100 MB export is not held twice
        try:
            first = fh.readline()
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, "", exc) from None
        fh.seek(0)
        delimiter = max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","
        # strict: a field that opens a quote must close it right before a delimiter; otherwise an inch mark
        # ("Hose 1/2" or "1/2 inch...) silently swallowed the rows up to the next quote into one name (an audit)
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            return _records(path, reader, required, known, prefixes)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, f" near line {reader.line_num + 1}", exc) from None


def _records(path: Path, reader: Any, required: Sequence[str], known: Sequence[str],
             prefixes: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    line = 1  # where the record being read starts (a stray quote is reported where it opened, not where csv gave up)
    try:
        header = next(reader, None) or []
        cols = _site_pairs([_header_name(c, known, prefixes) for c in header], prefixes)
        twice = sorted({c for c in cols if c and cols.count(c) > 1})  # ("a,b,," from a spreadsheet: fine)
        if twice:
            raise InputError(f"{path}: column {', '.join(twice)} appears more than once in the header")
        missing = [c for c in required if c not in cols]
        if missing:
            raise InputError(f"{path}: no {', '.join(missing)} column (has: {', '.join(cols) or 'nothing'})")
        records = []
        line = reader.line_num + 1
        for fields in reader:
            if any(f.strip() for f in fields):
                if len(fields) > len(cols) and any(f.strip() for f in fields[len(cols):]):
                    raise InputError(f"{path}:{line}: more fields than the header has columns")
                if len(fields) < len(cols):
                    raise InputError(f"{path}:{line}: fewer fields than the header has columns")
                records.append((line, dict(zip(cols, fields))))
            line = reader.line_num + 1
    except csv.Error as exc:
        quote = "expected after" in str(exc) or "end of data" in str(exc)
        raise InputError(f"{path}:{line}: {exc}" + (
            ": a field that starts with a double quote must end with one, and a quote inside it is doubled (an "
            "inch mark: write the field as \"Hose 1/2\"\" BSP\" or without quotes as Hose 1/2\" BSP)"
            if quote else "")) from None
    if not records:
        raise InputError(f"{path}: no rows")
    return records


def read_csv_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of :func:`read_csv_records` (also the training side's parts layout)."""
    return [row for _, row in read_csv_records(path, required)]


def check_part_number(value: Any, where: str) -> str:
    """A part number as stored: stripped, Unicode NFC (a macOS export writes "Ö" as two code points: it must be
    the same part), non-empty, printable, at most MAX_PART_NUMBER_LEN characters."""
    pn = normal_part_number(str(value or ""))
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
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+,[0-9]+", text):  # a decimal comma (Excel in a German or French locale): 13,0 mm
        text = text.replace(",", ".")
    try:
        size = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{where}: size_mm {value!r} is not a number (a decimal point or comma, e.g. 12.5)") from None
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
    records = read_csv_records(parts_csv, ("part_number", "name"), PART_FIELDS, ("stock_", "bin_"))
    cols = list(records[0][1])
    sites = sorted(c[len("stock_"):] for c in cols if c.startswith("stock_"))
    if "" in sites:
        raise InputError(f"{parts_csv}: a column is named 'stock_' without a site (stock_<site>)")
    folded = sorted({s for s in sites if [t.casefold() for t in sites].count(s.casefold()) > 1})
    if folded:  # two columns for one site, or two sites no one can tell apart
        raise InputError(f"{parts_csv}: stock columns for sites that differ only in case: {', '.join(folded)}")
    lone_bins = sorted(c for c in cols if c.startswith("bin_") and c[len("bin_"):] not in sites)
    if lone_bins:  # dropped without a word before
        raise InputError(f"{parts_csv}: {', '.join(lone_bins)} without the matching stock_<site> column")
    unread = [c for c in cols if c and c not in PART_FIELDS and not c.startswith(("stock_", "bin_"))]
    if unread:  # ("Category " or "Kategorie": its values were dropped without a word, an audit)
        log.warning("%s: column(s) %s are not read (partlens reads %s, stock_<site>, bin_<site>)", parts_csv,
                    ", ".join(unread), ", ".join(PART_FIELDS))
    parts, inventory = [], []
    seen: dict[str, tuple[str, int]] = {}  # case-folded part number -> (as written, line)
    for line, r in records:
        where = f"{parts_csv}:{line}"
        pn = check_part_number(r.get("part_number"), where)
        first = seen.get(pn.casefold())
        if first is not None and first[0] == pn:
            raise InputError(f"{where}: duplicate part_number {pn} (first on line {first[1]})")
        if first is not None:  # two parts, or one typed twice? the tablet's search folds case: one part to a person
            raise InputError(f"{where}: part_number {pn} differs from {first[0]} (line {first[1]}) only in case")
        seen[pn.casefold()] = (pn, line)
        # only the columns the file has: a narrower export (stock only) wiped the size, bins and the rest
        part = {k: ((r.get(k) or "").strip() or None) for k in PART_FIELDS if k in r}
        part["part_number"] = pn
        if "size_mm" in r:
            part["size_mm"] = parse_size_mm((r.get("size_mm") or "").strip(), where)
        parts.append(part)
        for col_site in sites:
            stock = parse_stock((r.get(f"stock_{col_site}") or "").strip(), f"{where}: stock_{col_site}")
            row = {"part_number": pn, "site": col_site, "stock": stock, "as_of": as_of}
            if f"bin_{col_site}" in r:
                row["bin"] = (r.get(f"bin_{col_site}") or "").strip() or None
            inventory.append(row)
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
    for line, r in read_csv_records(images_csv, ("path", "part_number"), ("path", "part_number", "kind")):
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
        if "\\" in rel and not (root / rel).exists():  # a Windows export: photos\\a.jpg
            rel = rel.replace("\\", "/")
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

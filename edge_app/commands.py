"""``partlens identify`` and ``partlens catalogue``: the device runtime from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError


def _home(args: argparse.Namespace) -> Path:
    """``--data-dir`` (the device folder the sync client and the app use), else the default device folder."""
    from .paths import device_dir

    return device_dir(getattr(args, "data_dir", None))


def _db_path(args: argparse.Namespace) -> Path:
    return Path(args.db) if args.db else _home(args) / "catalogue.db"


def _active_bundle(home: Path, db_path: Path) -> Path:
    from .runtime.catalogue import CatalogueDB
    from .services import active_bundle_dir

    if not db_path.is_file():
        raise InputError(f"{db_path}: no catalogue database (run `partlens catalogue import` or sync)")
    db = CatalogueDB(db_path)
    try:
        return active_bundle_dir(home, db)
    finally:
        db.close()


def _fmt_stock(m: dict[str, Any]) -> str:
    if m.get("site") is None:
        inv = m.get("inventory") or []
        return ", ".join(f"{r['site']}: {r['stock']} @ {r['bin']}" for r in inv) or "no stock data"
    others = ", ".join(f"{r['site']}: {r['stock']} @ {r['bin']}" for r in m.get("inventory") or []
                       if r["site"] != m["site"])
    if m.get("stock") is None:
        return f"no stock data at {m['site']}" + (f" (elsewhere: {others})" if others else "")
    return f"{m['stock']} in stock at {m['site']}, bin {m.get('bin') or '?'}" + (f"; elsewhere: {others}"
                                                                                  if others else "")


def _bundle_and_keyring(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--bundle`` (else the device folder's active bundle) and ``--keyring`` (else the device folder's)."""
    home = _home(args)
    bundle = Path(args.bundle) if args.bundle else _active_bundle(home, _db_path(args))
    return bundle, Path(args.keyring) if args.keyring else home / "keyring.json"


def _identify(args: argparse.Namespace) -> int:
    from .runtime.identify import Identifier

    bundle, keyring = _bundle_and_keyring(args)
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    ident = Identifier.open(bundle, _db_path(args), keyring, backend=args.backend, site=args.site,
                            fusion_method=args.fusion, aggregate=args.aggregate)
    _warn_unknown_site(ident.db, args.site)
    _warn_missing_vectors(ident)
    result = ident.identify(args.photos, top=args.top, in_stock=True if args.in_stock else None,
                            category=args.category, text=args.text)
    d = result.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for s in d["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    head = ("MATCH" if d["status"] == "match" else "NO CONFIDENT MATCH")
    conf = "n/a" if d["confidence"] is None else f"{d['confidence']:.2f}"
    cal = "" if d["calibrated"] else " (UNCALIBRATED: the bundle has no calibration)"
    print(f"{head}  confidence {conf} (threshold {d['threshold']:.2f}){cal}  views {d['views']}  "
          f"bundle {d['bundle_id']}")
    la = d["look_alike"]
    if d["needs_scale_photo"]:
        sizes = ", ".join(f"{pn} {mm:g} mm" if mm else pn for pn, mm in zip(la["part_numbers"], la["sizes_mm"]))
        print(f"look-alikes differing only in size ({sizes}): measure the part and pick by size "
              "(a ruler in the photo is not read)")
    elif d["needs_detail_photo"]:
        print(f"look-alikes of the same size ({', '.join(la['part_numbers'])}): a label or marking tells them "
              "apart; add a close-up of it as another photo (partlens identify PHOTO CLOSEUP)")
    print(f"stock as of hub time {d['hub_time'] or 'unknown'}")
    for m in d["matches"]:
        print(f"{m['rank']:>2}. {m['part_number']:<14} {m['name'] or '':<32} sim {m['similarity']:.3f}  "
              f"{_fmt_stock(m)}")
    if not d["matches"]:
        print("no catalogue part passes the filters")
    return 0


def _open_db(args: argparse.Namespace, must_exist: bool = True) -> Any:
    from .runtime.catalogue import CatalogueDB

    path = _db_path(args)
    if must_exist and not path.is_file():
        raise InputError(f"{path}: no catalogue database (run `partlens catalogue import` first)")
    return CatalogueDB(path)


def _cat_import(args: argparse.Namespace) -> int:
    from .runtime.importer import import_catalogue

    for f in (args.parts_csv, args.images_csv):  # before a database is made for a typo
        if f is not None and not Path(f).is_file():
            raise InputError(f"{f}: no such file")
    with _open_db(args, must_exist=False) as db:
        res = import_catalogue(db, args.parts_csv, args.images_csv, kinds=tuple(args.kinds.split(",")),
                               site=args.site)
    print(json.dumps(res, indent=2) if args.json else
          f"imported {res['parts']} parts, {res['inventory']} stock rows, {res['images']} images into {db.path} "
          f"(catalogue version {res['catalogue_version']}, stock as of {res['as_of']})")
    return 0


def _warn_missing_vectors(ident: Any) -> None:
    """Catalogue images the bundle has no vector for are not searched: say so, with the command that fixes it
    (a part added by `catalogue import` after the bundle was built was silently never found)."""
    images, parts = ident.missing_vectors()
    if images:
        print(f"warning: {images} catalogue image(s) of {parts} part(s) have no vector for bundle {ident.bundle_id} "
              "and are not searched: run `partlens catalogue embed` (same --bundle/--keyring/--data-dir) to embed "
              "them on this computer", file=sys.stderr)


def _cat_embed(args: argparse.Namespace) -> int:
    from .runtime.identify import Identifier

    bundle, keyring = _bundle_and_keyring(args)
    ident = Identifier.open(bundle, _db_path(args), keyring, backend=args.backend)
    before = ident.missing_vectors()
    stored = ident.embed_local_images()
    left = ident.missing_vectors()
    res = {"bundle_id": ident.bundle_id, "embedded": stored, "images_without_vectors_before": before[0],
           "images_without_vectors_after": left[0]}
    print(json.dumps(res, indent=2) if args.json else
          f"embedded {stored} catalogue image(s) with bundle {ident.bundle_id}"
          + (f"; {left[0]} image(s) of {left[1]} part(s) could not be read (see the warnings)" if left[0] else ""))
    return 0


def _warn_unknown_site(db: Any, site: str | None) -> None:
    """A --site with no stock rows is most likely a typo: say so (the command still runs)."""
    if site is not None:
        known = db.sites()
        if site not in known:
            print(f"warning: site {site!r} has no stock in this catalogue (sites: {', '.join(known) or 'none'})",
                  file=sys.stderr)


def _cat_list(args: argparse.Namespace) -> int:
    with _open_db(args) as db:
        _warn_unknown_site(db, args.site)
        site = args.site or db.get_meta("site")
        if args.in_stock and site is None:
            raise UsageError("--in-stock needs --site (or a site set in the catalogue)")
        rows = db.search_parts(text=args.text, category=args.category, in_stock=True if args.in_stock else None,
                               site=site, limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['part_number']:<14} {r['name'] or '':<32} {r['category'] or ''}")
    print(f"{len(rows)} part(s)", file=sys.stderr)
    return 0


def _cat_show(args: argparse.Namespace) -> int:

    from .partfolders import normal_part_number

    with _open_db(args) as db:  # as the catalogue stores it: NFC, no surrounding spaces (as `list --text` finds it)
        part = db.part(normal_part_number(args.part))
        hub_time = db.get_meta("hub_time")
    if part is None:
        raise InputError(f"part {args.part!r} is not in the catalogue")
    if args.json:
        print(json.dumps({**part, "hub_time": hub_time}, indent=2))
        return 0
    for k in ("part_number", "name", "category", "manufacturer", "description", "size_mm", "look_alike_group"):
        print(f"{k:17s} {part.get(k)}")
    print(f"stock (hub time {hub_time or 'unknown'}):")
    for r in part["inventory"]:
        print(f"  {r['site']:<10} {r['stock']!s:>5}  bin {r['bin']}  as of {r['as_of']}")
    print(f"images: {len(part['images'])}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("identify", help="identify a part from one or more photos of it",
                       description="Identify ONE part from one or more photos of it (several views are fused). "
                                   "Shows part number, name, stock and bin at the site, and the calibrated "
                                   "confidence; says NO CONFIDENT MATCH when the confidence is below the "
                                   "bundle's calibrated threshold.")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photo file(s) of the same part")
    p.add_argument("--top", type=int, default=5, help="how many parts to list (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON (schema: docs/identify_json_schema.json)")
    p.add_argument("--data-dir", help="device folder, as for `partlens sync` and `partlens app` (default: "
                                      "$PARTLENS_DEVICE_DIR, else ~/.local/share/partlens/device)")
    p.add_argument("--bundle", help="verified bundle folder (default: the device folder's active bundle)")
    p.add_argument("--db", help="catalogue database (default: DATA_DIR/catalogue.db)")
    p.add_argument("--keyring", help="trusted keys (default: DATA_DIR/keyring.json)")
    p.add_argument("--site", help="site whose stock to show and filter on (default: the catalogue's site)")
    p.add_argument("--in-stock", action="store_true", help="only parts in stock at the site")
    p.add_argument("--category", help="only parts of this category")
    p.add_argument("--text", help="only parts whose number, name or description contains this text")
    p.add_argument("--backend", choices=("tflite", "onnx", "android"), help="inference backend (default: auto)")
    p.add_argument("--fusion", choices=("score", "embedding"), default="score",
                   help="how several photos are fused (default: score = mean of per-view part similarities)")
    p.add_argument("--aggregate", choices=("max", "top2"), default="max",
                   help="how a part's images are combined (default: max)")
    p.set_defaults(func=_identify)

    c = sub.add_parser("catalogue", help="import, embed, list and show catalogue parts on this device",
                       description="The device catalogue database (parts, stock per site, images).")
    csub = c.add_subparsers(dest="catalogue_command", metavar="ACTION")
    csub.required = True

    def db_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", help="device folder (default: $PARTLENS_DEVICE_DIR, else "
                                          "~/.local/share/partlens/device)")
        q.add_argument("--db", help="catalogue database (default: DATA_DIR/catalogue.db)")
        q.add_argument("--json", action="store_true", help="print JSON")

    i = csub.add_parser("import", help="import parts.csv (and images.csv) in the generated layout",
                        description="Import parts (with stock_<site>/bin_<site> columns) and catalogue images "
                                    "(paths relative to the CSV) in one transaction.")
    i.add_argument("parts_csv", metavar="PARTS_CSV")
    i.add_argument("images_csv", metavar="IMAGES_CSV", nargs="?")
    i.add_argument("--kinds", default="catalogue", help="image kinds to import, comma-separated (default catalogue)")
    i.add_argument("--site", help="record this device's site in the catalogue")
    db_arg(i)
    i.set_defaults(func=_cat_import)

    e = csub.add_parser("embed", help="embed catalogue images the bundle has no vector for (parts added later)",
                        description="Parts added with `catalogue import` after the model bundle was built have no "
                                    "vector in it: embed their catalogue images here with the bundle's model (as a "
                                    "hub does for a part it adds), so they are found without retraining. Not for a "
                                    "catalogue a hub keeps: the hub embeds and the sync brings the vectors.")
    e.add_argument("--bundle", help="verified bundle folder (default: the device folder's active bundle)")
    e.add_argument("--keyring", help="trusted keys (default: DATA_DIR/keyring.json)")
    e.add_argument("--backend", choices=("tflite", "onnx", "android"), help="inference backend (default: auto)")
    db_arg(e)
    e.set_defaults(func=_cat_embed)

    ls = csub.add_parser("list", help="list parts", description="List parts matching every given filter.")
    ls.add_argument("--text", help="substring of part number, name or description")
    ls.add_argument("--category", help="exact category")
    ls.add_argument("--in-stock", action="store_true", help="only parts in stock at the site")
    ls.add_argument("--site", help="site for --in-stock (default: the catalogue's site)")
    ls.add_argument("--limit", type=int, default=None, help="at most this many parts")
    ls.add_argument("--offset", type=int, default=0, help="skip this many parts first (the next page: --offset "
                                                          "LIMIT, 2*LIMIT, ...)")
    db_arg(ls)
    ls.set_defaults(func=_cat_list)

    sh = csub.add_parser("show", help="show one part with stock and images", description="Show one part.")
    sh.add_argument("part", metavar="PART", help="part number")
    db_arg(sh)
    sh.set_defaults(func=_cat_show)

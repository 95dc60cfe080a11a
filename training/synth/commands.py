"""``partlens generate OUT``: render the synthetic spare-parts dataset."""
from __future__ import annotations

import argparse

from edge_app.errors import UsageError


def _parts_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty part number in {text!r}")
    return items


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate

    if args.list_parts:
        from .parts import PARTS

        for p in PARTS:
            print(f"{p.part_number:18s} {p.size_mm:6g} mm  {p.look_alike_group or '-':22s} {p.name}")
        return 0
    if args.out is None:
        raise UsageError("OUT is required (or use --list-parts)")
    res = generate(args.out, seed=args.seed, catalogue_per_part=args.catalogue_per_part,
                   field_per_part=args.field_per_part, size=args.size, parts=args.parts, workers=args.workers,
                   overwrite=args.overwrite, worn=args.worn, backgrounds=args.backgrounds)
    print(f"wrote {res.n_images} images to {res.out_dir} in {res.seconds:.1f} s "
          f"({res.parts_csv.name}, {res.images_csv.name})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="render the synthetic spare-parts images and catalogue CSVs",
                       description=__doc__ + " Layout: OUT/parts.csv, OUT/images.csv, "
                       "OUT/images/<part_number>/<kind>_<nnnn>.jpg, OUT/generate.json.")
    p.add_argument("out", nargs="?", metavar="OUT", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0); same seed, same bytes")
    p.add_argument("--catalogue-per-part", type=int, default=2, metavar="N",
                   help="clean studio shots per part (default 2)")
    p.add_argument("--field-per-part", type=int, default=8, metavar="N",
                   help="field shots per part: clutter, bench, hand, scale refs (default 8)")
    p.add_argument("--worn", type=float, default=0.0, metavar="SHARE",
                   help="share of field shots showing wear, 0-1: grease, rust (steel parts), dust or a chipped-off "
                   "piece, drawn on the same shot the seed gives without wear (default 0)")
    p.add_argument("--backgrounds", choices=("field", "calibration", "query"), default="field",
                   help="texture pool of the field shots: field (training photos, default), calibration or query "
                   "(held-out photos on surfaces the field pool never shows)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels, 32-2048 (default 256)")
    p.add_argument("--parts", type=_parts_list, default=None, metavar="A,B",
                   help="only these part numbers (comma separated; see --list-parts)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs); output is identical")
    p.add_argument("--overwrite", action="store_true", help="replace a previous generate output in OUT")
    p.add_argument("--list-parts", action="store_true", help="list the part numbers and exit")
    p.set_defaults(func=_generate)

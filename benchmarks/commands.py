"""``partlens bench``: run a benchmark and write benchmarks/results/NAME.json and .md."""
from __future__ import annotations

import argparse
import json


def _bench(args: argparse.Namespace) -> int:
    from .runner import list_benchmarks, run_benchmark

    if args.list or not args.name:
        for name, title in sorted(list_benchmarks().items()):
            print(f"{name:32s} {title}")
        return 0
    result = run_benchmark(args.name, data=args.data, quick=args.quick, fresh=args.fresh)
    print(json.dumps(result["metrics"], indent=2, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (writes benchmarks/results/NAME.json and .md)",
                       description=__doc__)
    p.add_argument("name", nargs="?", help="benchmark name (omit, or --list, to list them)")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.add_argument("--data", help="datasets folder (default: $PARTLENS_DATA or ../shared/datasets)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (results marked quick)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete this benchmark's scratch folder (benchmarks/work/NAME: finished steps "
                        "and their checkpoints) instead of resuming")
    p.set_defaults(func=_bench)

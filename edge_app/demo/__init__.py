"""``partlens demo``: the whole product end to end on this computer, offline, on built-in defaults.

1. Render synthetic spare parts; field queries use backgrounds never used in training. The parts
   are split three ways: *known* (trained on, in the first catalogue), *new* (added at the hub
   later, never trained on) and *outside* (never in the catalogue; calibration negatives).
2. Fine-tune the pretrained EfficientNet-Lite0 on the known parts for a few CPU minutes.
3. Export int8 TFLite behind the parity gate (if the gate refuses the PT2E int8 model, the
   ai-edge-quantizer one is tried, then fp32 ships; the report says what was refused and why),
   fit the "no confident match" calibration and sign a device bundle with a demo key made
   outside the repository.
4. Start a hub on 127.0.0.1, load the catalogue and bundle, enrol a tablet, sync it over HTTPS (the tablet pins the hub's certificate).
5. Identify held-out field photos on the tablet (one photo, then two photos of a part fused, then
   the same photos with the part worn or broken: grease, rust, dust, a chipped piece); add new parts
   at the hub, sync once, and find them without retraining.
6. Field loop: the known-part photos go through the app's path (identify, "this is the part"),
   the tablet syncs up, and the hub's field statistics count what the tablet answered.
7. Print a table and write OUT/report.json, report.md and report.html (with thumbnails).

``--quick`` runs the same chain at a tiny scale (CI runs it). ``--app`` then opens the tablet app
on the synced device folder. The hub is always stopped, also on error or Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .config import CATALOGUES, DemoConfig, quick, split_parts
from .pipeline import device_identifier, resolve_pretrained, run_demo
from .report import markdown as report_markdown

__all__ = ["DemoConfig", "device_identifier", "quick", "report_markdown", "resolve_pretrained", "run_demo",
           "split_parts"]


def _progress_printer() -> Callable[[int, int, str], None]:
    t0 = time.perf_counter()

    def show(i: int, n: int, msg: str) -> None:
        print(f"[{i}/{n}] {time.perf_counter() - t0:6.0f} s  {msg}", file=sys.stderr, flush=True)

    return show


def _open_app(device_dir: Path) -> None:
    # Kivy's own log lines go to its log file, not between the demo's report and the console prompt
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    from ..services import DeviceServices
    from .config import SITE

    from ..app.main import run_and_close

    run_and_close(DeviceServices(device_dir, site=SITE))


def _demo(args: argparse.Namespace) -> int:
    d = DemoConfig()
    out = args.out or str(Path(d.out) / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    cfg = DemoConfig(out=out, seed=args.seed, model=args.model, pretrained=args.pretrained,
                     catalogue=args.catalogue, export_format=args.export_format, starter_bundle=args.starter_bundle,
                     reference_weight=args.reference_weight, train_worn=args.train_worn)
    if args.quick:
        cfg = quick(cfg)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("image_size", args.image_size)) if v is not None}
    cfg = replace(cfg, **overrides)
    for name in ("training.train", "edge_app.demo"):  # epoch lines and step timings, also without a TTY
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    report = run_demo(cfg, progress=_progress_printer())
    print(report_markdown(report))
    print(f"report: {Path(cfg.out) / 'report.html'}")
    if args.app:
        _open_app(Path(report["device_dir"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    p = sub.add_parser("demo", help="run the whole product end to end on generated parts (the main job)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help=f"output folder, must be new or empty (default: {d.out}/<UTC time>, so a re-run "
                                 "never meets an earlier run's folder)")
    p.add_argument("--quick", action="store_true", help="the same chain at a tiny scale (a few minutes; CI runs it)")
    p.add_argument("--app", action="store_true", help="afterwards, open the tablet app on the synced device folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--model", default=d.model, help=f"model name (default {d.model})")
    p.add_argument("--pretrained", default=d.pretrained, choices=("auto", "yes", "no"),
                   help="ImageNet init: auto uses local weights when present and says so in the report")
    p.add_argument("--catalogue", default=d.catalogue, choices=CATALOGUES,
                   help=f"which generated parts form the inventory (default {d.catalogue})")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {d.epochs}; --quick: "
                                              f"{quick(d).epochs})")
    p.add_argument("--image-size", type=int, help=f"model input side in px (default {d.image_size}; --quick: "
                                                  f"{quick(d).image_size})")
    p.add_argument("--reference-weight", type=float, default=d.reference_weight,
                   help="weight of the trained embedding beside the frozen ImageNet reference branch, in (0, 1); "
                        f"0 = no reference branch (default {d.reference_weight}; `partlens add-reference`)")
    p.add_argument("--train-worn", type=float, default=d.train_worn, metavar="SHARE",
                   help="share of the training field photos drawn worn or broken (grease, rust, dust, a chipped "
                        f"piece), 0-1 (default {d.train_worn:g}); the report always scores worn query photos too")
    p.add_argument("--export-format", default=d.export_format,
                   help=f"device model format (default {d.export_format}; see `partlens export --help`). A TFLite "
                        "int8 format the parity gate refuses is followed by the other TFLite int8 quantizer, "
                        "then tflite-fp32")
    p.add_argument("--starter-bundle", metavar="DIR",
                   help="also copy the synced tablet's catalogue, keyring and bundle here "
                        "(starter_bundle/ is what the APK ships)")
    p.set_defaults(func=_demo)

"""``partlens app``: start the tablet app on this computer (real catalogue, outbox and sync client)."""
from __future__ import annotations

import argparse
import os
import re

from ..errors import UsageError



def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{3,5})x(\d{3,5})", text)
    if not m:
        raise argparse.ArgumentTypeError(f"window size must look like 1920x1200, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _app(args: argparse.Namespace) -> int:
    from ..services import open_device_services

    if args.bundle and not os.path.isdir(args.bundle):
        raise UsageError(f"--bundle {args.bundle}: no such folder")
    from ..paths import device_dir

    services = open_device_services(device_dir(args.data_dir), site=args.site, backend=args.backend,
                                    bundle_dir=args.bundle, keyring=args.keyring)
    if args.size:  # must be set before Kivy creates the window
        from kivy.config import Config

        Config.set("graphics", "width", str(args.size[0]))
        Config.set("graphics", "height", str(args.size[1]))
    from .main import run_and_close

    run_and_close(services)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the tablet app (Kivy) on this computer", description=__doc__)
    p.add_argument("--data-dir",
                   help="device data folder: catalogue.db, outbox.db, captures/, bundles/ "
                        "(default: $PARTLENS_DEVICE_DIR or ~/.local/share/partlens/device)")
    p.add_argument("--site", help="this device's site for stock (default: the catalogue's meta 'site')")
    p.add_argument("--backend", choices=("tflite", "onnx", "android"), help="inference backend (default: best available)")
    p.add_argument("--bundle", help="model bundle folder (default: <data-dir>/bundles/<catalogue bundle_id>)")
    p.add_argument("--keyring", help="trusted keys (default: <data-dir>/keyring.json)")
    p.add_argument("--size", type=_size, help="window size, e.g. 1920x1200 or 720x1280")
    p.set_defaults(func=_app)

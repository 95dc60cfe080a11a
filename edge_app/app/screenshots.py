"""Screenshots of every screen at the tablet (1920x1200) and phone (720x1280) profiles.

    python -m edge_app.app.screenshots --out docs/screenshots [--data-dir DEVICE_DIR]

With ``--data-dir`` (a device folder with an installed bundle and catalogue) the real
DeviceServices are used; without it, the drawn preview catalogue (``edge_app.app.preview``).
Each profile runs in its own process: Kivy's window size and dpi are process-global.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .theme import PROFILES

log = logging.getLogger(__name__)
SCREENS = ("identify", "results", "results_spot_check", "results_no_match", "part_detail", "catalogue",
           "sync_status")


def _child(profile_name: str, out: Path, data_dir: str | None, photos: list[str] | None = None) -> list[Path]:
    profile = PROFILES[profile_name]
    os.environ.update(SDL_VIDEODRIVER=os.environ.get("SDL_VIDEODRIVER", "offscreen"), KIVY_NO_ARGS="1",
                      KIVY_LOG_MODE="PYTHON", KIVY_HOME=tempfile.mkdtemp(prefix="kivy-home-"), **profile.env())
    from kivy.config import Config

    Config.set("graphics", "width", str(profile.size[0]))
    Config.set("graphics", "height", str(profile.size[1]))
    from kivy.base import EventLoop
    from kivy.core.window import Window

    from .main import PartlensApp
    from .preview import PreviewServices, draw_part

    work = Path(tempfile.mkdtemp(prefix="partlens-shots-"))
    if data_dir:
        from ..services import DeviceServices

        services = DeviceServices(data_dir)
    else:
        services = PreviewServices(work / "device")
    app = PartlensApp(services)
    app._run_prepare()

    def pump(n: int = 30) -> None:
        for _ in range(n):
            EventLoop.idle()

    def shot(name: str) -> Path:
        pump()
        raw = Path(Window.screenshot(str(work / f"{name}.png")))
        dst = out / f"{profile.name}_{name}.png"
        shutil.move(raw, dst)
        return dst

    def identify() -> None:
        app.identify()
        t0 = time.time()
        while app.busy and time.time() - t0 < 120:
            pump(1)

    files = []
    ring = work / "bearing.jpg"
    draw_part((120, 120, 130), "ring", size=640, seed=3).save(ring)
    side = work / "bearing_side.jpg"
    draw_part((125, 118, 128), "box", size=640, seed=4).save(side)
    mystery = work / "mystery.jpg"
    draw_part((150, 40, 160), "can", size=640, seed=5).save(mystery)
    if photos:  # real photos: two views of one part, then a part outside the catalogue
        side, ring, mystery = (Path(p) for p in photos)
    pump()
    app.add_capture(services.captures.add_file(side))
    app.add_capture(services.captures.add_file(ring))
    app.set_crop(app.selected, (0.1, 0.08, 0.92, 0.9))
    files.append(shot("identify"))
    identify()
    files.append(shot("results"))
    if app.outcome is not None:  # the same answer as picked for a spot check (as 1 identification in 20 is)
        from dataclasses import replace

        answer = app.outcome
        app.show_outcome(replace(answer, spot_check=True, spot_check_done=False))
        files.append(shot("results_spot_check"))
        app.show_outcome(answer)
    best = app.outcome.best.part_number if app.outcome and app.outcome.best else None
    if best:
        app.open_part(best)
        files.append(shot("part_detail"))
    app.clear_captures()
    app.add_capture(services.captures.add_file(mystery))
    identify()
    files.append(shot("results_no_match"))
    app.go("catalogue")
    files.append(shot("catalogue"))
    if not data_dir:
        services.enrol("partlens-enrol:hub.terminal.local")
        services.record_unknown(app.current_captures(), "demo")
    app.go("sync_status")
    files.append(shot("sync_status"))
    app.stop()
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/screenshots", help="output folder (default: docs/screenshots)")
    p.add_argument("--profile", choices=(*PROFILES, "all"), default="all")
    p.add_argument("--data-dir", help="a device data folder with a bundle (default: the preview catalogue)")
    p.add_argument("--photos", help="VIEW1,VIEW2,UNKNOWN: real query photos (default: drawn ones)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        photos = args.photos.split(",") if args.photos else None
        if photos is not None and len(photos) != 3:
            p.error("--photos takes exactly three comma-separated paths")
        for f in _child(args.profile, out, args.data_dir, photos):
            print(f)
        return 0
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    for name in names:
        cmd = [sys.executable, "-m", "edge_app.app.screenshots", "--child", "--profile", name, "--out", str(out)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.photos:
            cmd += ["--photos", args.photos]
        rc = subprocess.run(cmd).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())

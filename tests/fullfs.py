"""A real full disk for tests: run a child module inside ``unshare -r -m`` with a small tmpfs mounted.

Needs user namespaces (``unshare -r``) and tmpfs mounts in them; tests skip with that reason otherwise."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SKIP_REASON = "needs `unshare -r -m` with tmpfs mounts (user namespaces) to make a real full disk"


@functools.lru_cache(maxsize=1)
def can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def fill_to(mount: Path, free: int) -> None:
    """Leave about ``free`` bytes free on ``mount`` (one file, ``mount/filler``)."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    left = max(0, shutil.disk_usage(mount).free - free)
    with open(filler, "wb") as fh:
        try:
            while left > 0:
                left -= fh.write(b"\0" * min(left, 1 << 20))
            fh.flush()
        except OSError:  # asked for 0 free: the last block does not fit, which is the point
            pass
        os.fsync(fh.fileno())


def run_on_tmpfs(module: str, args: list[str], mount: Path, size_mb: int = 24, timeout: float = 300) -> dict[str, Any]:
    """Mount a ``size_mb`` tmpfs on ``mount`` in a private namespace, run ``python -m module MOUNT *args``
    there, and return the JSON object its last stdout line holds."""
    mount.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o size={size_mb}m tmpfs {mount} && exec {sys.executable} -m {module} {mount} " + \
        " ".join(f"'{a}'" for a in args)
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

"""python-for-android service ``ServiceSync`` (build.spec: ``services = Sync:sync/android_service.py:...``).

Started by the exact alarm that :func:`sync.background.android_schedule` sets (or by the app). It makes
ONE attempt, arms the alarm for the next one and returns; p4a's ``PythonService`` then stops itself.
The service argument is the device data folder (the app passes its own).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("partlens.sync_service")


def service_context() -> Any:
    """The running p4a service (an ``android.content.Context``)."""
    from jnius import autoclass  # type: ignore

    return autoclass("org.kivy.android.PythonService").mService


def main(context: Any | None = None, device_dir: str | None = None, now: dt.datetime | None = None) -> int:
    """One attempt; 0 when synced or skipped by policy, 1 when the sync failed (the next alarm is set
    in every case)."""
    from sync.background import DEFAULT_RETRY, FAILED, android_conditions, android_schedule, run_once, wake_lock

    context = context if context is not None else service_context()
    device_dir = device_dir or os.environ.get("PYTHON_SERVICE_ARGUMENT") or ""
    if not device_dir:
        log.error("ServiceSync started without a device folder argument; nothing to do")
        return 2
    now = now or dt.datetime.now().astimezone()
    if not (Path(device_dir) / "device.json").is_file():
        log.warning("%s: not enrolled; background sync stays off until enrolment", device_dir)
        return 0
    # Arm a fallback first: if Android kills this attempt mid-sync, the next one still comes.
    android_schedule(context, now + DEFAULT_RETRY, device_dir)
    charging, unmetered = android_conditions(context)
    with wake_lock(context):
        attempt = run_once(device_dir, now=now, charging=charging, unmetered=unmetered)
    android_schedule(context, dt.datetime.fromisoformat(attempt.next_at), device_dir)
    return 1 if attempt.outcome == FAILED else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())

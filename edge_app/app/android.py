"""Android-only helpers (camera, permissions, QR), all guarded: on a desktop they report "not available".

Imports of ``android``/``plyer``/``pyzbar`` happen inside functions, so this module imports anywhere.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

log = logging.getLogger(__name__)


def is_android() -> bool:
    return "ANDROID_ARGUMENT" in os.environ or hasattr(sys, "getandroidapilevel")


def camera_available() -> bool:
    """True on Android when plyer's camera facade can be imported."""
    if not is_android():
        return False
    try:
        from plyer import camera  # noqa: F401
    except Exception as exc:  # ImportError or plyer's NotImplementedError on odd builds
        log.info("camera unavailable: %s", exc)
        return False
    return True


def request_camera(on_result: Callable[[bool], None]) -> None:
    """Ask for the CAMERA runtime permission (Android 6+), then call ``on_result(granted)``."""
    if not is_android():
        on_result(False)
        return
    from android.permissions import Permission, check_permission, request_permissions  # type: ignore

    if check_permission(Permission.CAMERA):
        on_result(True)
        return

    def done(permissions, grants):  # called on the Android UI thread
        on_result(bool(grants) and all(grants))

    request_permissions([Permission.CAMERA], done)


def take_picture(path: str, on_done: Callable[[str | None], None]) -> None:
    """Open the system camera writing straight into ``path`` (so the photo is on disk at once)."""
    from plyer import camera

    def complete(filename: str | None) -> bool:
        on_done(filename if filename and os.path.isfile(filename) else None)
        return False

    camera.take_picture(filename=path, on_complete=complete)


def qr_available() -> bool:
    """QR scanning = camera photo + zbar decoding (pyzbar, p4a recipe ``pyzbar``)."""
    if not camera_available():
        return False
    try:
        import pyzbar.pyzbar  # noqa: F401
    except ImportError:
        return False
    return True


def decode_qr(path: str) -> str | None:
    """The first QR code's text in the photo at ``path``, or None."""
    from pyzbar.pyzbar import decode

    from ..imageio import load_image

    for sym in decode(load_image(path)):
        return sym.data.decode("utf-8", "replace")
    return None


def arm_background_sync(data_dir: str | os.PathLike[str]) -> str | None:
    """Arm the nightly background-sync alarm (``sync.background``) from the running activity.

    Returns the ISO time of the next attempt, or None when the tablet is not enrolled yet or arming
    failed. A failure (no exact-alarm permission on an odd build, a missing service class) is recorded
    in the device folder with its reason, so the sync screen says that nightly sync is OFF and why, and
    the app starts anyway: identification works offline without sync. The next start tries again.
    """
    import datetime as dt

    from sync.background import clear_arm_failure, record_arm_failure, schedule_from_app

    now = dt.datetime.now().astimezone()
    try:
        from jnius import autoclass  # type: ignore

        activity = autoclass("org.kivy.android.PythonActivity").mActivity
        at = schedule_from_app(activity, data_dir, now)
    except Exception as exc:  # JavaException and friends: shown on the sync screen, never fatal for the app
        reason = f"{type(exc).__name__}: {exc}"
        log.error("background sync not armed: %s", reason)
        record_arm_failure(data_dir, reason, now)
        return None
    clear_arm_failure(data_dir)
    return None if at is None else at.isoformat(timespec="minutes")

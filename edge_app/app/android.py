"""Android-only helpers (camera, permissions, QR), all guarded: on a desktop they report "not available".

Imports of ``android``/``jnius``/``pyzbar``/``kivy`` happen inside functions, so this module imports anywhere.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

log = logging.getLogger(__name__)


def is_android() -> bool:
    return "ANDROID_ARGUMENT" in os.environ or hasattr(sys, "getandroidapilevel")


#: startActivityForResult request code of the camera intent ("PC")
CAMERA_REQUEST = 0x5043
RESULT_OK = -1  # android.app.Activity.RESULT_OK
#: where the camera app writes (shared storage, Android 10+); the item is deleted once the photo is copied in
CAMERA_FOLDER = "Pictures/partlens"
#: a camera intent is out and its result not handled yet
_camera_open = False


def camera_available() -> bool:
    """True on Android when the camera intent can be sent (pyjnius and python-for-android's activity events)."""
    if not is_android():
        return False
    try:
        import android.activity  # noqa: F401
        import jnius  # noqa: F401
    except Exception as exc:  # ImportError on odd builds
        log.info("camera unavailable: %s", exc)
        return False
    return True


def _api_level() -> int:
    from jnius import autoclass  # type: ignore

    return int(autoclass("android.os.Build$VERSION").SDK_INT)


def _on_kivy_thread(fn: Callable[[], None]) -> None:
    """Android calls permission and activity results on its UI thread, not Kivy's: hand over to Kivy's."""
    from kivy.clock import Clock

    Clock.schedule_once(lambda _dt: fn(), 0)


def request_camera(on_result: Callable[[bool], None]) -> None:
    """Ask for what taking a photo needs (CAMERA; on Android 8-9 also storage, for the camera's shared-storage
    item), then call ``on_result(granted)`` on Kivy's thread."""
    if not is_android():
        on_result(False)
        return
    from android.permissions import Permission, check_permission, request_permissions  # type: ignore

    needed = [Permission.CAMERA] + (["android.permission.WRITE_EXTERNAL_STORAGE"] if _api_level() < 29 else [])
    missing = [p for p in needed if not check_permission(p)]
    if not missing:
        on_result(True)
        return

    def done(permissions, grants):  # called on the Android UI thread
        ok = len(grants) == len(permissions) and all(grants)
        _on_kivy_thread(lambda: on_result(bool(grants) and ok))

    request_permissions(missing, done)


def request_notifications(data_dir: str | os.PathLike[str]) -> bool:
    """Android 13+: ask once per install (at start, never over the camera) to show the nightly sync's
    notification; without it the service still runs. True when the question was asked now."""
    marker = os.path.join(os.fspath(data_dir), "notifications_asked")
    if not is_android() or _api_level() < 33 or os.path.exists(marker):
        return False
    from android.permissions import check_permission, request_permissions  # type: ignore

    perm = "android.permission.POST_NOTIFICATIONS"
    if check_permission(perm):
        return False
    os.makedirs(os.fspath(data_dir), exist_ok=True)
    with open(marker, "w") as fh:
        fh.write("asked\n")
    request_permissions([perm], lambda permissions, grants: None)
    return True


def take_picture(path: str, on_done: Callable[[str | None], None],
                 on_uri: Callable[[str], None] | None = None) -> None:
    """Open the system camera; ``on_done(path)`` on Kivy's thread once the photo is at ``path`` (None: no photo).

    The camera app cannot write into partlens's private folder, and a ``file://`` URI given to it throws
    FileUriExposedException since Android 7 (what plyer's camera does). So partlens creates a MediaStore image
    item (a ``content://`` URI the camera may write to), lets the camera write it, copies the photo into
    ``path`` and deletes the item. ``on_uri`` gets the item's URI first, to be remembered: if Android stops
    partlens while the camera is open, the next start copies the photo from there (:func:`fetch_content_uri`).
    """
    import android.activity as events  # type: ignore
    from jnius import autoclass, cast  # type: ignore

    global _camera_open
    if _camera_open:  # a second tap while the camera app opens: its result would reach both handlers
        log.info("camera already open; second request ignored")
        return
    Intent = autoclass("android.content.Intent")
    MediaStore = autoclass("android.provider.MediaStore")
    Media = autoclass("android.provider.MediaStore$Images$Media")
    ContentValues = autoclass("android.content.ContentValues")
    activity = autoclass("org.kivy.android.PythonActivity").mActivity
    resolver = activity.getContentResolver()
    values = ContentValues()
    values.put("_display_name", os.path.basename(path))  # MediaStore.MediaColumns.DISPLAY_NAME
    values.put("mime_type", "image/jpeg")  # MediaStore.MediaColumns.MIME_TYPE
    if _api_level() >= 29:
        values.put("relative_path", CAMERA_FOLDER)  # MediaStore.MediaColumns.RELATIVE_PATH
    handled = [False]

    def on_result(request_code: int, result_code: int, data: object) -> None:  # the Android UI thread
        global _camera_open
        if request_code != CAMERA_REQUEST or handled[0]:
            return
        handled[0] = True
        # Not unbound here: p4a's unbind removes the listener from the list PythonActivity is iterating, and the
        # next() after this returns throws ConcurrentModificationException (the app dies after every photo).
        _on_kivy_thread(lambda: events.unbind(on_activity_result=on_result))
        saved = None
        try:
            if result_code == RESULT_OK:
                saved = path if _copy_content(resolver, uri, path) else None
        except Exception as exc:  # a JavaException or OSError: no photo, said so; never a crash
            log.error("camera: could not copy the photo in: %s", exc)
        finally:
            _delete_content(resolver, uri)
            _camera_open = False
        _on_kivy_thread(lambda: on_done(saved))

    uri = None
    try:
        uri = resolver.insert(Media.EXTERNAL_CONTENT_URI, values)
        if uri is None:
            raise RuntimeError("MediaStore refused a new image item")
        if on_uri is not None:
            on_uri(str(uri.toString()))
        intent = Intent(MediaStore.ACTION_IMAGE_CAPTURE)
        intent.putExtra(MediaStore.EXTRA_OUTPUT, cast("android.os.Parcelable", uri))
        intent.addFlags(Intent.FLAG_GRANT_WRITE_URI_PERMISSION | Intent.FLAG_GRANT_READ_URI_PERMISSION)
        events.bind(on_activity_result=on_result)
        _camera_open = True
        activity.startActivityForResult(intent, CAMERA_REQUEST)
    except Exception as exc:  # no camera app (ActivityNotFoundException), a full disk for the marker, ...
        log.error("camera could not be opened: %s", exc)
        _camera_open = False
        handled[0] = True
        try:
            events.unbind(on_activity_result=on_result)
        except Exception:  # noqa: BLE001 - it was not bound yet
            pass
        if uri is not None:
            _delete_content(resolver, uri)
        _on_kivy_thread(lambda: on_done(None))


def fetch_content_uri(uri: str, path: str | os.PathLike[str]) -> bool:
    """Copy the photo a camera wrote to ``uri`` (see :func:`take_picture`) into ``path`` and delete the item;
    False when it holds nothing (the camera was cancelled) or is gone."""
    from jnius import autoclass  # type: ignore

    Uri = autoclass("android.net.Uri")
    resolver = autoclass("org.kivy.android.PythonActivity").mActivity.getContentResolver()
    parsed = Uri.parse(uri)
    try:
        if os.path.isfile(path) and os.path.getsize(path):  # copied before the stop, not yet deleted
            return True
        return _copy_content(resolver, parsed, str(path))
    except Exception as exc:  # noqa: BLE001 - a JavaException: the item is gone
        log.warning("camera item %s could not be read: %s", uri, exc)
        return False
    finally:
        _delete_content(resolver, parsed)


def _copy_content(resolver: object, uri: object, path: str) -> bool:
    """Stream ``uri`` into ``path`` (written to a temporary file, fsynced, renamed); False when it is empty.

    Android 10+ copies on the Java side (``android.os.FileUtils.copy``): read into Python, pyjnius copies every
    Java ``byte[]`` back into the bytearray one byte at a time (an audit against pyjnius: millions of Python-level
    steps for a few-MB photo). Older Android keeps the chunked read."""
    stream = resolver.openInputStream(uri)  # type: ignore[attr-defined]
    if stream is None:
        return False
    tmp = f"{path}.part"
    try:
        if _api_level() >= 29:
            from jnius import autoclass  # type: ignore

            out = autoclass("java.io.FileOutputStream")(tmp)
            try:
                autoclass("android.os.FileUtils").copy(stream, out)
                out.getFD().sync()
            finally:
                out.close()
        else:
            buf = bytearray(1 << 16)  # pyjnius copies a Java byte[] argument back into a bytearray after the call
            with open(tmp, "wb") as fh:
                while True:
                    n = int(stream.read(buf))
                    if n < 0:
                        break
                    fh.write(buf[:n])
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        stream.close()
    if os.path.getsize(tmp) == 0:
        os.unlink(tmp)
        return False
    os.replace(tmp, path)
    return True


def _delete_content(resolver: object, uri: object) -> None:
    try:
        resolver.delete(uri, None, None)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - left in the gallery's partlens folder; not worth failing for
        log.warning("camera item %s was not deleted: %s", uri, exc)


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
        at = schedule_from_app(activity, data_dir, now)  # records an inexact (not allowed) alarm itself
    except Exception as exc:  # JavaException and friends: shown on the sync screen, never fatal for the app
        reason = f"{type(exc).__name__}: {exc}"
        log.error("background sync not armed: %s", reason)
        record_arm_failure(data_dir, reason, now)
        return None
    if at is None:
        clear_arm_failure(data_dir)
    return None if at is None else at.isoformat(timespec="minutes")

"""Nightly background sync on the tablet: one attempt, and when to try next.

Android design (a python-for-android service woken by exact alarms; see docs/sync.md):

1. The app, on every start, and the service, after every attempt, set ONE exact allow-while-idle alarm
   (``AlarmManager.setExactAndAllowWhileIdle``, ``RTC_WAKEUP``) for :func:`next_attempt`. Its
   ``PendingIntent`` starts the p4a foreground service ``ServiceSync`` (type ``dataSync``). An exact alarm
   is one of Android 12's exemptions for starting a foreground service from the background, so the
   alarm wakes the tablet in its dock even in Doze.
2. The service (``sync/android_service.py``) calls :func:`run_once`: read the dock state (plugged in,
   :func:`android_conditions`) and whether the network is unmetered, apply
   :func:`sync.schedule.should_sync` (charging + unmetered + nightly window), sync, record the outcome
   in ``<device>/sync_status.json``, set the next alarm and stop.
3. Next attempt: after a sync, the next window's opening; when the tablet was not docked, the network
   metered or the sync failed, again in ``retry`` minutes while the window is open, else the next
   window's opening. A sync cut short (Doze, killed process) resumes on the next attempt.

Everything here is pure Python except :func:`android_conditions` and :func:`android_schedule`, which
import ``jnius`` when called (tests drive them with a fake).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from edge_app.atomic import atomic_write_json
from edge_app.errors import PartlensError, StorageError

from .schedule import SyncWindow, should_sync

log = logging.getLogger(__name__)

STATUS_FILE = "sync_status.json"
#: Written by the app when it could not arm the alarm (removed once arming works again).
ARM_ERROR_FILE = "sync_arm_error.json"
DEFAULT_WINDOW = "01:00-05:00"
DEFAULT_RETRY = dt.timedelta(minutes=30)
#: With the 24-hour window ("always") a successful sync is followed by the next one this much later.
ALWAYS_PERIOD = dt.timedelta(hours=24)
#: the furthest ahead any planned attempt lies (a day to the next window, an hour for a DST change)
MAX_AHEAD = max(ALWAYS_PERIOD, dt.timedelta(days=1)) + dt.timedelta(hours=1)
#: ``com.partlens.partlens``: build.spec's package.domain + package.name; p4a names the service class
#: ``<package>.Service<Name>`` from ``services = Sync:...``.
ANDROID_PACKAGE = "com.partlens.partlens"
SERVICE_CLASS = f"{ANDROID_PACKAGE}.ServiceSync"
ALARM_REQUEST_CODE = 4711

SYNCED, SKIPPED, FAILED = "synced", "skipped", "failed"


@dataclass
class Attempt:
    """One background attempt, as recorded in ``sync_status.json``."""

    at: str
    outcome: str  # synced | skipped | failed
    reason: str
    charging: bool
    unmetered: bool
    window: str
    next_at: str
    result: dict[str, Any] | None = None
    last_success: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_of(device_dir: str | os.PathLike[str]) -> SyncWindow:
    """The device's nightly window: ``sync_window`` in device.json (set at enrolment), else 01:00-05:00."""
    path = Path(device_dir) / "device.json"
    try:
        text = json.loads(path.read_text()).get("sync_window") or DEFAULT_WINDOW
    except (OSError, ValueError):
        text = DEFAULT_WINDOW
    return SyncWindow.parse(str(text))


def next_window_start(now: dt.datetime, window: SyncWindow) -> dt.datetime:
    """The first opening of ``window`` strictly after ``now`` (same tzinfo as ``now``)."""
    start = now.replace(hour=window.start.hour, minute=window.start.minute, second=0, microsecond=0)
    return start if start > now else start + dt.timedelta(days=1)


def next_attempt(now: dt.datetime, window: SyncWindow, outcome: str,
                 retry: dt.timedelta = DEFAULT_RETRY) -> dt.datetime:
    """When to wake next: see the module docstring, step 3."""
    if outcome not in (SYNCED, SKIPPED, FAILED):
        raise ValueError(f"unknown outcome {outcome!r}")
    always = window.start == window.end
    if outcome == SYNCED:
        return now + ALWAYS_PERIOD if always else next_window_start(now, window)
    soon = now + retry
    if always or (window.contains(now.time()) and window.contains(soon.time())):
        return soon
    return next_window_start(now, window)


def read_status(device_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last recorded attempt, or None (never ran, or an unreadable file)."""
    try:
        return json.loads((Path(device_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def record_arm_failure(device_dir: str | os.PathLike[str], reason: str, now: dt.datetime) -> None:
    """The app could not arm the alarm: keep the reason, so the sync screen says nightly sync is off."""
    atomic_write_json(Path(device_dir) / ARM_ERROR_FILE, {"at": now.isoformat(timespec="seconds"), "reason": reason})


def clear_arm_failure(device_dir: str | os.PathLike[str]) -> None:
    """Arming worked: forget an earlier failure."""
    (Path(device_dir) / ARM_ERROR_FILE).unlink(missing_ok=True)


def read_arm_failure(device_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last arming failure ({"at", "reason"}), or None."""
    try:
        return json.loads((Path(device_dir) / ARM_ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None


def _free_space(device_dir: Path) -> str:
    """After a sync stopped for lack of storage (its outbox went up first): prune the photos the tablet no
    longer needs, as the app does (``DeviceServices.free_space_if_low``), so the next attempt can fit. Returns
    words for the status line; a failure here is logged and said, never raised."""
    from edge_app.services import DeviceServices

    try:
        services = DeviceServices(device_dir)
        try:
            pruned = services.free_space_if_low()
        finally:
            services.close()
    except (PartlensError, OSError) as exc:
        log.warning("could not prune photos after a storage failure: %s", exc)
        return f"; pruning photos failed ({exc})"
    return f"; pruned photos no longer needed ({pruned['removed_files']} files)" if pruned else ""


def run_once(device_dir: str | os.PathLike[str], *, now: dt.datetime, charging: bool, unmetered: bool,
             window: SyncWindow | None = None, client_factory: Callable[[Path], Any] | None = None,
             retry: dt.timedelta = DEFAULT_RETRY) -> Attempt:
    """One background attempt: sync if the policy allows it now, record the outcome, say when to retry.

    A sync error (hub down, wrong token, tampered file, ...) is caught, recorded with its message and
    turned into a retry; the device keeps its current catalogue and bundle (the client guarantees that).
    """
    device_dir = Path(device_dir)
    window = window or window_of(device_dir)
    previous = read_status(device_dir) or {}
    last_success = previous.get("last_success")
    result = None
    if not should_sync(now, charging, unmetered, window):
        outcome = SKIPPED
        reason = ("not docked" if not charging else "metered or no network" if not unmetered
                  else f"outside the window {window}")
    else:
        if client_factory is None:
            from .client import SyncClient as client_factory  # noqa: N813
        try:
            result = client_factory(device_dir).sync().to_dict()
        except (PartlensError, OSError) as exc:
            outcome, reason = FAILED, f"{type(exc).__name__}: {exc}"
            log.warning("background sync failed: %s", reason)
            if isinstance(exc, StorageError):
                reason += _free_space(device_dir)
        except Exception as exc:  # a fault in partlens itself: not swallowed, but the sync screen must show it
            _record_internal_error(device_dir, now, exc, charging, unmetered, window, retry, last_success)
            raise
        else:
            outcome, reason = SYNCED, f"catalogue v{result['from_version']} -> v{result['to_version']}"
            last_success = now.isoformat(timespec="seconds")
    attempt = Attempt(at=now.isoformat(timespec="seconds"), outcome=outcome, reason=reason, charging=charging,
                      unmetered=unmetered, window=str(window),
                      next_at=next_attempt(now, window, outcome, retry).isoformat(timespec="seconds"),
                      result=result, last_success=last_success)
    atomic_write_json(device_dir / STATUS_FILE, attempt.to_dict())
    log.info("background sync: %s (%s); next attempt %s", outcome, reason, attempt.next_at)
    return attempt


def _record_internal_error(device_dir: Path, now: dt.datetime, exc: Exception, charging: bool, unmetered: bool,
                           window: SyncWindow, retry: dt.timedelta, last_success: str | None) -> None:
    """Write the failed attempt to ``sync_status.json`` before an unexpected error propagates (the service's
    fallback alarm retries; the app's sync screen shows the error instead of the last good night)."""
    attempt = Attempt(at=now.isoformat(timespec="seconds"), outcome=FAILED,
                      reason=f"internal error {type(exc).__name__}: {exc} (please report it)", charging=charging,
                      unmetered=unmetered, window=str(window),
                      next_at=next_attempt(now, window, FAILED, retry).isoformat(timespec="seconds"),
                      result=None, last_success=last_success)
    try:
        atomic_write_json(device_dir / STATUS_FILE, attempt.to_dict())
    except OSError as write_exc:
        log.warning("could not record the failed attempt (%s)", write_exc)


# -- Android (pyjnius; imported only when called) ---------------------------------------------------
def android_conditions(context: Any) -> tuple[bool, bool]:
    """(docked, unmetered) from Android: plugged into power (a full battery in the dock still counts)
    and an active network that is not metered."""
    from jnius import autoclass  # type: ignore

    Intent = autoclass("android.content.Intent")
    IntentFilter = autoclass("android.content.IntentFilter")
    BatteryManager = autoclass("android.os.BatteryManager")
    Context = autoclass("android.content.Context")
    battery = context.registerReceiver(None, IntentFilter(Intent.ACTION_BATTERY_CHANGED))  # sticky: no receiver
    plugged = battery is not None and battery.getIntExtra(BatteryManager.EXTRA_PLUGGED, 0) != 0
    cm = context.getSystemService(Context.CONNECTIVITY_SERVICE)
    unmetered = cm.getActiveNetwork() is not None and not cm.isActiveNetworkMetered()
    return bool(plugged), bool(unmetered)


def android_schedule(context: Any, at: dt.datetime, argument: str = "") -> bool:
    """Set the single exact alarm that starts ``ServiceSync`` at ``at``; True if exact.

    Without the exact-alarm permission (Android 12+, revocable; denied by default to new installs on Android
    14) an inexact allow-while-idle alarm is set instead and False returned: it still fires, but Android then
    refuses to start the foreground service from the background (only an exact alarm exempts it); the app
    records this as an arming failure, so the sync screen says so (see docs/sync.md).
    """
    from jnius import autoclass  # type: ignore

    Context = autoclass("android.content.Context")
    AlarmManager = autoclass("android.app.AlarmManager")
    PendingIntent = autoclass("android.app.PendingIntent")
    Build = autoclass("android.os.Build$VERSION")
    service = autoclass(SERVICE_CLASS)
    intent = service.getDefaultIntent(context, "", "partlens", "Nightly catalogue sync", argument)
    flags = PendingIntent.FLAG_UPDATE_CURRENT | PendingIntent.FLAG_IMMUTABLE  # one alarm, replaced each time
    pending = PendingIntent.getForegroundService(context, ALARM_REQUEST_CODE, intent, flags)
    alarms = context.getSystemService(Context.ALARM_SERVICE)
    millis = int(at.timestamp() * 1000)
    exact = Build.SDK_INT < 31 or alarms.canScheduleExactAlarms()
    if exact:
        alarms.setExactAndAllowWhileIdle(AlarmManager.RTC_WAKEUP, millis, pending)
    else:
        log.warning("no exact-alarm permission: background sync alarm is inexact")
        alarms.setAndAllowWhileIdle(AlarmManager.RTC_WAKEUP, millis, pending)
    return bool(exact)


@contextlib.contextmanager
def wake_lock(context: Any, timeout: dt.timedelta = dt.timedelta(minutes=30)) -> Iterator[None]:
    """Hold a partial wake lock (CPU on, screen off) while syncing in the dock; released on exit and
    after ``timeout`` at the latest."""
    from jnius import autoclass  # type: ignore

    Context = autoclass("android.content.Context")
    PowerManager = autoclass("android.os.PowerManager")
    lock = context.getSystemService(Context.POWER_SERVICE).newWakeLock(PowerManager.PARTIAL_WAKE_LOCK,
                                                                       "partlens:sync")
    lock.acquire(int(timeout.total_seconds() * 1000))
    try:
        yield
    finally:
        if lock.isHeld():
            lock.release()


def schedule_from_app(context: Any, device_dir: str | os.PathLike[str], now: dt.datetime) -> dt.datetime | None:
    """Called by the app at start: (re)arm the alarm for the next attempt. None when not enrolled."""
    device_dir = Path(device_dir)
    if not (device_dir / "device.json").is_file():
        return None
    status = read_status(device_dir)
    at = None
    if status and status.get("next_at"):
        try:
            at = dt.datetime.fromisoformat(status["next_at"])
        except ValueError:
            at = None
    # an attempt further ahead than any this module plans was planned under a wrong clock (a tablet that ran in
    # 2040 and was corrected waited 14 years; one that booted in 2000 armed 9,496 days ahead): plan afresh
    if at is None or at.tzinfo != now.tzinfo or at <= now or at > now + MAX_AHEAD:
        at = next_attempt(now, window_of(device_dir), SKIPPED)
    if android_schedule(context, at, str(device_dir)):
        clear_arm_failure(device_dir)
    else:  # Android 14 denies exact alarms to new installs by default; an inexact alarm may not start the service
        record_arm_failure(device_dir, "Android does not allow partlens exact alarms, so the nightly sync may not "
                           "start: allow it in Settings > Apps > partlens > Alarms & reminders", now)
    return at

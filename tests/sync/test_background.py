"""The tablet's nightly background sync: the attempt, the next alarm, and the Android glue (fake jnius)."""
from __future__ import annotations

import configparser
import datetime as dt
import json
import sys
import types
from pathlib import Path

import pytest

from edge_app.errors import AuthError, SyncError
from sync import background
from sync.background import SKIPPED, SYNCED, FAILED, next_attempt, run_once
from sync.schedule import SyncWindow

from .helpers import part_image

REPO = Path(__file__).resolve().parents[2]
NIGHT = SyncWindow.parse("22:30-04:00")
DEFAULT = SyncWindow()  # 01:00-05:00


def t(day: int, hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hh, mm)


@pytest.mark.parametrize("now, window, outcome, expected", [
    (t(1, 2), DEFAULT, SYNCED, t(2, 1)),            # synced: next night's opening
    (t(1, 0, 30), DEFAULT, SYNCED, t(1, 1)),        # synced before the window (manual): tonight's opening
    (t(1, 2), DEFAULT, SKIPPED, t(1, 2, 30)),       # not docked inside the window: retry in 30 min
    (t(1, 2), DEFAULT, FAILED, t(1, 2, 30)),        # hub down: retry in 30 min
    (t(1, 4, 40), DEFAULT, FAILED, t(2, 1)),        # the retry would fall after the window: next night
    (t(1, 12), DEFAULT, SKIPPED, t(2, 1)),          # app started at noon: arm tonight's opening
    (t(1, 23), NIGHT, SKIPPED, t(1, 23, 30)),       # wrapping window, before midnight
    (t(1, 23, 50), NIGHT, FAILED, t(2, 0, 20)),     # ... and across midnight
    (t(2, 3, 45), NIGHT, FAILED, t(2, 22, 30)),     # ... past its end
    (t(2, 1), NIGHT, SYNCED, t(2, 22, 30)),
    (t(1, 12), SyncWindow.parse("always"), SYNCED, t(2, 12)),
    (t(1, 12), SyncWindow.parse("always"), SKIPPED, t(1, 12, 30)),
])
def test_next_attempt(now, window, outcome, expected):
    assert next_attempt(now, window, outcome) == expected


def test_next_attempt_rejects_unknown_outcome():
    with pytest.raises(ValueError):
        next_attempt(t(1, 2), DEFAULT, "maybe")


class FakeClient:
    """Stands in for SyncClient: counts syncs, or raises."""

    calls = 0

    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc

    def __call__(self, device_dir: Path) -> "FakeClient":
        return self

    def sync(self):
        FakeClient.calls += 1
        if self.exc:
            raise self.exc
        return types.SimpleNamespace(to_dict=lambda: {"from_version": 3, "to_version": 5})


@pytest.mark.parametrize("charging, unmetered, now, reason", [
    (False, True, t(1, 2), "not docked"),
    (True, False, t(1, 2), "metered or no network"),
    (True, True, t(1, 12), "outside the window 01:00-05:00"),
])
def test_attempt_skipped_by_policy_never_syncs(tmp_path, charging, unmetered, now, reason):
    FakeClient.calls = 0
    a = run_once(tmp_path, now=now, charging=charging, unmetered=unmetered, client_factory=FakeClient())
    assert (a.outcome, a.reason, a.result) == (SKIPPED, reason, None)
    assert FakeClient.calls == 0
    assert json.loads((tmp_path / "sync_status.json").read_text())["outcome"] == SKIPPED


def test_attempt_syncs_records_and_keeps_last_success_through_failures(tmp_path):
    FakeClient.calls = 0
    ok = run_once(tmp_path, now=t(1, 2), charging=True, unmetered=True, client_factory=FakeClient())
    assert ok.outcome == SYNCED and ok.reason == "catalogue v3 -> v5" and ok.next_at == t(2, 1).isoformat()
    assert ok.last_success == t(1, 2).isoformat()
    bad = run_once(tmp_path, now=t(2, 1, 10), charging=True, unmetered=True,
                   client_factory=FakeClient(SyncError("hub unreachable: connection refused")))
    assert bad.outcome == FAILED and "hub unreachable" in bad.reason and bad.next_at == t(2, 1, 40).isoformat()
    assert bad.last_success == t(1, 2).isoformat()  # the last good sync is not forgotten
    assert background.read_status(tmp_path) == bad.to_dict()
    denied = run_once(tmp_path, now=t(2, 1, 40), charging=True, unmetered=True,
                      client_factory=FakeClient(AuthError("401: token revoked")))
    assert denied.outcome == FAILED and denied.reason.startswith("AuthError")
    assert FakeClient.calls == 3


def test_unexpected_errors_are_not_swallowed(tmp_path):
    with pytest.raises(ZeroDivisionError):
        run_once(tmp_path, now=t(1, 2), charging=True, unmetered=True, client_factory=FakeClient(ZeroDivisionError()))
    # ... but recorded, so the app's sync screen shows the failed night, not the last good one
    status = background.read_status(tmp_path)
    assert status["outcome"] == FAILED and status["reason"].startswith("internal error ZeroDivisionError")
    assert status["next_at"] == next_attempt(t(1, 2), DEFAULT, FAILED, background.DEFAULT_RETRY).isoformat()


def test_window_comes_from_enrolment(tmp_path):
    assert str(background.window_of(tmp_path)) == "01:00-05:00"  # not enrolled: the default
    (tmp_path / "device.json").write_text(json.dumps({"sync_window": "22:30-04:00"}))
    assert str(background.window_of(tmp_path)) == "22:30-04:00"
    a = run_once(tmp_path, now=t(1, 23), charging=False, unmetered=True, client_factory=FakeClient())
    assert a.window == "22:30-04:00" and a.next_at == t(1, 23, 30).isoformat()


def test_a_real_sync_through_the_background_attempt(world):
    """The same attempt over the real client and an in-memory hub: the catalogue arrives."""
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    def factory(d):
        return SyncClient(d, transport=InMemoryTransport(world.hub, world.payload["token"]),
                          smoke_test=lambda b: None)

    a = run_once(world.device_dir, now=t(1, 2), charging=True, unmetered=True, client_factory=factory)
    assert a.outcome == SYNCED and a.result["to_version"] == world.hub.store.version() > 0
    wrong = run_once(world.device_dir, now=t(2, 2), charging=True, unmetered=True,
                     client_factory=lambda d: SyncClient(d, transport=InMemoryTransport(world.hub, "pl1.x.y"),
                                                        smoke_test=lambda b: None))
    assert wrong.outcome == FAILED and "AuthError" in wrong.reason


def test_a_nightly_sync_short_of_space_prunes_uploaded_photos_for_the_next_attempt(world, monkeypatch):
    """The background service has no app around it: after a sync refused for lack of storage (the outbox went up
    first) it prunes the photos the tablet no longer needs itself, and says so in the status line."""
    from edge_app import storage
    from edge_app.services import CaptureStore
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    store = CaptureStore(world.device_dir / "captures")
    cap = store.add_bytes(part_image(5))
    side = store.root / f"{cap.capture_id}.json"
    meta = json.loads(side.read_text())
    meta["created_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).isoformat()  # young, uploaded
    side.write_text(json.dumps(meta))
    monkeypatch.setattr(storage, "free_bytes", lambda p: 5 * 1024**2)  # below what a sync keeps free

    def factory(d):
        return SyncClient(d, transport=InMemoryTransport(world.hub, world.payload["token"]),
                          smoke_test=lambda b: None)

    a = run_once(world.device_dir, now=t(1, 2), charging=True, unmetered=True, client_factory=factory)
    assert a.outcome == FAILED and "SyncStorageError" in a.reason
    assert "pruned photos no longer needed (3 files)" in a.reason  # photo, record, screen copy
    assert not Path(cap.path).exists()


# -- the Android glue, against a fake jnius -----------------------------------------------------------
class FakeIntent:
    ACTION_BATTERY_CHANGED = "android.intent.action.BATTERY_CHANGED"

    def __init__(self, extras: dict | None = None) -> None:
        self.extras = extras or {}

    def getIntExtra(self, key, default):
        return self.extras.get(key, default)


class FakeAndroid:
    """Just the Android surface sync.background uses, recording what it was asked."""

    def __init__(self, plugged: int = 1, network: bool = True, metered: bool = False, sdk: int = 34,
                 exact_allowed: bool = True) -> None:
        self.plugged, self.network, self.metered = plugged, network, metered
        self.sdk, self.exact_allowed = sdk, exact_allowed
        self.alarms: list[tuple[str, int, int, object]] = []
        self.pending: list[tuple] = []
        self.locks: list["FakeAndroid.Lock"] = []
        android = self

        class Context:
            CONNECTIVITY_SERVICE, ALARM_SERVICE, POWER_SERVICE = "connectivity", "alarm", "power"

        class IntentFilter:
            def __init__(self, action):
                self.action = action

        class BatteryManager:
            EXTRA_PLUGGED = "plugged"

        class AlarmManager:
            RTC_WAKEUP = 0

        class PendingIntent:
            FLAG_UPDATE_CURRENT, FLAG_IMMUTABLE = 1 << 27, 1 << 26

            @staticmethod
            def getForegroundService(ctx, code, intent, flags):
                android.pending.append((code, intent, flags))
                return ("pending", code)

        class Version:
            SDK_INT = sdk

        class PowerManager:
            PARTIAL_WAKE_LOCK = 1

        class ServiceSync:
            @staticmethod
            def getDefaultIntent(ctx, icon, title, text, argument):
                return {"service": "ServiceSync", "argument": argument, "title": title}

        self.classes = {"android.content.Context": Context, "android.content.Intent": FakeIntent,
                        "android.content.IntentFilter": IntentFilter, "android.os.BatteryManager": BatteryManager,
                        "android.app.AlarmManager": AlarmManager, "android.app.PendingIntent": PendingIntent,
                        "android.os.Build$VERSION": Version, "android.os.PowerManager": PowerManager,
                        background.SERVICE_CLASS: ServiceSync,
                        "org.kivy.android.PythonActivity": types.SimpleNamespace(mActivity=self)}

    class Lock:
        def __init__(self, tag):
            self.tag, self.held, self.timeout = tag, False, None

        def acquire(self, timeout):
            self.held, self.timeout = True, timeout

        def isHeld(self):
            return self.held

        def release(self):
            self.held = False

    # the Context methods
    def registerReceiver(self, receiver, flt):
        assert receiver is None and flt.action == FakeIntent.ACTION_BATTERY_CHANGED
        return FakeIntent({"plugged": self.plugged})

    def getSystemService(self, name):
        return {"connectivity": self, "alarm": self, "power": self}[name]

    # ConnectivityManager
    def getActiveNetwork(self):
        return object() if self.network else None

    def isActiveNetworkMetered(self):
        return self.metered

    # AlarmManager
    def canScheduleExactAlarms(self):
        return self.exact_allowed

    def setExactAndAllowWhileIdle(self, kind, millis, pending):
        self.alarms.append(("exact", kind, millis, pending))

    def setAndAllowWhileIdle(self, kind, millis, pending):
        self.alarms.append(("inexact", kind, millis, pending))

    # PowerManager
    def newWakeLock(self, level, tag):
        self.locks.append(FakeAndroid.Lock(tag))
        return self.locks[-1]

    def autoclass(self, name):
        if name not in self.classes:
            raise ImportError(f"fake jnius: no class {name}")
        return self.classes[name]


@pytest.fixture
def android(monkeypatch):
    def install(**kw):
        fake = FakeAndroid(**kw)
        monkeypatch.setitem(sys.modules, "jnius", types.SimpleNamespace(autoclass=fake.autoclass))
        return fake
    return install


@pytest.mark.parametrize("kw, expected", [
    (dict(plugged=2), (True, True)),           # USB dock
    (dict(plugged=0), (False, True)),          # on battery
    (dict(metered=True), (True, False)),       # mobile data
    (dict(network=False), (True, False)),      # no network at all
])
def test_android_conditions(android, kw, expected):
    fake = android(**kw)
    assert background.android_conditions(fake) == expected


def test_android_schedule_sets_one_exact_alarm_for_the_service(android):
    fake = android()
    at = dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.timezone.utc)
    assert background.android_schedule(fake, at, "/data/partlens") is True
    (kind, rtc, millis, pending), = fake.alarms
    assert (kind, rtc, millis) == ("exact", 0, int(at.timestamp() * 1000))
    code, intent, flags = fake.pending[0]
    assert pending == ("pending", code) and code == background.ALARM_REQUEST_CODE
    assert intent["argument"] == "/data/partlens"
    assert flags & (1 << 26) and flags & (1 << 27)  # immutable (Android 12+ requires it), replaces the old one


def test_android_schedule_without_exact_alarm_permission_falls_back_and_says_so(android):
    fake = android(exact_allowed=False)
    assert background.android_schedule(fake, dt.datetime(2026, 3, 2, 1, 0), "/d") is False
    assert fake.alarms[0][0] == "inexact"
    old = android(sdk=30, exact_allowed=False)  # before Android 12 exact alarms need no permission
    assert background.android_schedule(old, dt.datetime(2026, 3, 2, 1, 0), "/d") is True


def test_an_inexact_alarm_is_shown_as_nightly_sync_off_until_exact_alarms_are_allowed(android, tmp_path):
    """Android 14 denies exact alarms to a fresh install; an inexact alarm may not start the foreground service,
    so the sync screen must say so (it said nothing: the app cleared the arming failure)."""
    from edge_app.app.android import arm_background_sync

    (tmp_path / "device.json").write_text("{}")
    denied = android(exact_allowed=False)
    assert arm_background_sync(tmp_path) is not None and denied.alarms[0][0] == "inexact"
    failure = background.read_arm_failure(tmp_path)
    assert failure is not None and "Alarms & reminders" in failure["reason"]
    android(exact_allowed=True)  # the engineer allowed it; the next start arms an exact alarm
    assert arm_background_sync(tmp_path) is not None and background.read_arm_failure(tmp_path) is None


def test_service_entry_point_attempts_and_rearms(android, world, monkeypatch):
    from sync import android_service
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    monkeypatch.setattr("sync.client.SyncClient", lambda d: SyncClient(
        d, transport=InMemoryTransport(world.hub, world.payload["token"]),
                          smoke_test=lambda b: None))
    fake = android(plugged=1)
    now = dt.datetime(2026, 3, 1, 2, 0).astimezone()
    assert android_service.main(fake, str(world.device_dir), now) == 0
    status = background.read_status(world.device_dir)
    assert status["outcome"] == SYNCED
    # a fallback alarm first (in case the attempt is killed), then the next night's opening
    assert [a[2] for a in fake.alarms] == [int((now + background.DEFAULT_RETRY).timestamp() * 1000),
                                          int(next_attempt(now, DEFAULT, SYNCED).timestamp() * 1000)]
    assert fake.locks and not fake.locks[0].held  # the wake lock was released
    undocked = android(plugged=0)
    assert android_service.main(undocked, str(world.device_dir), now) == 0
    assert background.read_status(world.device_dir)["reason"] == "not docked"
    assert android_service.main(android(), str(world.root / "not-enrolled"), now) == 0


def test_app_arms_the_alarm_only_when_enrolled(android, tmp_path):
    fake = android()
    now = dt.datetime(2026, 3, 1, 12, 0).astimezone()
    assert background.schedule_from_app(fake, tmp_path, now) is None and not fake.alarms
    (tmp_path / "device.json").write_text(json.dumps({"sync_window": "22:30-04:00"}))
    at = background.schedule_from_app(fake, tmp_path, now)
    assert at == now.replace(hour=22, minute=30) and fake.alarms[0][2] == int(at.timestamp() * 1000)
    # a pending retry recorded by the service is kept when it is still ahead
    soon = now + dt.timedelta(minutes=10)
    (tmp_path / "sync_status.json").write_text(json.dumps({"next_at": soon.isoformat()}))
    assert background.schedule_from_app(fake, tmp_path, now) == soon


@pytest.mark.parametrize("planned_under", [dt.datetime(2040, 12, 9, 1, 0), dt.datetime(2051, 1, 1, 1, 0)])
def test_an_attempt_planned_under_a_clock_years_ahead_is_planned_again(android, tmp_path, planned_under):
    """A tablet that synced while its clock said 2040 kept the 2040 attempt after the clock was put right: the
    app re-armed it at every start and nightly sync stopped for 14 years (an audit, 23rd session)."""
    fake = android()
    (tmp_path / "device.json").write_text(json.dumps({"sync_window": "01:00-05:00"}))
    now = dt.datetime(2026, 12, 8, 12, 0).astimezone()
    (tmp_path / "sync_status.json").write_text(json.dumps({"next_at": planned_under.astimezone().isoformat()}))
    at = background.schedule_from_app(fake, tmp_path, now)
    assert at == dt.datetime(2026, 12, 9, 1, 0).astimezone()
    assert fake.alarms[-1][2] == int(at.timestamp() * 1000)
    # the furthest a real plan lies ahead (a synced attempt in an always-open window) is kept
    furthest = now + background.ALWAYS_PERIOD
    (tmp_path / "sync_status.json").write_text(json.dumps({"next_at": furthest.isoformat()}))
    assert background.schedule_from_app(fake, tmp_path, now) == furthest


def test_app_start_arms_the_alarm_and_survives_a_missing_service(android, tmp_path, caplog):
    from edge_app.app.android import arm_background_sync

    (tmp_path / "device.json").write_text("{}")
    fake = android()
    at = arm_background_sync(tmp_path)
    assert at is not None and len(fake.alarms) == 1
    assert background.read_arm_failure(tmp_path) is None
    service = fake.classes.pop(background.SERVICE_CLASS)  # e.g. an APK built without the service
    assert arm_background_sync(tmp_path) is None
    assert "background sync not armed" in caplog.text and background.SERVICE_CLASS in caplog.text
    # the failure is not only logged: the sync screen's status says nightly sync is off, and why
    failure = background.read_arm_failure(tmp_path)
    assert failure is not None and background.SERVICE_CLASS in failure["reason"]
    from edge_app.services import DeviceServices

    services = DeviceServices(tmp_path)
    try:
        nightly = services.sync_status().nightly
    finally:
        services.close()
    assert nightly is not None and nightly.startswith("OFF") and background.SERVICE_CLASS in nightly
    # once arming works again the warning goes away
    fake.classes[background.SERVICE_CLASS] = service
    assert arm_background_sync(tmp_path) is not None and background.read_arm_failure(tmp_path) is None


def test_build_spec_declares_the_service_the_code_starts():
    spec = configparser.ConfigParser(interpolation=None)
    spec.read(REPO / "build.spec")
    app = spec["app"]
    assert f"{app['package.domain'].strip()}.{app['package.name'].strip()}" == background.ANDROID_PACKAGE
    name, entry, *options = app["services"].strip().split(":")
    assert f"{background.ANDROID_PACKAGE}.Service{name.capitalize()}" == background.SERVICE_CLASS
    from tests.test_build_spec import buildozer_ships

    assert (REPO / entry).is_file() and buildozer_ships(entry, app)
    assert "foreground" in options and "foregroundServiceType=dataSync" in options
    perms = {p.strip() for p in app["android.permissions"].split(",")}
    assert {"FOREGROUND_SERVICE", "FOREGROUND_SERVICE_DATA_SYNC", "SCHEDULE_EXACT_ALARM", "WAKE_LOCK"} <= perms
    for module in ("sync/background.py", "sync/schedule.py"):
        assert buildozer_ships(module, app)

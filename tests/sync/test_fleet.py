"""`hub devices`: what each tablet last reported at a sync, and which ones stopped syncing."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest

from edge_app.errors import AuthError, InputError, UsageError

from .helpers import write_images
from .test_inmemory import client


def _row(rows, name):
    return next(r for r in rows if r["name"] == name)


def test_fleet_shows_each_devices_last_sync_and_the_stale_ones(world, capsys) -> None:
    from edge_app.cli import main
    from sync.hub.enrol import add_device, fleet

    add_device(world.hub, "tab-quiet", "site_a")  # enrolled, never synced
    rows = fleet(world.hub)
    assert _row(rows, "tab1")["last_sync_at"] is None and _row(rows, "tab1")["stale"]
    assert client(world).status()["tls"] == "none (plain HTTP)"
    r = client(world).sync()
    assert r.checked_in is True  # after applying, the tablet told the hub what it holds now
    rows = fleet(world.hub)
    tab = _row(rows, "tab1")
    assert tab["last_catalogue_version"] == world.hub.store.version() == r.to_version
    assert tab["versions_behind"] == 0 and tab["had_active_bundle"] is True and not tab["stale"]
    assert tab["days_since_sync"] < 0.01 and "token_hash" not in tab
    quiet = _row(rows, "tab-quiet")
    assert quiet["stale"] and quiet["versions_behind"] is None and quiet["had_active_bundle"] is None

    # the hub moves on: the tablet is behind until its next sync; three days later it is stale
    img = write_images(world.root / "more", [7])[0]
    world.hub.add_part({"part_number": "P7", "name": "part 7"}, images=[img])
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    tab = _row(fleet(world.hub, now=later), "tab1")
    assert tab["versions_behind"] == 1 and tab["stale"] and tab["days_since_sync"] > 2.9
    assert not _row(fleet(world.hub, stale_days=5, now=later), "tab1")["stale"]
    with pytest.raises(UsageError):
        fleet(world.hub, stale_days=0)
    # a sync with nothing new changes nothing on the hub side but the time; no extra check-in
    assert client(world).sync().checked_in is True and _row(fleet(world.hub), "tab1")["versions_behind"] == 0
    assert client(world).sync().checked_in is None

    assert world.hub.status()["devices"] == {"enrolled": 2, "stale": ["tab-quiet"], "on_active_bundle": 1,
                                             "last_came_over_plain_http": []}  # in-process here
    assert _row(fleet(world.hub), "tab1")["last_via"] == "in-process"
    assert main(["hub", "devices", "--hub", str(world.hub.root)]) == 0
    out = capsys.readouterr()
    assert {d["name"] for d in json.loads(out.out)} == {"tab1", "tab-quiet"}
    # a tablet enrolled a minute ago is not "without a sync for more than 2 days": it never synced
    assert "1 device(s) enrolled but never synced: tab-quiet" in out.err and "more than 2 days" not in out.err


def test_a_hub_database_from_before_the_fleet_columns_is_migrated(tmp_path) -> None:
    from sync.hub.store import MIGRATIONS, SCHEMA, SqliteHubStore

    path = tmp_path / "hub.db"
    conn = sqlite3.connect(path)
    for stmt in SCHEMA:  # what an older hub wrote: no schema_version, devices without the new columns
        conn.execute(stmt)
    conn.execute("INSERT INTO devices (name, site, token_hash, created_at) VALUES ('old-tab', 's', 'h', 't')")
    conn.commit()
    conn.close()
    store = SqliteHubStore(path)
    assert store.list_devices() == [{"name": "old-tab", "site": "s", "created_at": "t", "revoked": 0,
                                     "last_sync_at": None, "last_catalogue_version": None, "last_bundle_id": None,
                                     "last_via": None, "last_catalogue_epoch": None, "keep_free_mb": None,
                                     "sync_window": None, "last_error": None, "install_conflict_at": None,
                                     "enrol_expires_at": store.list_devices()[0]["enrol_expires_at"],
                                     "install_bound": 0, "last_settings_stamp": None}]
    # a code enrolled before expiries and still unused expires a week after the update (not at once, not never)
    left = dt.datetime.fromisoformat(store.list_devices()[0]["enrol_expires_at"]) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=6.99) < left <= dt.timedelta(days=7)
    assert store.get_meta("schema_version") == MIGRATIONS[-1][0]
    store.device_seen("old-tab", 4, "b1")
    store.close()
    again = SqliteHubStore(path)  # opening again does not migrate twice
    assert again.list_devices()[0]["last_catalogue_version"] == 4
    again.close()


def test_hub_changes_a_tablets_window_and_reserve_without_re_enrolling(world, capsys, monkeypatch, caplog) -> None:
    """`hub set-device`: the nightly window and the storage a sync keeps free, set after enrolment, reach the tablet
    with its next sync plan (they used to need a new enrolment)."""
    import logging

    from edge_app.cli import main
    from sync.background import window_of
    from sync.client import SyncClient, reserve_of
    from sync.transport import InMemoryTransport

    def client(**kw):
        return SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                          smoke_test=lambda b: None, **kw)

    def device_json():
        return json.loads((world.device_dir / "device.json").read_text())

    hub_dir = str(world.hub.root)
    client().sync()
    assert "keep_free_mb" not in device_json() and str(window_of(world.device_dir)) == "01:00-05:00"
    assert main(["hub", "set-device", "--hub", hub_dir, "tab1", "--keep-free-mb", "500",
                 "--sync-window", "02:30-04:00"]) == 0
    assert json.loads(capsys.readouterr().out) == {"device": "tab1", "sync_window": "02:30-04:00",
                                                   "keep_free_mb": 500.0}
    c = client()
    assert c.reserve_bytes == reserve_of({})  # not yet: the tablet learns it from the plan
    c.sync()
    assert c.reserve_bytes == 500 * 1024**2 and reserve_of(device_json()) == 500 * 1024**2
    assert str(window_of(world.device_dir)) == "02:30-04:00"
    assert device_json()["token"] == world.payload["token"]  # the rest of the enrolment untouched
    st = client().status()  # `partlens sync status` on the tablet
    assert (st["sync_window"], st["keep_free_bytes"], st["spot_check_rate"]) == ("02:30-04:00", 500 * 1024**2, 0.05)
    # `sync run --keep-free-mb` for one run still wins over the hub's setting
    assert client(reserve_bytes=0).sync() and client(reserve_bytes=0).reserve_bytes == 0
    from sync.hub.enrol import add_device

    add_device(world.hub, "tab2", "site_a", keep_free_mb=200, sync_window="always")  # kept with the new device
    rows = {r["name"]: r for r in world.hub.store.list_devices()}
    assert (rows["tab1"]["keep_free_mb"], rows["tab1"]["sync_window"]) == (500.0, "02:30-04:00")
    assert (rows["tab2"]["keep_free_mb"], rows["tab2"]["sync_window"]) == (200.0, "00:00-00:00")  # = always
    # bad values are refused at the hub; a malformed one from a buggy hub is refused by the tablet
    assert main(["hub", "set-device", "--hub", hub_dir, "tab1", "--keep-free-mb", "-1"]) == 2
    assert main(["hub", "set-device", "--hub", hub_dir, "tab1", "--sync-window", "25:00-26:00"]) == 2
    assert main(["hub", "set-device", "--hub", hub_dir, "tab1"]) == 2
    assert main(["hub", "set-device", "--hub", hub_dir, "nobody", "--keep-free-mb", "5"]) == 2
    world.hub.store._db().conn.execute("UPDATE devices SET sync_window='tea time' WHERE name='tab1'")
    with caplog.at_level(logging.WARNING, logger="sync.client"):
        client().sync()
    assert "device settings this tablet cannot use" in caplog.text
    assert str(window_of(world.device_dir)) == "02:30-04:00"


def test_a_device_whose_payload_was_lost_gets_a_new_token(world, capsys) -> None:
    """`hub add-device` stopped after the device row was written and before the payload was shown: the name was
    burned and the device blocked `tls-rotate --activate` until revoked. `--reissue` gives a device that never
    synced a new token; the old one stops working. A device that synced, or a revoked one, is refused."""
    from edge_app.cli import main
    from sync.hub.auth import authenticate
    from sync.hub.enrol import add_device

    hub = world.hub
    lost = add_device(hub, "tab9", "site_a")  # as if never printed
    with pytest.raises(UsageError, match="--reissue"):
        add_device(hub, "tab9", "site_a")
    assert main(["hub", "add-device", "tab9", "--hub", str(hub.root), "--site", "site_b", "--reissue",
                 "--keep-free-mb", "250"]) == 0
    new = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert new["device"] == "tab9" and new["site"] == "site_b" and new["token"] != lost["token"]
    assert authenticate(hub.store, hub.secret, new["token"])["site"] == "site_b"
    with pytest.raises(AuthError):
        authenticate(hub.store, hub.secret, lost["token"])
    assert hub.store.device("tab9")["keep_free_mb"] == 250
    # the tablet with the new payload syncs; from then on its token is in use and cannot be reissued
    from sync.client import SyncClient, enrol
    from sync.transport import InMemoryTransport

    d = world.root / "tab9"
    enrol(d, new)
    SyncClient(d, transport=InMemoryTransport(hub, new["token"]), smoke_test=lambda b: None).sync()
    with pytest.raises(UsageError, match="has synced"):
        add_device(hub, "tab9", "site_b", reissue=True)
    with pytest.raises(UsageError) as ei:
        add_device(hub, "tab9", "site_b")
    assert "--reissue" not in str(ei.value)
    add_device(hub, "tab8", "site_a")
    assert main(["hub", "revoke-device", "tab8", "--hub", str(hub.root)]) == 0
    with pytest.raises(UsageError, match="revoked"):
        add_device(hub, "tab8", "site_a", reissue=True)
    with pytest.raises(InputError, match="no device"):
        add_device(hub, "nobody", "site_a", reissue=True)


def test_requests_for_many_versions_do_not_pile_up_cached_deltas(world, monkeypatch) -> None:
    """Each distinct version a token named built and kept one more delta to the current version (a snapshot's
    worth each after a re-embedding); past a cap, other versions get the snapshot, built once."""
    from sync.hub import deltas
    from sync.hub.deltas import PackageService

    monkeypatch.setattr(deltas, "MAX_DELTAS_PER_VERSION", 3)
    for i in range(6):
        world.hub.set_stock("P0", "site_a", i, "A0")
    svc = PackageService(world.hub)
    current = world.hub.store.version()
    names = [svc.plan("site_a", v, world.hub.bundle_id)["package"]["name"] for v in range(1, current)]
    assert len(names) >= 5
    assert names[:3] == [f"delta-{v:06d}-{current:06d}.tar" for v in (1, 2, 3)]
    assert set(names[3:]) == {f"snapshot-{current:06d}.tar"}
    site_dir = svc.site_dir("site_a")
    assert len(list(site_dir.glob("delta-*.tar"))) == 3 and len(list(site_dir.glob("snapshot-*.tar"))) == 1
    # a device at a version whose delta is cached still gets that delta
    assert svc.plan("site_a", 2, world.hub.bundle_id)["package"]["name"] == f"delta-000002-{current:06d}.tar"


def test_a_tablet_that_reaches_the_hub_but_fails_every_sync_is_named_in_hub_devices(world, capsys) -> None:
    """An admin audit: a tablet refusing a rolled-back bundle failed every nightly sync, yet `hub devices` showed it
    recent and not stale. It now tells the hub why its last sync failed with the next plan request."""
    from edge_app.cli import main
    from edge_app.errors import IntegrityError

    from .helpers import make_bundle

    c = client(world)
    c.sync()
    v1 = world.hub.bundle_id
    world.hub.set_bundle(make_bundle(world.root / "export", world.export_key, 2))
    v2 = world.hub.bundle_id
    c.sync()
    with world.hub.store.change() as ch:  # the hub goes back to an older bundle: the tablet refuses it
        ch.set_meta("bundle_id", v1)
    for _ in range(2):
        with pytest.raises(IntegrityError, match="rollback refused"):
            c.sync()
    capsys.readouterr()
    assert main(["hub", "devices", "--hub", str(world.hub.root)]) == 0
    out = capsys.readouterr()
    (row,) = json.loads(out.out)
    assert "rollback refused" in row["last_error"] and not row["stale"]
    assert "device tab1: its last sync failed:" in out.err
    with world.hub.store.change() as ch:  # fixed at the hub: the next sync succeeds and clears it
        ch.set_meta("bundle_id", v2)
    c.sync()
    assert not (world.device_dir / "sync_failure.json").exists()
    assert main(["hub", "devices", "--hub", str(world.hub.root)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["last_error"] is None


def test_a_tablets_reported_failure_reaches_the_admin_without_control_characters(world) -> None:
    """A review: the tablet's words went raw to the admin's terminal (escape sequences, newlines)."""
    from sync.hub.deltas import PackageService

    dev = world.hub.store.device("tab1")
    PackageService(world.hub).plan_for_device(dev, 0, None, last_error="boom\x1b[2J\nrm -rf" + "x" * 500)
    (row,) = world.hub.store.list_devices()
    assert row["last_error"].startswith("boom?[2J?rm -rf") and len(row["last_error"]) == 300


def test_the_sync_clients_bundle_pointer_is_checked_like_the_apps(world) -> None:
    from edge_app.errors import IntegrityError
    from sync.apply import DevicePaths, read_active

    paths = DevicePaths(world.device_dir)
    for doc in ([], {"bundle_id": "../x"}, {"bundle_id": 5}):
        paths.active.parent.mkdir(parents=True, exist_ok=True)
        paths.active.write_text(json.dumps(doc))
        with pytest.raises(IntegrityError):
            read_active(paths)


def test_hub_devices_tells_used_unused_and_expired_enrolment_codes(world, capsys) -> None:
    from edge_app.cli import main
    from sync.hub.auth import EnrolmentExpired
    from sync.hub.enrol import add_device, fleet
    from sync.transport import InMemoryTransport

    hub = world.hub
    client(world).sync()  # tab1 used its code
    fresh = add_device(hub, "tab-new", "site_a", valid_days=2)
    left = dt.datetime.fromisoformat(fresh["expires_at"]) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=1.99) < left <= dt.timedelta(days=2)
    old = add_device(hub, "tab-old", "site_a", valid_days=1)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1.5)
    codes = {r["name"]: r["code"] for r in fleet(hub, now=later)}
    assert codes == {"tab1": "used", "tab-new": "unused", "tab-old": "expired"}
    assert {r["name"]: r["code"] for r in fleet(hub)}["tab-old"] == "unused"
    hub.store._db().conn.execute("UPDATE devices SET enrol_expires_at='2000-01-01T00:00:00+00:00' "
                                 "WHERE name='tab-old'")
    assert main(["hub", "devices", "--hub", str(hub.root)]) == 0
    err = capsys.readouterr().err
    assert "1 enrolment code(s) expired unused (refused): tab-old" in err
    # the in-process transport refuses it too, with or without an install id
    for install in (None, "a" * 32):
        with pytest.raises(EnrolmentExpired, match="tab-old"):
            InMemoryTransport(hub, old["token"], install_id=install).plan(0, None)
    # bad --valid-days are refused before anything is written
    for bad in ("0", "-1", "366", "nan"):
        assert main(["hub", "add-device", "tab-bad", "--hub", str(hub.root), "--site", "site_a",
                     "--valid-days", bad]) == 2
    assert hub.store.device("tab-bad") is None
    assert main(["hub", "add-device", "tab-ok", "--hub", str(hub.root), "--site", "site_a",
                 "--valid-days", "30"]) == 0
    assert "the code works until" in capsys.readouterr().err


def test_a_device_for_a_site_differing_only_in_case_is_refused(world) -> None:
    """`add-device --site SITE_A` beside site_a enrolled a tablet that saw no stock, and made SITE_A a known site so
    later imports could write stock to it (an audit, 23rd session): refused, as an import's column is."""
    from edge_app.errors import InputError
    from sync.hub.enrol import add_device

    with pytest.raises(InputError, match=r"device tab-upper: stock site\(s\) that differ .* SITE_A \(the hub has "
                                         r"site_a\)"):
        add_device(world.hub, "tab-upper", "SITE_A")
    assert world.hub.store.device("tab-upper") is None
    assert add_device(world.hub, "tab-new-site", "quay_c")["site"] == "quay_c"  # a new site: said, not refused

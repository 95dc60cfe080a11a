"""A full tablet: a sync that would not fit is refused before it writes, one that hits a full disk midway is
undone, the outbox still goes up, and the engineer's photos keep their room (``edge_app/storage.py``)."""
from __future__ import annotations

import errno
import sqlite3

import numpy as np
import pytest

from edge_app import storage
from edge_app.errors import StorageError, SyncError, SyncStorageError, UsageError

from .helpers import make_bundle, write_images
from .test_faults import device_state
from .test_inmemory import client

MB = 1024**2


def fake_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(storage, "free_bytes", lambda path: free)


def test_is_disk_full_knows_enospc_edquot_and_a_real_sqlite_full(tmp_path):
    assert storage.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert storage.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not storage.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not storage.is_disk_full(ValueError("full"))
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 1}")
    with pytest.raises(sqlite3.OperationalError) as info:  # SQLite's own "database or disk is full"
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert storage.is_disk_full(info.value)
    conn.close()
    with pytest.raises(sqlite3.OperationalError) as other:
        sqlite3.connect(tmp_path / "x.db").execute("SELECT * FROM missing")
    assert not storage.is_disk_full(other.value)


def test_check_space_keeps_the_reserve_and_says_what_is_missing(tmp_path, monkeypatch):
    fake_free(monkeypatch, 150 * MB)
    storage.check_space(tmp_path, 50 * MB, "x", reserve=100 * MB)  # exactly fits
    with pytest.raises(StorageError) as info:
        storage.check_space(tmp_path, 50 * MB + 1, "the catalogue update", reserve=100 * MB)
    msg = str(info.value)
    assert "the catalogue update" in msg and "150.0 MB" in msg and "100.0 MB must stay free" in msg
    assert info.value.exit_code == 8
    with pytest.raises(SyncStorageError) as sync_err:
        storage.check_space(tmp_path, 60 * MB, "y", reserve=100 * MB, error=SyncStorageError)
    assert isinstance(sync_err.value, SyncError) and sync_err.value.exit_code == 8
    assert storage.free_bytes(tmp_path / "not" / "made" / "yet") > 0  # the nearest existing parent


def test_a_sync_that_would_not_fit_changes_nothing_and_still_uploads(world, monkeypatch):
    from edge_app.runtime.outbox import Outbox

    c = client(world)
    c.sync()
    before = device_state(world.device_dir)
    world.hub.add_part({"part_number": "NEW-1", "name": "new"}, inventory={"site_a": (1, "Z")},
                       images=write_images(world.root / "new", [42]))
    ob = Outbox(world.device_dir / "outbox.db")
    uid = ob.add("feedback", {"part_number": "P1", "verdict": "correct"})
    ob.close()
    fake_free(monkeypatch, c.reserve_bytes + 10)  # a few bytes above the reserve: no package fits
    from sync.hub import uploads

    monkeypatch.setattr(uploads, "UPLOAD_RESERVE_BYTES", 0)  # (the fake also answers for the in-memory hub)
    with pytest.raises(SyncStorageError) as info:
        c.sync()
    assert "not enough storage for the catalogue update" in str(info.value)
    assert "the outbox was uploaded (1 records)" in str(info.value)
    assert device_state(world.device_dir) == before
    assert not list((world.device_dir / "downloads").glob("*"))
    assert uid in {u["uuid"] for u in world.hub.store.list_uploads()}, "the outbox must go up even when space is short"
    monkeypatch.undo()
    r = c.sync()
    assert r.applied["parts"] == 1 and device_state(world.device_dir)["version"] == world.hub.store.version()


def test_a_bundle_that_would_not_fit_is_not_downloaded_and_the_old_one_stays(world, monkeypatch):
    c = client(world)
    c.sync()
    old = device_state(world.device_dir)
    world.hub.set_bundle(make_bundle(world.root / "export", world.export_key, 2))
    fake_free(monkeypatch, c.reserve_bytes + 100)
    with pytest.raises(SyncStorageError, match="not enough storage for the new model bundle"):
        c.sync(upload=False)
    assert device_state(world.device_dir) == old
    assert not (world.device_dir / "bundles" / world.hub.bundle_id).exists()
    monkeypatch.undo()
    assert c.sync().bundle_installed == world.hub.bundle_id


def test_keep_free_zero_lets_a_sync_use_the_last_bytes(world, monkeypatch):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    with pytest.raises(UsageError, match="must be >= 0"):
        SyncClient(world.device_dir, reserve_bytes=-1)
    fake_free(monkeypatch, 10 * MB)  # below the default reserve, but the first sync needs far less
    with pytest.raises(SyncStorageError):
        client(world).sync(upload=False)
    c = SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                   smoke_test=lambda b: None, reserve_bytes=0)
    assert c.sync(upload=False).package.startswith("snapshot-")


def test_a_real_sqlite_full_during_apply_is_rolled_back(world):
    """SQLite's own SQLITE_FULL (a page limit on the device database) in the middle of applying a package."""
    from sync.client import SyncClient

    c = client(world)
    c.sync()
    before = device_state(world.device_dir)
    world.hub.add_part({"part_number": "BIG", "name": "x" * 50_000, "description": "y" * 200_000},
                       inventory={"site_a": (1, "Z")}, images=write_images(world.root / "new", [43]))

    class Capped(SyncClient):
        def _open_db(self):
            db = super()._open_db()
            pages = db.db.conn.execute("PRAGMA page_count").fetchone()[0]
            db.db.conn.execute(f"PRAGMA max_page_count = {pages + 3}")
            return db

    capped = Capped(world.device_dir, transport=c.transport, smoke_test=lambda b: None)
    with pytest.raises(SyncStorageError, match="storage full while syncing") as info:
        capped.sync(upload=False)
    assert isinstance(info.value.__cause__.__cause__, sqlite3.OperationalError)  # SQLite's own SQLITE_FULL
    assert storage.is_disk_full(info.value.__cause__.__cause__)
    assert device_state(world.device_dir) == before
    r = c.sync(upload=False)
    assert r.applied["parts"] == 1


def test_space_to_apply_is_an_upper_bound_of_what_a_snapshot_takes(tmp_path, monkeypatch):
    """The estimate the pre-apply check uses, against the measured growth of the catalogue and index files."""
    from sync.apply import DevicePaths, space_to_apply
    from sync.package import read_package

    from .conftest import build_world

    world = build_world(tmp_path)
    for i in range(120):
        world.hub.add_part({"part_number": f"Q{i}", "name": f"bolt {i}", "description": "hex bolt " * 20},
                           inventory={"site_a": (i, f"B{i}")}, images=write_images(world.root / f"n{i}", [500 + i]))
    c = client(world)
    files = ("catalogue.db", "catalogue.db-wal", "catalogue.db-shm")

    def used() -> int:
        return sum(f.stat().st_size for f in world.device_dir.iterdir()
                   if f.is_file() and (f.name in files or f.name.startswith("index-")))

    seen = {}

    def spy(path, sig, keyring):
        pkg = read_package(path, sig, keyring)
        seen["estimate"], seen["before"] = space_to_apply(DevicePaths(world.device_dir), pkg), used()
        return pkg

    monkeypatch.setattr("sync.client.read_package", spy)
    c.sync(upload=False)
    grown = used() - seen["before"]
    assert 0 < grown <= seen["estimate"] <= 12 * grown, (grown, seen["estimate"])


def test_thumbnails_stop_before_the_reserve_and_the_sync_still_succeeds(world, monkeypatch):
    import shutil

    c = client(world)
    assert c.sync(upload=False).thumbnails["fetched"] == 3
    shutil.rmtree(world.device_dir / "thumbs")  # a display cache: fetched again at the next sync
    fake_free(monkeypatch, c.reserve_bytes + 1000)  # the three thumbnails (~1-2 kB each) would eat the reserve
    r = c.sync(upload=False)
    assert r.thumbnails == {"fetched": 0, "failed": 3, "present": 0, "removed": 0}
    assert not list((world.device_dir / "thumbs").glob("*.jpg"))
    monkeypatch.undo()
    assert c.sync(upload=False).thumbnails == {"fetched": 3, "failed": 0, "present": 0, "removed": 0}


def test_a_full_disk_while_writing_thumbnails_stops_them_not_the_sync(world, monkeypatch):
    import edge_app.atomic as atomic

    real = atomic.atomic_write_bytes
    calls = {"n": 0}

    def full_after_one(path, data, **kw):
        calls["n"] += "thumbs" in str(path)
        if calls["n"] > 1 and "thumbs" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(atomic, "atomic_write_bytes", full_after_one)
    r = client(world).sync(upload=False)
    assert r.thumbnails == {"fetched": 1, "failed": 2, "present": 0, "removed": 0} and r.package


def test_outbox_on_a_full_disk_is_a_storage_error_and_keeps_what_it_had(tmp_path):
    from edge_app.runtime.outbox import Outbox

    ob = Outbox(tmp_path / "outbox.db")
    ob.add("feedback", {"n": 1})
    ob._conn.execute(f"PRAGMA max_page_count = {ob._conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(StorageError, match="storage full while recording in the outbox"):
        ob.add("unknown_part", {"note": "z" * 60_000})
    assert ob.count() == 1 and not ob._conn.in_transaction
    ob._conn.execute("PRAGMA max_page_count = 1073741823")
    ob.add("unknown_part", {"note": "z" * 60_000})
    assert ob.count() == 2
    ob.close()


@pytest.mark.slow
def test_a_real_full_disk_over_http_leaves_the_device_as_it_was(tmp_path):
    """A real ENOSPC: the device folder on a small tmpfs (user + mount namespace) synced from a real hub
    process; the disk fills during the download, then during the SQLite apply, then the pre-check refuses.
    Each time the device is exactly as before; with space back the sync completes."""
    from tests.fullfs import SKIP_REASON, can_mount_tmpfs, run_on_tmpfs

    if not can_mount_tmpfs():
        pytest.skip(SKIP_REASON)
    from edge_app.runtime.outbox import Outbox
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    from .conftest import build_world
    from .helpers import HubServer

    world = build_world(tmp_path)
    server = HubServer(world.hub.root)
    try:
        dev = tmp_path / "dev"
        enrol(dev, add_device(world.hub, "full", "site_a", server.url))
        SyncClient(dev, smoke_test=lambda b: None).sync()
        rng = np.random.default_rng(5)
        for i in range(40):  # a delta of ~0.8 MB (long, incompressible descriptions) and 40 new image vectors
            text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789 "), 20_000))
            world.hub.add_part({"part_number": f"N{i}", "name": f"new {i}", "description": text},
                               inventory={"site_a": (i, f"N{i}")}, images=write_images(tmp_path / f"n{i}", [900 + i]))
        ob = Outbox(dev / "outbox.db")
        uid = ob.add("feedback", {"part_number": "P1", "verdict": "correct"})
        ob.close()
        out = run_on_tmpfs("tests.sync._child_full_disk", [str(dev)], tmp_path / "mnt")
    finally:
        server.stop()
    before = out["before"]
    assert out["package_bytes"] > 500_000
    for name, words in (("download", "storage full while syncing"), ("apply", "storage full while syncing"),
                        ("precheck", "not enough storage for applying delta-")):
        got = out[name]
        assert got["error"] and words in got["error"], (name, got["error"])
        assert got["exit_code"] == 8
        assert got["state"] == before, name
        assert got["downloads"] == [], f"{name}: unfinished downloads must be deleted to give the space back"
    assert "No space left on device" in out["download"]["cause"]  # the OS's own ENOSPC
    assert "database or disk is full" in out["apply"]["cause"]  # SQLite's own SQLITE_FULL
    assert "the outbox was uploaded (1 records)" in out["apply"]["error"]
    assert uid in {u["uuid"] for u in world.hub.store.list_uploads()}
    assert out["final"]["to_version"] == world.hub.store.version()
    assert out["final"]["state"]["version"] == world.hub.store.version() != before["version"]


@pytest.mark.slow
def test_the_hub_on_a_real_full_disk_answers_507_and_keeps_nothing_half_written(tmp_path):
    from tests.fullfs import SKIP_REASON, can_mount_tmpfs, run_on_tmpfs

    if not can_mount_tmpfs():
        pytest.skip(SKIP_REASON)
    out = run_on_tmpfs("tests.sync._child_hub_full", [], tmp_path / "mnt")
    assert out["open_full"].startswith("StorageError:") and "the hub's disk is full" in out["open_full"]
    assert out["record"][0] == 200 and out["record"][1]["results"][0]["blob_offset"] == 0
    status, body, partial_bytes = out["chunk_full"]
    assert status == 507 and "hub storage full" in body["detail"]
    assert partial_bytes == 0, "a chunk cut by a full disk must not stay half-written"
    assert out["record_full"][0] == 507 and out["record2_stored"] is False  # SQLite's SQLITE_FULL, rolled back
    assert out["chunk_after"][0] == 200 and out["chunk_after"][1]["blob_complete"] is True
    assert out["record_after"] == 200


def test_the_client_names_a_full_hub(world):
    import io
    import urllib.error

    from sync.transport import HttpTransport

    t = HttpTransport("http://hub.invalid", world.payload["token"])

    def full(req, timeout=None):
        raise urllib.error.HTTPError(req.full_url, 507, "Insufficient Storage", {},
                                     io.BytesIO(b'{"detail": "hub storage full (0 kB free)"}'))

    t._opener.open = full
    with pytest.raises(SyncError, match="the hub's storage is full .*tell the hub admin; nothing was lost"):
        t.post_uploads([{"uuid": "u"}])


def test_a_storage_error_inside_a_sync_is_a_sync_error(tmp_path):
    """A StorageError raised deep inside (a database opened read-only on a full disk) reaches sync callers,
    which handle SyncError, as a SyncStorageError with the same words."""
    with pytest.raises(SyncStorageError, match="read-only") as info:
        with storage.disk_full_is_storage_error(tmp_path, "syncing", SyncStorageError):
            raise StorageError("catalogue.db: storage full, the catalogue was opened read-only")
    assert isinstance(info.value.__cause__, StorageError)
    with pytest.raises(OSError):  # not a full disk: unchanged
        with storage.disk_full_is_storage_error(tmp_path, "syncing", SyncStorageError):
            raise OSError(errno.EACCES, "Permission denied")


def test_the_hub_sets_the_space_a_tablet_keeps_free_at_enrolment(tmp_path, monkeypatch):
    """`hub add-device --keep-free-mb 500`: the tablet's syncs keep 500 MB free and its sync screen says LOW below
    that; without it the default 100 MB; a caller's explicit value wins."""
    import dataclasses

    from edge_app.services import DeviceServices
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    from .conftest import build_world

    world = build_world(tmp_path)
    with pytest.raises(UsageError, match="between 0 and 100000"):
        add_device(world.hub, "tab-x", "site_a", keep_free_mb=-1)
    payload = add_device(world.hub, "tab-big", "site_a", keep_free_mb=500)
    dev = tmp_path / "big"
    enrol(dev, payload)
    assert SyncClient(dev).reserve_bytes == 500 * MB
    assert SyncClient(world.device_dir).reserve_bytes == storage.RESERVE_BYTES  # enrolled without it
    assert SyncClient(dev, reserve_bytes=0).reserve_bytes == 0
    fake_free(monkeypatch, 300 * MB)  # plenty for the default, below this tablet's setting
    svc = DeviceServices(dev)
    try:
        st = svc.sync_status()
        assert st.storage_low and st.keep_free_bytes == 500 * MB
    finally:
        svc.close()
    with pytest.raises(SyncStorageError, match="500.0 MB must stay free"):
        client(dataclasses.replace(world, device_dir=dev), payload["token"]).sync(upload=False)


def test_one_tablet_cannot_fill_the_hub_and_stop_everyone_s_sync(world, monkeypatch, caplog):
    """A valid token filled the hub's disk at ~500 MB/s with photos it never finished; then every tablet's sync
    plan failed (507). Now uploads stop at a reserve, a tablet's unfinished photos are capped (507, which old and
    new tablets take as "keep it, retry later"), stale partial photos are deleted, and a plan is served even when
    its bookkeeping write fails on a full disk."""
    import os
    import sqlite3
    import time
    import uuid as _uuid

    from fastapi.testclient import TestClient

    from sync.hub import uploads
    from sync.hub.server import create_app

    tc = TestClient(create_app(world.hub))
    auth = {"Authorization": f"Bearer {world.payload['token']}"}

    def record(size=None):
        blob = {"size": size, "sha256": "0" * 64} if size else None
        return {"uuid": str(_uuid.uuid4()), "kind": "photo", "payload": {"part_number": "P1"}, "blob": blob}

    # per tablet: photos opened and not finished are capped where the disk is spent, at their chunks
    monkeypatch.setattr(uploads, "DEVICE_PARTIAL_BYTES", 3000)
    r = tc.post("/v1/uploads/batch", headers=auth, json={"records": [record(4 << 20) for _ in range(4)]}).json()
    assert not [x for x in r["results"] if "refused" in x]  # declaring photos costs a row, not disk
    a, b = r["results"][0]["uuid"], r["results"][1]["uuid"]
    assert tc.put(f"/v1/uploads/{a}/blob?offset=0", headers=auth, content=b"x" * 2000).status_code == 200
    over = tc.put(f"/v1/uploads/{b}/blob?offset=0", headers=auth, content=b"x" * 2000)
    assert over.status_code == 507 and "unfinished photos" in over.json()["detail"]
    assert tc.put(f"/v1/uploads/{a}/blob?offset=2000", headers=auth, content=b"x" * 500).status_code == 200
    # the disk: below the reserve, records and chunks wait (507), sync plans keep working
    fake_free(monkeypatch, uploads.UPLOAD_RESERVE_BYTES - 1)
    assert tc.post("/v1/uploads", headers=auth, json=record()).status_code == 507
    first = r["results"][2]["uuid"]
    assert tc.put(f"/v1/uploads/{first}/blob?offset=0", headers=auth, content=b"x" * 100).status_code == 507
    assert tc.get("/v1/sync", headers=auth).status_code == 200
    # a partial photo untouched for a week is deleted (at hub start, and when the reserve is hit)
    fake_free(monkeypatch, 10 * 1024**3)
    part = uploads.partial_path(world.hub, a)
    old = time.time() - uploads.STALE_PARTIAL_S - 60
    os.utime(part, (old, old))
    assert uploads.prune_stale_partials(world.hub) == 1 and not part.exists()
    # the sync plan's bookkeeping write failing on a full disk does not fail the plan
    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(world.hub.store, "device_seen", full)
    assert tc.get("/v1/sync", headers=auth).status_code == 200 and "serving its plan anyway" in caplog.text

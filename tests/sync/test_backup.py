"""`partlens hub backup`: a consistent copy that a hub and its tablets can carry on from."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from edge_app.errors import UsageError

from .helpers import part_image, upload_items, write_images
from .test_inmemory import client


def test_backup_is_a_working_hub_with_the_same_catalogue_and_tokens(world, tmp_path) -> None:
    from edge_app.cli import main
    from sync.client import SyncClient, enrol
    from sync.hub.backup import backup_hub
    from sync.hub.enrol import add_device
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    client(world).sync()
    ids = upload_items(world, [("photo", {"part_number": "P1", "capture_id": "c1"}, part_image(1, noise=9))])
    (world.hub.root / "uploads" / "half.part").write_bytes(b"still arriving")
    out = tmp_path / "backup"
    assert main(["hub", "backup", "--hub", str(world.hub.root), str(out)]) == 0
    info = json.loads((out / "backup.json").read_text())
    assert info["catalogue_version"] == world.hub.store.version() and info["files"] > 5
    assert not (out / "uploads" / "half.part").exists() and not (out / "packages").exists()
    assert (out / "uploads" / f"{ids[0]}.blob").read_bytes() == part_image(1, noise=9)
    assert stat.S_IMODE(os.stat(out / "secret.bin").st_mode) == 0o600
    restored = Hub(out, embedder_factory=world.hub.embedder_factory)
    live = world.hub.status()
    got = restored.status()
    for key in ("catalogue_version", "bundle_id", "parts", "images", "embeddings", "uploads_to_review"):
        assert got[key] == live[key], key
    # the tablet's token works against the restored hub, and a fresh sync from it is complete
    fresh = tmp_path / "fresh-device"
    enrol(fresh, add_device(restored, "tab-new", "site_a"))
    c = SyncClient(fresh, transport=InMemoryTransport(restored, json.loads((fresh / "device.json").read_text())["token"]),
                   smoke_test=lambda b: None)
    r = c.sync()
    assert r.to_version == live["catalogue_version"] and c.status()["parts"] == live["parts"]
    old = SyncClient(world.device_dir, transport=InMemoryTransport(restored, world.payload["token"]),
                     smoke_test=lambda b: None)
    assert old.sync().to_version == live["catalogue_version"]
    # refusals: a non-empty folder, a folder inside the hub
    with pytest.raises(UsageError, match="not an empty folder"):
        backup_hub(world.hub, out)
    with pytest.raises(UsageError, match="inside the hub folder"):
        backup_hub(world.hub, world.hub.root / "bk")


def test_backup_while_the_hub_writes_is_consistent(world, tmp_path) -> None:
    from sync.hub.backup import backup_hub

    imgs = write_images(tmp_path / "imgs", list(range(10, 40)))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i, img in enumerate(imgs):
                if stop.is_set():
                    return
                world.hub.add_part({"part_number": f"W{i}", "name": f"written {i}"}, images=[img])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        info = backup_hub(world.hub, tmp_path / "b")
    finally:
        stop.set()
        t.join()
    assert not errors
    conn = sqlite3.connect(tmp_path / "b" / "hub.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        version = int(conn.execute("SELECT value FROM meta WHERE key='catalogue_version'").fetchone()[0])
        # every image row of the snapshot has its file in the backup
        paths = [r[0] for r in conn.execute("SELECT path FROM images WHERE deleted=0")]
    finally:
        conn.close()
    assert version == info["catalogue_version"] <= world.hub.store.version()
    assert paths and all((tmp_path / "b" / "images" / p).is_file() for p in paths)


def test_restore_a_hub_the_tablets_follow_without_re_enrolling(world, tmp_path) -> None:
    """The hub dies after a backup; it is restored from it. A tablet that synced past the backup and uploaded
    after it gets the restored catalogue as a snapshot (a new lineage) and sends its uploads again; a package
    of the old lineage is refused afterwards; the restored hub's next changes reach it as deltas."""
    from edge_app.cli import main
    from edge_app.errors import AuthError, InputError, SyncError
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.outbox import Outbox
    from sync.apply import apply_package
    from sync.client import SyncClient, enrol
    from sync.hub.backup import restore_hub
    from sync.hub.enrol import add_device
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    from .test_inmemory import search

    client(world).sync()
    backup = tmp_path / "backup"
    assert main(["hub", "backup", "--hub", str(world.hub.root), str(backup)]) == 0
    at_backup = world.hub.store.version()
    # after the backup: two new parts, the tablet syncs them and uploads a confirmation and a photo
    for i in (60, 61):
        world.hub.add_part({"part_number": f"LATE-{i}", "name": "after the backup"}, inventory={"site_a": (1, "L")},
                           images=write_images(tmp_path / f"late{i}", [i]))
    late_ids = upload_items(world, [("feedback", {"part_number": "P1", "verdict": "correct"}, None),
                                    ("photo", {"part_number": "P2"}, part_image(2, noise=7)),
                                    ("feedback", {"part_number": "P0", "verdict": "correct"}, part_image(0, noise=7)),
                                    ("photo", {"part_number": "P0"}, part_image(0, noise=9))])
    ob = Outbox(world.device_dir / "outbox.db")
    blobs = {r[0]: r[1] for r in ob._conn.execute("SELECT uuid, blob_path FROM outbox")}
    ob.close()
    for uid in late_ids[2:]:  # the tablet pruned these photos since (uploaded, and old enough)
        Path(blobs[uid]).unlink()
    later = tmp_path / "tab-later"
    enrol(later, add_device(world.hub, "tab-later", "site_a"))
    device_version = client(world).status()["catalogue_version"]
    assert device_version > at_backup
    old_snapshot = world.hub.store.snapshot("site_a", 0)  # a package of the lost lineage, kept for a replay

    new_root = tmp_path / "restored-hub"
    assert main(["hub", "restore", str(backup), "--hub", str(new_root)]) == 0
    restored = Hub(new_root, embedder_factory=world.hub.embedder_factory)
    assert restored.store.version() == at_backup and restored.store.get_meta("catalogue_epoch") > 0

    from sync.hub.enrol import fleet

    row = next(d for d in fleet(restored) if d["name"] == "tab1")  # last seen on the lost lineage
    assert row["other_lineage"] is True and row["versions_behind"] is None
    tab = SyncClient(world.device_dir, transport=InMemoryTransport(restored, world.payload["token"]),
                     smoke_test=lambda b: None)
    r = tab.sync()
    assert r.package.startswith("snapshot-e") and r.to_version == at_backup < r.from_version
    row = next(d for d in fleet(restored) if d["name"] == "tab1")
    assert row["other_lineage"] is False and row["versions_behind"] == 0
    st = tab.status()
    assert st["catalogue_epoch"] == restored.store.get_meta("catalogue_epoch")
    assert st["parts"] == restored.status()["parts"] == 3
    got = {u["uuid"] for u in restored.store.list_uploads()}
    # the confirmation whose photo is gone goes again without it; a photo record without its photo cannot
    assert r.uploaded == 3 and set(late_ids[:3]) <= got and late_ids[3] not in got
    assert restored.store.upload(late_ids[2])["blob_size"] is None
    photo = restored.store.upload(late_ids[1])
    assert photo["blob_complete"] and (new_root / "uploads" / f"{late_ids[1]}.blob").read_bytes() == \
        part_image(2, noise=7)
    ob = Outbox(world.device_dir / "outbox.db")
    assert ob.count() == 0
    ob.close()
    again = tab.sync()
    assert again.package is None and again.uploaded == 0  # settled: no second snapshot, no second resend
    assert search(world, part_image(1, noise=8.0))[0] == "P1"  # the index was rebuilt for the new lineage
    # the restored hub moves on: a delta of the new lineage; a new part is identifiable
    restored.add_part({"part_number": "NEW-R", "name": "after the restore"}, inventory={"site_a": (2, "R")},
                      images=write_images(tmp_path / "newr", [88]))
    d = tab.sync()
    assert d.package.startswith("delta-e") and search(world, part_image(88, noise=8.0))[0] == "NEW-R"
    # a replayed package of the old lineage is refused, the catalogue untouched
    db = CatalogueDB(world.device_dir / "catalogue.db")
    try:
        with pytest.raises(SyncError, match="older than this device"):
            apply_package(db, old_snapshot, site="site_a", bundle_id=old_snapshot.bundle_id)
        assert db.catalogue_version == restored.store.version()
    finally:
        db.close()
    # a tablet enrolled after the backup is unknown to the restored hub: it must be enrolled again
    with pytest.raises(AuthError):
        token = json.loads((later / "device.json").read_text())["token"]
        SyncClient(later, transport=InMemoryTransport(restored, token), smoke_test=lambda b: None).sync()


def test_restore_refuses_what_would_not_make_a_working_hub(world, tmp_path) -> None:
    from edge_app.errors import InputError
    from sync.hub.backup import backup_hub, restore_hub

    from .helpers import make_key

    backup = tmp_path / "backup"
    backup_hub(world.hub, backup)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("y")
    with pytest.raises(UsageError, match="not an empty folder"):
        restore_hub(backup, busy)
    with pytest.raises(UsageError, match="inside each other"):
        restore_hub(backup, backup / "hub")
    half = tmp_path / "half"
    half.mkdir()
    (half / "hub.db").write_bytes(b"")
    with pytest.raises(InputError, match="not a complete hub backup"):
        restore_hub(half, tmp_path / "h1")
    _, other_key, _ = make_key(tmp_path / "other-keys")
    other_path = next((tmp_path / "other-keys").glob("*.key*"), None) or next(
        p for p in (tmp_path / "other-keys").iterdir() if not p.name.endswith(".pub.json"))
    with pytest.raises(UsageError, match="the hub signs with"):
        restore_hub(backup, tmp_path / "h2", key_path=other_path)
    with pytest.raises(UsageError, match="cannot be read"):
        restore_hub(backup, tmp_path / "h3", key_path=tmp_path / "missing.key")
    assert not any(p.name.startswith(("h1", "h2", "h3", ".h")) for p in tmp_path.iterdir()), "nothing written"
    leftover = tmp_path / ".h4.restoring"  # a restore killed half-way leaves only this, never a half hub at h4
    (leftover / "images").mkdir(parents=True)
    (leftover / "hub.db").write_bytes(b"half a copy")
    copied = restore_hub(backup, tmp_path / "h4", key_path=world.hub_key_path)
    assert copied["catalogue_epoch"] > 0 and (tmp_path / "h4" / "hub.db").is_file() and not leftover.exists()
    assert not (tmp_path / "h4" / "backup.json").exists()
    assert sqlite3.connect(tmp_path / "h4" / "hub.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copied["thumbnails_remade"] == 0


def test_restore_remakes_thumbnails_the_backup_lost_and_tablets_get_them(world, tmp_path) -> None:
    """A thumbnail missing from the backup or changed on its disk is remade from its (checked) catalogue image;
    its new hash goes into the restored catalogue, so a tablet's full snapshot verifies and shows it."""
    from sync.client import SyncClient
    from sync.hub.backup import backup_hub, restore_hub
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    backup = tmp_path / "backup"
    backup_hub(world.hub, backup)  # the tablet has not synced yet: it gets every thumbnail from the restored hub
    thumbs = sorted((backup / "thumbs").glob("*.jpg"))
    assert len(thumbs) >= 2
    thumbs[0].unlink()
    thumbs[1].write_bytes(b"bit rot")
    out = restore_hub(backup, tmp_path / "restored", key_path=world.hub_key_path)
    assert out["thumbnails_remade"] == 2
    restored = Hub(tmp_path / "restored", embedder_factory=world.hub.embedder_factory)
    rows = {r[0]: r[1] for r in sqlite3.connect(tmp_path / "restored" / "hub.db").execute(
        "SELECT image_id, thumb_sha256 FROM images")}
    for t in thumbs[:2]:
        image_id = t.stem
        assert hashlib.sha256((tmp_path / "restored" / "thumbs" / t.name).read_bytes()).hexdigest() == rows[image_id]
    tab = SyncClient(world.device_dir, transport=InMemoryTransport(restored, world.payload["token"]),
                     smoke_test=lambda b: None)
    tab.sync()
    for t in thumbs[:2]:
        assert (world.device_dir / "thumbs" / t.name).read_bytes() == (tmp_path / "restored" / "thumbs" / t.name
                                                                      ).read_bytes(), "the tablet has the remade one"


def test_a_backup_put_back_by_hand_is_refused_with_the_way_out(world, tmp_path) -> None:
    """Without `hub restore` (the folder copied back by hand) a tablet that synced past the backup refuses to go
    back, and says what the admin should run."""
    from edge_app.errors import SyncError
    from sync.client import SyncClient
    from sync.hub.backup import backup_hub
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    client(world).sync()
    backup_hub(world.hub, tmp_path / "b")
    world.hub.add_part({"part_number": "LATE", "name": "late"}, images=write_images(tmp_path / "late", [70]))
    client(world).sync()
    by_hand = Hub(tmp_path / "b", embedder_factory=world.hub.embedder_factory)
    tab = SyncClient(world.device_dir, transport=InMemoryTransport(by_hand, world.payload["token"]),
                     smoke_test=lambda b: None)
    with pytest.raises(SyncError, match="partlens hub restore"):
        tab.sync()
    assert tab.status()["parts"] == 4  # untouched


def test_a_tablet_at_the_backup_s_own_version_checks_in_on_the_restored_lineage(world, tmp_path) -> None:
    """The tablet took the restored hub's snapshot at the same version number, so it did not check in, and
    `hub devices` showed it on the lost lineage until a second sync."""
    from sync.client import SyncClient
    from sync.hub.backup import backup_hub, restore_hub
    from sync.hub.enrol import fleet
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    client(world).sync()
    backup_hub(world.hub, tmp_path / "b")
    restore_hub(tmp_path / "b", tmp_path / "restored", key_path=world.hub_key_path)
    restored = Hub(tmp_path / "restored", embedder_factory=world.hub.embedder_factory)
    tab = SyncClient(world.device_dir, transport=InMemoryTransport(restored, world.payload["token"]),
                     smoke_test=lambda b: None)
    r = tab.sync()
    assert r.to_version == r.from_version and r.checked_in
    row = next(d for d in fleet(restored) if d["name"] == "tab1")
    assert row["other_lineage"] is False and row["versions_behind"] == 0


def test_a_backup_of_an_older_hub_schema_is_migrated_when_restored(world, tmp_path) -> None:
    """Backups exist from before hub schema 3 (thumbnail hashes): restoring one crashed with "no such column:
    thumb_sha256" (an audit of the admin workflows); its database is brought up to date first now."""
    from sync.hub.backup import backup_hub, restore_hub
    from sync.hub.hub import Hub

    backup = tmp_path / "backup"
    backup_hub(world.hub, backup)
    db = sqlite3.connect(backup / "hub.db")
    for table, column in (("images", "thumb_sha256"), ("devices", "last_catalogue_epoch"),
                          ("devices", "keep_free_mb"), ("devices", "sync_window"), ("devices", "last_error"),
                          ("devices", "install_id"), ("devices", "install_conflict_at"),
                          ("devices", "enrol_expires_at"), ("devices", "last_settings_stamp")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()
    out = restore_hub(backup, tmp_path / "restored", key_path=world.hub_key_path)
    restored = Hub(tmp_path / "restored", embedder_factory=world.hub.embedder_factory)
    assert restored.store.get_meta("schema_version") >= 5 and out["thumbnails_remade"] == 0
    rows = sqlite3.connect(tmp_path / "restored" / "hub.db").execute("SELECT thumb_sha256 FROM images").fetchall()
    assert rows and all(r[0] is None for r in rows)  # old images carry no hash, as before the migration


def test_backup_secrets_are_never_readable_by_others(world, tmp_path, monkeypatch) -> None:
    """Found by an audit (21st session): secret.bin and the TLS keys were copied under the umask (0644) and only
    then restricted, so a backup killed in between left them readable by every user."""
    import shutil

    from sync.hub import backup
    from sync.hub.tls import enable_tls, rotate_tls

    enable_tls(world.hub)
    rotate_tls(world.hub)  # a next TLS key waiting too
    seen: list[tuple[str, int]] = []
    real = shutil.copy2

    def copy2(src, dst, **kw):
        out = real(src, dst, **kw)
        seen.append((os.path.basename(dst), stat.S_IMODE(os.stat(dst).st_mode)))
        return out

    monkeypatch.setattr(backup.shutil, "copy2", copy2)
    out = tmp_path / "backup"
    backup.backup_hub(world.hub, out)
    assert seen and not [s for s in seen if s[0] in ("secret.bin", "key.pem")], seen
    for rel in ("secret.bin", "tls/key.pem", "tls/next/key.pem"):
        assert stat.S_IMODE(os.stat(out / rel).st_mode) == 0o600, rel


def test_hub_status_names_what_a_restore_of_the_last_backup_would_undo(world, tmp_path, capsys, caplog) -> None:
    """An audit: a device revoked after the backup was accepted again by the restored hub, and a certificate
    activated after it left the restored hub with one the tablets no longer trust; nothing said either."""
    import logging

    from edge_app.cli import main
    from sync.hub.backup import backup_hub, restore_hub
    from sync.hub.enrol import add_device, revoke_device
    from sync.hub.hub import Hub

    hub = world.hub
    backup_hub(hub, tmp_path / "bk")
    st = hub.status()
    assert st["last_backup_at"] and st["changes_since_backup"] == []
    add_device(hub, "lost-tab", "site_a")
    with caplog.at_level(logging.WARNING, logger="sync.hub.hub"):
        revoke_device(hub, "lost-tab")
    assert "take a new backup" in caplog.text
    assert [c["what"] for c in hub.status()["changes_since_backup"]] == ["device lost-tab revoked"]
    assert main(["hub", "status", "--hub", str(hub.root)]) == 0
    assert "1 change(s) since the last backup" in capsys.readouterr().err
    # the restore says what it undoes; the restored hub is its backup: nothing pending there
    with caplog.at_level(logging.WARNING, logger="sync.hub.backup"):
        restore_hub(tmp_path / "bk", tmp_path / "restored", key_path=world.hub_key_path)
    assert "revoke-device" in caplog.text and "certificate activated after it" in caplog.text
    restored = Hub(tmp_path / "restored", embedder_factory=hub.embedder_factory)
    assert restored.status()["changes_since_backup"] == []
    # a new backup clears the list
    backup_hub(hub, tmp_path / "bk2")
    assert hub.status()["changes_since_backup"] == []


@pytest.mark.parametrize("tablet_clock", ["2000-01-01T00:00:00.000+00:00", "2040-12-07T10:00:00.000+00:00"])
def test_a_restored_hub_gets_the_uploads_of_a_tablet_whose_clock_was_wrong(world, tmp_path, monkeypatch,
                                                                           tablet_clock) -> None:
    """What to send again after a restore was chosen by the tablet's clock against the hub's backup time: a
    tablet that booted in 2000 resent nothing and the restored hub held 0 of its 2 uploads, without an error
    (an audit, 23rd session). The hub's receipt time of each upload decides now."""
    from edge_app.cli import main
    from edge_app.runtime import outbox as outbox_mod
    from sync.client import SyncClient
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    client(world).sync()
    backup = tmp_path / "backup"
    assert main(["hub", "backup", "--hub", str(world.hub.root), str(backup)]) == 0
    monkeypatch.setattr(outbox_mod, "_now", lambda: tablet_clock)
    late = upload_items(world, [("feedback", {"part_number": "P1", "verdict": "correct"}, None),
                                ("photo", {"part_number": "P2"}, part_image(2, noise=7))])
    monkeypatch.undo()
    new_root = tmp_path / "restored-hub"
    assert main(["hub", "restore", str(backup), "--hub", str(new_root)]) == 0
    restored = Hub(new_root, embedder_factory=world.hub.embedder_factory)
    assert not {u["uuid"] for u in restored.store.list_uploads()} & set(late)
    r = SyncClient(world.device_dir, transport=InMemoryTransport(restored, world.payload["token"]),
                   smoke_test=lambda b: None).sync()
    assert r.uploaded == 2 and set(late) <= {u["uuid"] for u in restored.store.list_uploads()}
    assert restored.store.upload(late[1])["blob_complete"]


def test_uploaded_records_are_forgotten_after_90_days_but_the_latest_2000_stay(tmp_path) -> None:
    """Every usage event stayed in the tablet's outbox for its life (about 5 MB a year at 50 identifications a
    day, an audit of a year of nights, 23rd session)."""
    import datetime as dt

    from edge_app.runtime.outbox import Outbox

    ob = Outbox(tmp_path / "outbox.db")
    try:
        ids = [ob.add("usage", {"event": "identify", "i": i}) for i in range(30)]
        old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=100)).isoformat()
        ob.mark_uploaded_many(ids[:20], {u: old for u in ids[:20]})
        ob.mark_uploaded_many(ids[20:25])
        assert ob.forget_uploaded(keep_last=5) == 20  # 100 days old; the 5 latest uploaded stay
        assert ob.forget_uploaded(keep_last=5) == 0
        assert ob.count() == 5 and ob.count(pending_only=False) == 10  # pending ones are never forgotten
        ids2 = [ob.add("usage", {"event": "identify", "j": j}) for j in range(4)]
        ob.mark_uploaded_many(ids2, {u: old for u in ids2})
        assert ob.forget_uploaded(keep_last=5) == 0  # old, but among the latest 5 uploaded
        assert ob.forget_uploaded(keep_last=2) == 2
    finally:
        ob.close()


def test_a_backup_restored_twice_under_a_clock_set_back_starts_a_newer_lineage(world, tmp_path, monkeypatch):
    """The lineage came from the hub clock's seconds: restored once with the clock a day ahead, then again with it
    right, the second lineage was OLDER than the first and every tablet that had followed the first refused the
    hub for good (an audit, 23rd session). Restores are noted in the backup folder; `hub new-lineage` mends a
    hub whose tablets name a lineage it does not know."""
    import time as _time

    from edge_app.cli import main
    from edge_app.errors import SyncError
    from sync.client import SyncClient
    from sync.hub import backup as backup_mod
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    def tablet(hub):
        return SyncClient(world.device_dir, transport=InMemoryTransport(hub, world.payload["token"]),
                          smoke_test=lambda b: None)

    client(world).sync()
    backup = tmp_path / "backup"
    assert main(["hub", "backup", "--hub", str(world.hub.root), str(backup)]) == 0
    real = _time.time
    monkeypatch.setattr(backup_mod.time, "time", lambda: real() + 86400)  # a day ahead
    assert main(["hub", "restore", str(backup), "--hub", str(tmp_path / "first")]) == 0
    monkeypatch.setattr(backup_mod.time, "time", real)
    first = Hub(tmp_path / "first", embedder_factory=world.hub.embedder_factory)
    tablet(first).sync()
    e1 = first.store.epoch()
    assert main(["hub", "restore", str(backup), "--hub", str(tmp_path / "second")]) == 0
    second = Hub(tmp_path / "second", embedder_factory=world.hub.embedder_factory)
    assert second.store.epoch() > e1
    assert tablet(second).sync().package.startswith("snapshot-e")
    # a backup folder it could not note the restore in (read-only) and no --above-lineage: the tablet says what
    # to do, and `hub new-lineage` does it
    (backup / backup_mod.RESTORES_FILE).unlink()
    monkeypatch.setattr(backup_mod.time, "time", lambda: real() - 86400)
    assert main(["hub", "restore", str(backup), "--hub", str(tmp_path / "third")]) == 0
    monkeypatch.setattr(backup_mod.time, "time", real)
    third = Hub(tmp_path / "third", embedder_factory=world.hub.embedder_factory)
    mine = second.store.epoch()
    with pytest.raises(SyncError, match=rf"partlens hub new-lineage --above {mine}"):
        tablet(third).sync()
    assert main(["hub", "new-lineage", "--hub", str(third.root), "--above", str(mine)]) == 0
    assert third.store.epoch() > mine
    assert tablet(third).sync().package.startswith("snapshot-e")
    assert main(["hub", "new-lineage", "--hub", str(third.root), "--above", "1"]) == 2  # already above

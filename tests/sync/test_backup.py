"""`partlens hub backup`: a consistent copy that a hub and its tablets can carry on from."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading

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

"""A tablet moved to another hub, to another site, or seeded with a starter catalogue from elsewhere: its
catalogue is replaced by a snapshot of its hub's, never continued with deltas of another numbering."""
from __future__ import annotations

import dataclasses
import json

from .conftest import build_world
from .helpers import make_bundle, part_image, write_images
from .test_inmemory import search


def sync_with(world, device_dir, token):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    return SyncClient(device_dir, transport=InMemoryTransport(world.hub, token), smoke_test=lambda b: None)


def catalogue(device_dir):
    from edge_app.runtime.catalogue import CatalogueDB

    db = CatalogueDB(device_dir / "catalogue.db")
    try:
        parts = {p["part_number"]: p for p in db.search_parts()}
        stock = {r[0]: (r[1], r[2]) for r in db.db.conn.execute("SELECT part_number, site, stock FROM inventory")}
        return parts, stock, db.get_meta("hub_id"), db.catalogue_version
    finally:
        db.close()


def test_a_tablet_enrolled_with_another_hub_takes_that_hubs_catalogue_and_model(tmp_path):
    from sync.client import enrol
    from sync.hub.enrol import add_device

    a = build_world(tmp_path / "a")
    a.hub.set_bundle(make_bundle(tmp_path / "a" / "export3", a.export_key, 3))  # hub A's model is at version 3
    for i in range(4):  # hub A is further along: its version numbers are higher than B's
        a.hub.add_part({"part_number": f"A-ONLY-{i}", "name": "hub A part"}, inventory={"site_a": (9, "A")},
                       images=write_images(tmp_path / f"ai{i}", [200 + i]))
    sync_with(a, a.device_dir, a.payload["token"]).sync()
    parts_a, _, hub_a, version_a = catalogue(a.device_dir)
    assert "A-ONLY-0" in parts_a and hub_a == a.hub.store.get_meta("hub_id")

    b = build_world(tmp_path / "b")  # another terminal: its own keys and catalogue
    b.hub.set_bundle(make_bundle(tmp_path / "b" / "export2", b.export_key, 2, n_parts=4))  # ITS model: version 2 < 3
    assert b.hub.bundle_id != a.hub.bundle_id
    b.hub.add_part({"part_number": "B-ONLY", "name": "hub B part"}, inventory={"site_a": (3, "B1")},
                   images=write_images(tmp_path / "bi", [300]))
    assert b.hub.store.version() < version_a
    payload = add_device(b.hub, "moved-tab", "site_a")
    enrol(a.device_dir, payload)  # the same tablet, enrolled at hub B
    r = sync_with(b, a.device_dir, payload["token"]).sync()
    parts, _, hub, version = catalogue(a.device_dir)
    assert r.package.startswith("snapshot-") and r.bundle_installed == b.hub.bundle_id
    assert set(parts) == {"P0", "P1", "P2", "B-ONLY"} and not any(p.startswith("A-ONLY") for p in parts)
    assert hub == b.hub.store.get_meta("hub_id") and version == b.hub.store.version()
    assert search(dataclasses.replace(b, device_dir=a.device_dir), part_image(300, noise=8.0))[0] == "B-ONLY"
    assert sync_with(b, a.device_dir, payload["token"]).sync().package is None  # settled


def test_a_tablet_moved_to_another_site_gets_that_sites_whole_stock(world):
    from sync.client import enrol
    from sync.hub.enrol import add_device

    sync_with(world, world.device_dir, world.payload["token"]).sync()
    world.hub.set_stock("P1", "site_a", 99, "A9")  # a change the tablet has not seen yet
    payload = add_device(world.hub, "tab-b", "site_b")
    enrol(world.device_dir, payload)
    r = sync_with(world, world.device_dir, payload["token"]).sync()
    _, stock, _, _ = catalogue(world.device_dir)
    assert r.package.startswith("snapshot-")
    assert stock == {"P0": ("site_b", 10), "P1": ("site_b", 11), "P2": ("site_b", 12)}  # all of site_b, none of a


def test_re_enrolling_with_the_same_hub_and_site_keeps_the_catalogue(world):
    from sync.client import enrol
    from sync.hub.enrol import add_device

    sync_with(world, world.device_dir, world.payload["token"]).sync()
    payload = add_device(world.hub, "tab-again", "site_a")  # e.g. after its token was revoked
    enrol(world.device_dir, payload)
    world.hub.add_part({"part_number": "NEXT", "name": "next"}, images=write_images(world.root / "nx", [71]))
    r = sync_with(world, world.device_dir, payload["token"]).sync()
    assert r.package.startswith("delta-") and r.bundle_installed is None


def test_a_starter_catalogue_from_elsewhere_is_replaced_at_the_first_sync(tmp_path):
    """The APK's starter catalogue (copied from some tablet) is replaced by the terminal hub's own snapshot."""
    import shutil

    from sync.client import enrol
    from sync.hub.enrol import add_device

    demo = build_world(tmp_path / "demo")
    for i in range(3):
        demo.hub.add_part({"part_number": f"DEMO-{i}", "name": "demo"},
                          images=write_images(tmp_path / f"d{i}", [400 + i]))
    sync_with(demo, demo.device_dir, demo.payload["token"]).sync()
    tablet = tmp_path / "apk"
    tablet.mkdir()
    for name in ("catalogue.db", "keyring.json", "active.json", "bundles"):  # what a starter bundle holds
        src = demo.device_dir / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tablet / name)
    terminal = build_world(tmp_path / "terminal")
    payload = add_device(terminal.hub, "apk-tab", "site_a")
    enrol(tablet, payload)
    r = sync_with(terminal, tablet, payload["token"]).sync()
    parts, _, hub, _ = catalogue(tablet)
    assert r.package.startswith("snapshot-") and not any(p.startswith("DEMO") for p in parts)
    assert hub == terminal.hub.store.get_meta("hub_id")
    assert json.loads((tablet / "active.json").read_text())["bundle_id"] == terminal.hub.bundle_id

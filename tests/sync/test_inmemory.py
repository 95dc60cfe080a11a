"""End-to-end sync through the in-memory transport (same hub code, no HTTP)."""
from __future__ import annotations

import pytest

from edge_app.errors import AuthError, InputError, IntegrityError, SyncError

from .helpers import PixelEmbedder, make_bundle, part_image, write_images


def client(world, token=None):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    return SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, token or world.payload["token"]),
                      smoke_test=lambda b: None)


def search(world, img_bytes: bytes, k: int = 3) -> list[str]:
    import io

    from PIL import Image

    from edge_app.runtime.catalogue import CatalogueDB
    from sync.apply import DevicePaths, update_index

    db = CatalogueDB(world.device_dir / "catalogue.db")
    try:
        bid = db.get_meta("bundle_id")
        index = update_index(DevicePaths(world.device_dir), db, bid)
        q = PixelEmbedder(bid, salt=int(bid[1:].split("-")[0]) - 1)([Image.open(io.BytesIO(img_bytes))])
        labels, _ = index.search(q, k)
        names = db.embedding_labels(bid)
        return [names[int(l)][1] for l in labels[0]]
    finally:
        db.close()


def test_full_then_incremental_sync_and_new_part_ranks_first(world):
    c = client(world)
    r = c.sync()
    assert r.package.startswith("snapshot-") and r.bundle_installed == world.hub.bundle_id
    st = c.status()
    assert st["catalogue_version"] == world.hub.store.version()
    assert st["parts"] == 3 and st["embeddings"] == 3 and st["active"]["bundle_id"] == world.hub.bundle_id
    assert st["index_stamp"] == f"{world.hub.bundle_id}@{st['catalogue_version']}"
    from edge_app.runtime.catalogue import CatalogueDB

    db = CatalogueDB(world.device_dir / "catalogue.db")
    p1 = db.part("P1")
    db.close()
    assert [i["site"] for i in p1["inventory"]] == ["site_a"], "a device must only get its own site's stock"
    # a part created at the hub after the bundle was made
    img = write_images(world.root / "new", [77])[0]
    world.hub.add_part({"part_number": "NEW-1", "name": "new part"}, inventory={"site_a": (5, "Z9")}, images=[img])
    r2 = c.sync()
    assert r2.package.startswith("delta-") and r2.bundle_installed is None
    assert r2.applied["parts"] == 1 and r2.applied["embeddings"] == 1
    assert search(world, part_image(77, noise=8.0))[0] == "NEW-1"
    # nothing to do the third time
    r3 = c.sync()
    assert r3.package is None and r3.to_version == r2.to_version


def test_deletions_and_stock_changes_flow(world):
    c = client(world)
    c.sync()
    world.hub.delete_parts(["P0"])
    world.hub.set_stock("P2", "site_a", 0, "A2")
    world.hub.set_stock("P2", "site_b", 99, "B2")
    r = c.sync()
    assert r.applied["deleted_parts"] == 1
    st = c.status()
    assert st["parts"] == 2 and st["embeddings"] == 2
    from edge_app.runtime.catalogue import CatalogueDB

    db = CatalogueDB(world.device_dir / "catalogue.db")
    assert db.part("P0") is None
    assert db.part("P2")["inventory"] == [{"site": "site_a", "stock": 0, "bin": "A2",
                                          "as_of": db.part("P2")["inventory"][0]["as_of"]}]
    db.close()
    assert search(world, part_image(1, noise=8.0))[0] == "P1"


def test_new_bundle_reembeds_and_switches(world):
    c = client(world)
    c.sync()
    old = world.hub.bundle_id
    b2 = make_bundle(world.root / "export", world.export_key, 2)
    world.hub.set_bundle(b2)
    r = c.sync()
    assert r.bundle_installed == world.hub.bundle_id != old
    st = c.status()
    assert st["active"]["bundle_id"] == world.hub.bundle_id and st["embeddings"] == 3
    assert search(world, part_image(2, noise=8.0))[0] == "P2"
    assert (world.device_dir / "bundles" / old).is_dir(), "the previous bundle is kept for one more sync"


def test_smoke_test_failure_keeps_old_bundle(world):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    client(world).sync()
    old = world.hub.bundle_id
    world.hub.set_bundle(make_bundle(world.root / "export", world.export_key, 2))

    def bad(bundle):
        raise RuntimeError("model does not load")

    from edge_app.runtime.outbox import Outbox

    ob = Outbox(world.device_dir / "outbox.db")  # an engineer's confirmation waiting to go up
    uid = ob.add("feedback", {"part_number": "P1", "correct": True})
    ob.close()
    c = SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]), smoke_test=bad)
    with pytest.raises(SyncError, match=r"smoke test.*the outbox was still uploaded \(1 record"):
        c.sync()
    st = c.status()
    assert st["active"]["bundle_id"] == old and st["bundle_id"] == old
    assert world.hub.store.upload(uid) is not None  # the bad bundle did not hold the engineer's record back


def test_wrong_token_refused(world):
    with pytest.raises(AuthError):
        client(world, token=world.payload["token"][:-2] + "xx").sync()
    with pytest.raises(AuthError):
        client(world, token="pl1.nobody.abc").sync()


def test_tampered_and_foreign_packages_refused(world, tmp_path):
    from edge_app.signing import Keyring, SigningKey
    from sync.package import read_package, write_package

    c = client(world)
    plan = c.transport.plan(0, None)
    path = world.hub.root / "packages" / "site_a" / plan["package"]["name"]
    sig = plan["package"]["signature"]
    keyring = Keyring.load(world.device_dir / "keyring.json")
    pkg = read_package(path, sig, keyring)
    assert pkg.full and len(pkg.parts) == 3
    bad = tmp_path / "bad.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        read_package(bad, sig, keyring)
    forged = dict(sig, descriptor=dict(sig["descriptor"], to_version=999))
    with pytest.raises(IntegrityError, match="bad signature"):
        read_package(path, forged, keyring)
    rogue = SigningKey.generate()
    p2, sig2 = write_package(pkg, tmp_path / "rogue", rogue)
    with pytest.raises(IntegrityError, match="unknown key"):
        read_package(p2, sig2, keyring)


def test_rollback_refused(world):
    """A hub that offers an older bundle than the device runs (restored/compromised) is refused."""
    c = client(world)
    c.sync()
    v1 = world.hub.bundle_id
    world.hub.set_bundle(make_bundle(world.root / "export", world.export_key, 2))
    c.sync()
    v2 = world.hub.bundle_id
    with world.hub.store.change() as ch:  # roll the hub back behind the devices' backs
        ch.set_meta("bundle_id", v1)
    with pytest.raises(IntegrityError, match="rollback refused"):
        c.sync()
    st = c.status()
    assert st["active"]["bundle_id"] == v2 and st["bundle_id"] == v2


def test_prune_removes_only_stale_packages_after_the_grace(world):
    import time

    from sync.hub.deltas import PackageService

    first = client(world).sync()
    img = write_images(world.root / "new", [78])[0]
    world.hub.add_part({"part_number": "NEW-2", "name": "new part"}, inventory={"site_a": (1, "Z1")}, images=[img])
    second = client(world).sync()
    site_dir = world.hub.root / "packages" / "site_a"
    names = sorted(p.name for p in site_dir.glob("*.tar"))
    assert names == sorted([first.package, second.package]) and second.package.startswith("delta-")
    service = PackageService(world.hub)
    assert service.prune()["removed"] == 0  # within the 24 h grace: an in-flight download may still need it
    res = service.prune(grace_hours=1, now=time.time() + 7200)
    assert res["removed"] == 1 and res["kept"] == 1 and res["bytes_freed"] > 0
    assert sorted(p.name for p in site_dir.iterdir()) == [second.package, second.package + ".sig.json"]
    # the synced device has nothing to do; the pruned package is gone for good
    assert client(world).sync().package is None
    with pytest.raises(InputError):
        service.package_file("site_a", first.package)
    with pytest.raises(InputError):
        service.prune(grace_hours=-1)


def test_every_sync_records_its_time_for_the_app(world):
    """The sync screen said "Last sync: never" on a tablet synced by the nightly service's client, the CLI or the
    demo: only the app's own "Sync now" wrote the time. The client records it now, whoever runs it."""
    from edge_app.services import DeviceServices

    svc = DeviceServices(world.device_dir)
    try:
        assert svc.sync_status().last_sync is None
        r = client(world).sync()
        st = svc.sync_status()
        assert st.last_sync is not None and st.catalogue_version == r.to_version
        assert (world.device_dir / "last_sync.json").is_file()
    finally:
        svc.close()


def test_downloads_the_hub_moved_past_are_swept_after_a_sync(world):
    """A sync audit: a package fetched but not applied, a cut download or a crash after the commit left its file in
    downloads/ for good (a snapshot's worth each, out of the space kept for photos)."""
    c = client(world)
    c.sync()
    downloads = world.device_dir / "downloads"
    downloads.mkdir(exist_ok=True)
    for name in ("delta-000001-000002.tar", "snapshot-000001.tar.partial", "v9-0123456789ab.tar"):
        (downloads / name).write_bytes(b"x" * 1000)
    c.sync()  # nothing new at the hub: up to date, the leftovers go
    assert list(downloads.iterdir()) == []
    (downloads / "delta-000001-000002.tar").write_bytes(b"x")
    world.hub.set_stock("P1", "site_a", 7)
    c.sync()  # a package applied: the same
    assert list(downloads.iterdir()) == []
    # a bundle unpack killed before its rename (a whole bundle's copy) goes at the next sync, however young: only
    # a sync unpacks into bundles/, under the device lock (an audit: it stayed until the next NEW bundle)
    active = sorted(p.name for p in (world.device_dir / "bundles").iterdir())
    left = world.device_dir / "bundles" / ".unpack-k1ll3d"
    left.mkdir()
    (left / "model.tflite").write_bytes(b"m" * 5000)
    c.sync()
    assert not left.exists() and sorted(p.name for p in (world.device_dir / "bundles").iterdir()) == active


@pytest.mark.parametrize("case", ["delta", "new"])
def test_a_bundle_change_committed_while_planning_gives_a_plan_for_the_new_model(world, tmp_path, case):
    """An audit (hub admin while tablets sync): `set-bundle` committed between the hub reading the active bundle
    and building the package; the plan named the old model, the package carried the new model's vectors, and the
    tablet refused the sync as an integrity error. The hub plans again now."""
    from .helpers import make_bundle

    c = client(world)
    if case == "delta":
        c.sync()
        world.hub.add_part({"part_number": "P9", "name": "new"}, inventory={"site_a": (5, "Z")},
                           images=write_images(tmp_path / "src9", [9]))
    v2 = make_bundle(tmp_path / "export2", world.export_key, 2)
    store = world.hub.store
    real = store.snapshot
    fired: list[int] = []

    def snapshot(site, from_version):
        if not fired:  # the admin's set-bundle commits just now (another process, in life)
            fired.append(world.hub.set_bundle(v2)["catalogue_version"])
        return real(site, from_version)

    store.snapshot = snapshot
    try:
        r = c.sync()
    finally:
        store.snapshot = real
    assert fired and r.bundle_after == world.hub.bundle_id != r.bundle_before
    assert r.to_version == world.hub.store.version()

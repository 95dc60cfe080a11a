"""Each trusted key signs only what it is for: bundle keys (the export workstation) sign model bundles, the
hub's key signs the hub's documents (packages, settings, TLS offers). Before roles, an export key could move a
tablet to another server with a signed TLS offer, and the network-facing hub's key could ship a model."""
from __future__ import annotations

import json

import pytest

from edge_app.bundle import load_bundle
from edge_app.errors import IntegrityError, UsageError
from edge_app.signing import Keyring, SigningKey, sign_document

from .helpers import make_bundle, make_key
from .test_inmemory import client


def test_keyring_roles_round_trip_and_refuse_the_wrong_role(tmp_path) -> None:
    hub, export = SigningKey.generate(), SigningKey.generate()
    ring = Keyring({hub.key_id: hub.public_raw, export.key_id: export.public_raw},
                   roles={hub.key_id: ["hub"], export.key_id: ["bundle"]})
    ring.save(tmp_path / "k.json")
    again = Keyring.load(tmp_path / "k.json")
    assert again.roles(hub.key_id) == {"hub"} and again.key_ids_for("bundle") == [export.key_id]
    data = b"some document"
    ring.verify(data, hub.sign(data), hub.key_id, "doc", role="hub")
    ring.verify(data, export.sign(data), export.key_id, "doc", role="bundle")
    with pytest.raises(IntegrityError, match="trusted for hub documents .* only, not for model bundles"):
        again.verify(data, hub.sign(data), hub.key_id, "doc", role="bundle")
    with pytest.raises(IntegrityError, match="not for hub documents"):
        again.verify(data, export.sign(data), export.key_id, "doc", role="hub")
    ring.add(hub.public_raw, roles=["bundle"])  # trusting again only widens
    assert ring.roles(hub.key_id) == {"hub", "bundle"}
    ring.add(export.public_raw)  # again without roles: keeps its roles, never "anything"
    assert ring.roles(export.key_id) == {"bundle"}
    legacy = Keyring({export.key_id: export.public_raw})  # a keyring from before roles: anything, as before
    legacy.verify(data, export.sign(data), export.key_id, "doc", role="hub")
    assert "roles" not in legacy.to_dict()


@pytest.mark.parametrize("content, match", [
    (b'{"keys": {"abc": "not base64!"}}', "not base64"),
    (b'\xff\xfe{"keys": {}}', "not valid JSON"),
    (b'{"keys": {}, "roles": {"abc": ["root"]}}', "roles must be some of"),
    (b'{"keys": {}, "roles": ["hub"]}', "'roles' must map"),
])
def test_damaged_keyring_files_are_one_line_integrity_errors(tmp_path, content: bytes, match: str) -> None:
    (tmp_path / "k.json").write_bytes(content)
    with pytest.raises(IntegrityError, match=match):
        Keyring.load(tmp_path / "k.json")


def test_an_export_key_cannot_sign_hub_documents_on_the_tablet(world) -> None:
    from sync.transport import settings_bytes, upgrade_offer_bytes

    ring = json.loads((world.device_dir / "keyring.json").read_text())
    assert ring["roles"] == {world.hub.key.key_id: ["hub"], world.export_key.key_id: ["bundle"]}
    c = client(world)
    c.sync()
    hub_url = json.loads((world.device_dir / "device.json").read_text())["hub"]
    doc = {"url": "https://attacker.example:8443", "tls_sha256": "ab" * 32, "key_id": world.hub.key.key_id,
           "catalogue_version": 10 ** 6}
    c._take_tls_upgrade({"doc": doc, "signature": sign_document(upgrade_offer_bytes(doc), world.export_key)}, 1)
    # an offer naming another key than the one that signed it is refused too
    named = dict(doc, key_id=world.export_key.key_id)
    c._take_tls_upgrade({"doc": named, "signature": sign_document(upgrade_offer_bytes(named), world.hub.key)}, 1)
    assert json.loads((world.device_dir / "device.json").read_text())["hub"] == hub_url
    device = json.loads((world.device_dir / "device.json").read_text())
    sdoc = {"device": device["device"], "hub_id": device.get("hub_id"), "epoch": 0, "serial": 99,
            "policy": {"spot_check_rate": 0.0}, "device_settings": {"keep_free_mb": 0, "sync_window": "00:00-00:01"}}
    plan = {"settings": {"doc": sdoc, "signature": sign_document(settings_bytes(sdoc), world.export_key)}}
    assert c._settings_of(plan) == (None, None, None, None)  # refused with a warning; the tablet keeps its settings
    # the genuine hub's offer still works
    genuine = dict(doc, url="https://127.0.0.1:8443")
    c._take_tls_upgrade({"doc": genuine, "signature": sign_document(upgrade_offer_bytes(genuine), world.hub.key)}, 1)
    assert json.loads((world.device_dir / "device.json").read_text())["hub"] == "https://127.0.0.1:8443"


def test_the_hub_key_cannot_sign_model_bundles_unless_trusted_for_them(world, tmp_path) -> None:
    hub_signed = make_bundle(tmp_path / "hub-signed", world.hub.key, 7)
    with pytest.raises(IntegrityError, match="not for model bundles"):
        load_bundle(hub_signed, Keyring.load(world.device_dir / "keyring.json"))
    with pytest.raises(IntegrityError, match="sign bundles with the export key and `partlens hub trust`"):
        world.hub.set_bundle(hub_signed)
    # a small site (or the demo) lets its one key do both, explicitly: `hub trust` of the hub's own public key
    pub = next(world.hub_key_path.parent.glob("*.pub.json"))
    world.hub.trust(pub)
    assert world.hub.keyring.roles(world.hub.key.key_id) == {"hub", "bundle"}
    assert world.hub.status()["key_roles"] == {world.hub.key.key_id: ["bundle", "hub"],
                                               world.export_key.key_id: ["bundle"]}
    world.hub.set_bundle(hub_signed)


def test_a_hub_keyring_from_before_roles_is_scoped_when_opened(tmp_path) -> None:
    from sync.hub.hub import Hub

    from .conftest import build_world

    w = build_world(tmp_path / "w")
    ring = Keyring.load(w.hub.root / "keyring.json")
    legacy = Keyring({k: ring.public_key(k) for k in ring.key_ids})  # as written before roles existed
    legacy.save(w.hub.root / "keyring.json")
    reopened = Hub(w.hub.root, embedder_factory=w.hub.embedder_factory)
    assert reopened.keyring.roles(w.hub.key.key_id) == {"hub"}  # the active bundle is the export key's
    assert reopened.keyring.roles(w.export_key.key_id) == {"bundle"}
    assert json.loads((w.hub.root / "keyring.json").read_text())["roles"]  # saved
    # a hub whose own key signed one of its bundles keeps that right
    other = tmp_path / "one-key"
    key_path, key, pub = make_key(other / "keys")
    hub = Hub.init(other / "hub", key_path, trust=[pub], embedder_factory=w.hub.embedder_factory)
    hub.set_bundle(make_bundle(other / "export", key, 1))
    Keyring({key.key_id: key.public_raw}).save(other / "hub" / "keyring.json")
    assert Hub(other / "hub").keyring.roles(key.key_id) == {"hub", "bundle"}


def test_certificate_pins_are_followed_only_from_the_hubs_signature(world) -> None:
    """Found by an audit (21st session): the plan's bare pin list was adopted, so whoever answered a plan (the
    plain-HTTP fallback of a tablet moving to HTTPS, or anyone holding a leaked TLS key) could add a pin of theirs
    and, a sync later, drop the hub's. The pins now travel in the hub-signed settings."""
    from sync.transport import settings_bytes

    c = client(world)
    c.sync()
    old, nxt, evil = "aa" * 32, "bb" * 32, "ee" * 32
    c.device.update(hub="https://127.0.0.1:1", tls_sha256=old, settings_stamp=[0, 1])
    c._signed_without_pins = False  # (this world's hub has no certificate: as if its signed settings listed pins)
    pins = lambda: c.device["tls_sha256"]  # noqa: E731

    def signed(serial: int, tls_pins: list[str], key=world.hub.key) -> dict:
        doc = {"device": c.device["device"], "hub_id": c.device.get("hub_id"), "epoch": 0, "serial": serial,
               "policy": {"spot_check_rate": 0.0}, "device_settings": {}, "tls_pins": tls_pins}
        return {"settings": {"doc": doc, "signature": sign_document(settings_bytes(doc), key)}}

    c._follow_pins(None, [old, evil])  # unsigned: ignored once the hub signs its settings
    assert pins() == old
    *_, got = c._settings_of(signed(2, [old, evil], key=world.export_key))  # signed by a key not for hub documents
    c._follow_pins(got, [old, evil])
    assert got is None and pins() == old
    *_, stamp, got = c._settings_of(signed(3, [old, nxt]))  # the hub's own rotation
    c._follow_pins(got, None)
    assert pins() == [old, nxt]
    c.device["settings_stamp"] = stamp
    *_, got = c._settings_of(signed(2, [old, evil]))  # an older signed document replayed
    assert got is None
    c._follow_pins(got, None)
    assert pins() == [old, nxt]
    # a hub that signs its settings but not yet its pins (code from before): its plan list is followed over
    # pinned HTTPS (a review: a tablet updated before its hub missed the rotation and was cut off at activation)
    doc = signed(4, [])["settings"]
    del doc["doc"]["tls_pins"]
    doc["signature"] = sign_document(settings_bytes(doc["doc"]), world.hub.key)
    *_, stamp, got = c._settings_of({"settings": doc})
    assert got is None and stamp == [0, 4]
    c._follow_pins(got, [old, nxt, "cc" * 32])
    assert pins() == [old, nxt, "cc" * 32]
    c._plan_via_fallback = True  # not over the plain fallback
    c._follow_pins(got, [nxt])
    assert pins() == [old, nxt, "cc" * 32]
    c._plan_via_fallback = False
    c._signed_without_pins = False
    c.device["tls_sha256"] = [old, nxt]
    # a hub from before signed pins (this tablet never took signed settings): followed over pinned HTTPS only
    del c.device["settings_stamp"]
    c._plan_via_fallback = True
    c._follow_pins(None, [old, evil])
    assert pins() == [old, nxt]
    c._plan_via_fallback = False
    c._follow_pins(None, [nxt])
    assert pins() == nxt


def test_a_package_another_hub_made_is_refused_even_under_a_shared_key(world) -> None:
    """Found by an audit (21st session): two hubs signing with one key (an admin reusing a key file; every demo
    hub shares one), and a tablet of hub A applied hub B's package (a wrong part), then was stuck ahead of A."""
    c = client(world)
    c.sync()
    hub = world.hub
    mine = hub.store.get_meta("hub_id")
    before = c.sync().to_version
    hub.store.set_setting("hub_id", "hub-b-shares-the-key")  # hub B: the same key, site and bundle
    hub.add_part({"part_number": "EVIL", "name": "wrong part from hub B"}, inventory={"site_a": (1, "B1")})
    with pytest.raises(IntegrityError, match="made by hub hub-b-shares-the-key, this tablet is enrolled with hub"):
        client(world).sync()
    import sqlite3

    con = sqlite3.connect(world.device_dir / "catalogue.db")
    assert con.execute("SELECT count(*) FROM parts WHERE part_number='EVIL'").fetchone()[0] == 0
    con.close()
    hub.store.set_setting("hub_id", mine)  # its own hub's next package is taken
    hub.add_part({"part_number": "GOOD", "name": "from hub A"}, inventory={"site_a": (1, "B2")})
    assert client(world).sync().to_version > before


def test_an_untrusted_key_is_dropped_by_the_tablets_and_its_bundles_refused(world, tmp_path) -> None:
    """Found by an audit (21st session): a leaked export key could not be revoked (tablets learn keys only at
    enrolment) and even survived re-enrolment (the key of an installed bundle was carried over). The site keeps a
    second export key (trusted before its tablets were enrolled) to sign the replacement bundle."""
    from sync.client import enrol
    from sync.hub.enrol import add_device
    from sync.transport import InMemoryTransport

    hub, leaked = world.hub, world.export_key.key_id
    _, backup_key, backup_pub = make_key(tmp_path / "keys-backup")
    hub.trust(backup_pub)
    payload = add_device(hub, "tab-b", "site_a")
    enrol(world.device_dir, payload)  # a tablet enrolled with both export keys

    def sync():
        from sync.client import SyncClient

        return SyncClient(world.device_dir, transport=InMemoryTransport(hub, payload["token"]),
                          smoke_test=lambda b: None).sync()

    sync()
    with pytest.raises(UsageError, match="the hub's own key"):
        hub.untrust(hub.key.key_id)
    with pytest.raises(UsageError, match="active bundle .* is signed by"):  # tablets would lose their model
        hub.untrust(leaked)
    hub.set_bundle(make_bundle(tmp_path / "v2", backup_key, 2))
    out = hub.untrust(leaked)
    assert out["revoked_keys"] == [leaked] and leaked not in hub.keyring
    sync()  # installs v2 (the backup key), then drops the leaked key
    ring = Keyring.load(world.device_dir / "keyring.json")
    assert leaked not in ring and backup_key.key_id in ring
    device = json.loads((world.device_dir / "device.json").read_text())
    assert device["revoked_keys"] == [leaked] and "keyring_sha256_next" not in device
    sync()  # the device.json / keyring pair still opens
    assert hub.untrust(leaked)["revoked_keys"] == [leaked]  # again: done already (a re-run after a stop finishes)
    again = Keyring()  # the export key's public file, handed over again (a review: trusted again, its bundles then
    again.add(world.export_key.public_raw, roles=["bundle"])  # failed on every tablet at every sync)
    again.save(tmp_path / "export-again.pub.json")
    with pytest.raises(UsageError, match="stay revoked on the tablets"):
        hub.trust(tmp_path / "export-again.pub.json")
    evil = make_bundle(tmp_path / "evil", world.export_key, 99)
    with pytest.raises(IntegrityError):
        load_bundle(evil, ring)
    assert leaked not in add_device(hub, "tab-again", "site_a")["keys"]  # new enrolments do not get it


def test_a_revoked_key_that_signed_the_active_bundle_stays_for_it_but_installs_nothing(world, tmp_path) -> None:
    """If the tablet still runs a bundle of the revoked key (the hub's replacement did not arrive yet), the key
    stays for that bundle (the engineer keeps identifying offline) but no new bundle it signs is installed."""
    c = client(world)
    c.sync()
    leaked = world.export_key.key_id
    c.device["revoked_keys"] = [leaked]
    c._drop_revoked_keys()
    assert leaked in Keyring.load(world.device_dir / "keyring.json")  # it signed the active bundle
    assert leaked not in c._install_keyring()
    # and a new enrolment does not carry it over with the installed bundle (it did for any installed bundle's key)
    from sync.client import _write_device, enrol
    from sync.hub.enrol import add_device

    _write_device(c.paths, c.device)
    world.hub.keyring.remove(leaked)  # (as `hub untrust` leaves it; the payload then lacks it)
    enrol(world.device_dir, add_device(world.hub, "tab-c", "site_a"))
    assert leaked not in Keyring.load(world.device_dir / "keyring.json")


def test_an_enrolment_code_serves_one_app_install(world, tmp_path) -> None:
    """Found by an audit (21st session): one enrolment code (a photographed QR, a leftover PNG) worked on any
    number of tablets at once, undetected. The first app install that uses it binds it."""
    from edge_app.errors import AuthError
    from sync.client import enrol, install_id
    from sync.apply import DevicePaths
    from sync.transport import InMemoryTransport

    token = world.payload["token"]
    first = install_id(DevicePaths(world.device_dir))
    enrol(world.device_dir, world.payload)  # enrolled again on the same tablet: the same install
    assert install_id(DevicePaths(world.device_dir)) == first
    InMemoryTransport(world.hub, token, install_id=first).plan(0, None)
    with pytest.raises(AuthError, match="in use on another tablet"):
        InMemoryTransport(world.hub, token, install_id="b" * 32).plan(0, None)
    assert world.hub.store.device("tab1")["install_conflict_at"]
    InMemoryTransport(world.hub, token, install_id=first).plan(0, None)  # the tablet it is bound to goes on
    other = install_id(DevicePaths(tmp_path / "second-tablet"))
    assert other != first and len(other) == 32


"""HTTPS with a pinned self-signed certificate: a real hub process, a real urllib client."""
from __future__ import annotations

import json
import os
import ssl
import stat
import urllib.error
import urllib.request

import pytest

from edge_app.errors import SyncError, UsageError

from .conftest import build_world
from .helpers import HubServer


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory):
    from edge_app.cli import main

    root = tmp_path_factory.mktemp("tls")
    world = build_world(root, url="http://127.0.0.1:8765")
    assert main(["hub", "tls-init", "--hub", str(world.hub.root), "--host", "hub.terminal.lan",
                 "--host", "10.0.0.5"]) == 0
    world.hub.config.update(json.loads((world.hub.root / "hub.json").read_text()))
    server = HubServer(world.hub.root)
    yield world, server
    server.stop()


def _enrol(world, server, name):
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    payload = add_device(world.hub, name, "site_a", server.url)
    d = world.root / name
    enrol(d, payload)
    return SyncClient(d, smoke_test=lambda b: None), payload, d


def test_tls_init_writes_a_pinned_certificate_and_switches_the_url(tls_world):
    from cryptography import x509

    from sync.hub.tls import KEY, enable_tls, fingerprint, tls_dir

    world, server = tls_world
    d = tls_dir(world.hub.root)
    cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"hub.terminal.lan", "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.0.0.5", "127.0.0.1"}
    assert stat.S_IMODE(os.stat(d / KEY).st_mode) == 0o600
    assert json.loads((world.hub.root / "hub.json").read_text())["url"] == "https://127.0.0.1:8765"
    assert server.url.startswith("https://")
    # tablets pin it: replacing it needs --force
    before = fingerprint((d / "cert.pem").read_text())
    with pytest.raises(UsageError, match="--force"):
        enable_tls(world.hub, ["x"])
    assert fingerprint((d / "cert.pem").read_text()) == before


def test_device_syncs_over_https_with_the_pinned_certificate(tls_world):
    from edge_app.runtime.outbox import Outbox

    world, server = tls_world
    c, payload, d = _enrol(world, server, "tls-a")
    from sync.hub.tls import cert_pem, fingerprint

    assert payload["tls_sha256"] == fingerprint(cert_pem(world.hub.root)) and len(payload["tls_sha256"]) == 64
    assert json.loads((d / "device.json").read_text())["tls_sha256"] == payload["tls_sha256"]
    assert c.status()["tls"] == f"pinned {payload['tls_sha256'][:16]}..."  # `sync status` on the tablet
    st = world.hub.status()["tls"]  # what `hub status` shows the admin
    assert st["sha256"] == payload["tls_sha256"] and "127.0.0.1" in st["hosts"] and st["days_left"] > 3600
    r = c.sync()
    assert r.package.startswith("snapshot-") and r.bundle_installed == world.hub.bundle_id
    ob = Outbox(d / "outbox.db")
    ob.add("usage", {"status": "match"})
    ob.close()
    assert c.sync().uploaded == 1
    # the enrolment QR still fits with the certificate in it
    from sync.hub.enrol import qr_png

    assert qr_png(payload, world.root / "tls-a.png").stat().st_size > 0


def test_another_certificate_is_refused_before_the_token_is_sent(tls_world, tmp_path):
    from sync.client import SyncClient
    from sync.hub.tls import init_tls
    from sync.transport import HttpTransport, TLSError

    world, server = tls_world
    c, payload, d = _enrol(world, server, "tls-b")
    other = init_tls(tmp_path / "mitm", ["127.0.0.1"])  # what a machine in the middle would present
    dev = json.loads((d / "device.json").read_text())
    dev["tls_sha256"] = other["sha256"]
    (d / "device.json").write_text(json.dumps(dev))
    with pytest.raises(TLSError, match="not the one this device trusts"):
        SyncClient(d, smoke_test=lambda b: None).sync()
    # plain HTTP to the HTTPS port does not work either, and a pinned cert needs an https URL
    with pytest.raises(SyncError):
        HttpTransport(server.url.replace("https://", "http://"), payload["token"], retries=0).whoami()
    with pytest.raises(SyncError, match="https"):
        HttpTransport(server.url.replace("https://", "http://"), payload["token"], tls_sha256=payload["tls_sha256"])
    # without the pinned cert, the system CAs do not know the hub: refused as well
    with pytest.raises(TLSError):
        HttpTransport(server.url, payload["token"]).whoami()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/openapi.json", timeout=5)


def test_enrolment_refuses_a_plain_url_and_a_broken_certificate(tls_world):
    from sync.client import enrol
    from sync.hub.enrol import add_device

    world, server = tls_world
    n = len(world.hub.store.list_devices())
    with pytest.raises(UsageError, match="https://"):
        add_device(world.hub, "tls-plain", "site_a", server.url.replace("https://", "http://"))
    assert len(world.hub.store.list_devices()) == n  # refused before the device was stored
    payload = add_device(world.hub, "tls-c", "site_a", server.url)
    payload["tls_sha256"] = "not a sha256"
    with pytest.raises(UsageError, match="pin"):
        enrol(world.root / "tls-c", payload)
    assert not (world.root / "tls-c" / "device.json").exists()


def test_a_machine_in_the_middle_never_receives_the_token(tls_world, tmp_path):
    """A TLS server with another certificate on the hub's address: the tablet completes the handshake, sees
    the wrong certificate and closes the connection without sending a byte of the request."""
    import socket
    import ssl
    import threading

    from sync.hub.tls import init_tls
    from sync.transport import HttpTransport, TLSError

    world, server = tls_world
    _, payload, _ = _enrol(world, server, "tls-mitm")
    mitm = init_tls(tmp_path / "mitm", ["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(mitm["cert"], mitm["key"])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    received: list[bytes] = []
    handshake_done = threading.Event()

    def run() -> None:
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                handshake_done.set()
                tls.settimeout(5)
                while chunk := tls.recv(65536):
                    received.append(chunk)
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        transport = HttpTransport(f"https://127.0.0.1:{srv.getsockname()[1]}", payload["token"],
                                  tls_sha256=payload["tls_sha256"], retries=0)
        with pytest.raises(TLSError, match="not the one this device trusts"):
            transport.whoami()
        t.join(10)
    finally:
        srv.close()
    assert handshake_done.is_set() and b"".join(received) == b""  # no request, no token


def test_tls_init_refuses_bad_hosts_and_validity(tmp_path):
    from edge_app.cli import main
    from sync.hub.tls import has_tls, init_tls

    with pytest.raises(UsageError, match="not a host name"):
        init_tls(tmp_path / "h", ["hub/terminal"])
    with pytest.raises(UsageError, match="1..36500 days"):
        init_tls(tmp_path / "h", ["hub"], days=0)
    with pytest.raises(UsageError, match="1..36500 days"):  # a million days overflowed the certificate date
        init_tls(tmp_path / "h", ["hub"], days=3_000_000)
    assert not has_tls(tmp_path / "h")  # nothing half-made
    world = build_world(tmp_path / "w")  # hub URL http://127.0.0.1:9
    assert main(["hub", "tls-init", "--hub", str(world.hub.root), "--host", "bad host"]) != 0
    assert not has_tls(world.hub.root)
    assert json.loads((world.hub.root / "hub.json").read_text())["url"].startswith("http://")


def test_certificate_rotation_without_re_enrolling(tmp_path):
    """tls-rotate: the next pin reaches tablets through their sync; --activate is refused while a tablet has
    not synced since; after it the running server presents the new certificate (no restart) and the tablets
    that followed keep syncing, the other cannot."""
    from edge_app.cli import main
    from sync.hub.enrol import add_device
    from sync.hub.tls import cert_pem, fingerprint, pins
    from sync.transport import TLSError

    world = build_world(tmp_path, url="http://127.0.0.1:8765")
    hub = world.hub
    assert main(["hub", "tls-init", "--hub", str(hub.root)]) == 0
    hub.config.update(json.loads((hub.root / "hub.json").read_text()))
    old_pin = fingerprint(cert_pem(hub.root))
    server = HubServer(hub.root)
    try:
        follower, _, fdir = _enrol(world, server, "tls-follower")
        sleeper, _, sdir = _enrol(world, server, "tls-sleeper")
        follower.sync()
        sleeper.sync()
        assert main(["hub", "tls-rotate", "--hub", str(hub.root)]) == 0
        old, new = pins(hub.root)
        assert old == old_pin and new != old_pin
        from sync.hub.tls import rotate_tls

        with pytest.raises(UsageError, match="already waiting"):
            rotate_tls(hub)
        follower.sync()  # learns the next pin over the connection it already trusts
        assert json.loads((fdir / "device.json").read_text())["tls_sha256"] == [old, new]
        assert json.loads((sdir / "device.json").read_text())["tls_sha256"] == old
        # the sleeper has not synced since the rotation began: activation refused, nothing changed
        assert main(["hub", "tls-rotate", "--activate", "--hub", str(hub.root)]) != 0
        assert pins(hub.root) == [old, new]
        served = fingerprint(ssl.get_server_certificate(("127.0.0.1", server.port)))
        assert served == old
        assert main(["hub", "tls-rotate", "--activate", "--force", "--hub", str(hub.root)]) == 0
        assert pins(hub.root) == [new] and not (hub.root / "tls" / "next").exists()
        # the running `hub serve` (not restarted) presents the new certificate from the next handshake on
        assert fingerprint(ssl.get_server_certificate(("127.0.0.1", server.port))) == new
        from sync.client import SyncClient

        r = SyncClient(fdir, smoke_test=lambda b: None).sync()
        assert r.to_version == hub.store.version()
        assert json.loads((fdir / "device.json").read_text())["tls_sha256"] == new  # the old pin dropped
        with pytest.raises(TLSError):
            SyncClient(sdir, smoke_test=lambda b: None).sync()
        assert add_device(hub, "tls-later", "site_a", server.url)["tls_sha256"] == new
    finally:
        server.stop()


def test_tablets_enrolled_over_http_switch_to_https_by_themselves(tmp_path):
    """A hub that ran plain HTTP turns on TLS on a new port and keeps a plain process on the old one: a tablet
    enrolled over http:// gets the signed offer at its next sync and syncs over HTTPS from then on; a forged
    offer (another signer) is ignored."""
    from edge_app.cli import main
    from sync.client import SyncClient
    from sync.hub.process import HubProcess, free_port
    from sync.hub.tls import cert_pem, fingerprint
    from sync.transport import InMemoryTransport

    from .helpers import make_key, write_images

    old_port, new_port = free_port(), free_port()
    world = build_world(tmp_path, url=f"http://127.0.0.1:{old_port}")
    hub = world.hub
    with HubProcess(hub.root, port=old_port) as plain:
        tab = SyncClient(world.device_dir, smoke_test=lambda b: None)
        assert tab.sync().to_version == hub.store.version()  # the old way, over HTTP
        assert main(["hub", "tls-init", "--hub", str(hub.root), "--port", str(new_port)]) == 0
    hub.config.update(json.loads((hub.root / "hub.json").read_text()))
    assert hub.config["url"] == f"https://127.0.0.1:{new_port}"
    pin = fingerprint(cert_pem(hub.root))

    # a forged offer over the plain channel: signed by a key the tablet does not trust
    _, stranger, _ = make_key(tmp_path / "stranger")
    forged = InMemoryTransport(hub, world.payload["token"])
    real_plan = forged.plan

    def forged_plan(version, bundle_id, epoch=0, last_error=None, settings_stamp=None):
        from edge_app.signing import sign_document
        from sync.transport import upgrade_offer_bytes

        plan = real_plan(version, bundle_id, epoch)
        doc = {"url": "https://evil.example:443", "tls_sha256": "ab" * 32, "key_id": stranger.key_id}
        plan["tls_upgrade"] = {"doc": doc, "signature": sign_document(upgrade_offer_bytes(doc), stranger)}
        return plan

    forged.plan = forged_plan
    SyncClient(world.device_dir, transport=forged, smoke_test=lambda b: None).sync()
    dev = json.loads((world.device_dir / "device.json").read_text())
    assert dev["hub"] == f"http://127.0.0.1:{old_port}" and "tls_sha256" not in dev

    # a genuine offer from before the catalogue the tablet holds (replayed over the plain channel): refused
    from sync.hub.tls import upgrade_offer

    stale = upgrade_offer(hub)
    img0 = write_images(tmp_path / "newer", [8])[0]
    hub.add_part({"part_number": "P8", "name": "part 8"}, images=[img0])
    catch_up = InMemoryTransport(hub, world.payload["token"])
    plan_of = catch_up.plan
    catch_up.plan = lambda v, b, e=0, **_: {k: x for k, x in plan_of(v, b, e).items() if k != "tls_upgrade"}
    SyncClient(world.device_dir, transport=catch_up,
               smoke_test=lambda b: None).sync()  # the tablet now holds a newer catalogue than the offer's
    replay = InMemoryTransport(hub, world.payload["token"])
    genuine_plan = replay.plan
    replay.plan = lambda v, b, e=0, **_: {**genuine_plan(v, b, e), "tls_upgrade": stale}
    SyncClient(world.device_dir, transport=replay, smoke_test=lambda b: None).sync()
    dev = json.loads((world.device_dir / "device.json").read_text())
    assert dev["hub"] == f"http://127.0.0.1:{old_port}" and "tls_sha256" not in dev

    with HubProcess(hub.root, port=old_port, plain=True) as plain, HubProcess(hub.root, port=new_port) as secure:
        assert plain.url.startswith("http://") and secure.url.startswith("https://")
        SyncClient(world.device_dir, smoke_test=lambda b: None).sync()  # over HTTP: takes the signed offer
        dev = json.loads((world.device_dir / "device.json").read_text())
        assert dev["hub"] == secure.url and dev["tls_sha256"] == pin
        # this sync still came over the plain port: `hub status` names the tablets left to move
        assert hub.status()["devices"]["last_came_over_plain_http"] == ["tab1"]
        plain.stop()  # the old port is gone: the tablet no longer needs it
        img = write_images(tmp_path / "more", [9])[0]
        hub.add_part({"part_number": "P9", "name": "part 9"}, images=[img])
        r = SyncClient(world.device_dir, smoke_test=lambda b: None).sync()  # over HTTPS, pinned
        assert r.to_version == hub.store.version() and r.applied
        assert hub.status()["devices"]["last_came_over_plain_http"] == []


def test_a_tablet_that_cannot_reach_the_new_https_port_falls_back_until_it_can(tmp_path):
    """The admin turned on HTTPS on a new port but the firewall still blocks it: tablets that took the offer
    keep syncing over their old address (not stranded until re-enrolled); the first sync over HTTPS drops
    the fallback for good."""
    from edge_app.cli import main
    from sync.client import SyncClient
    from sync.hub.process import HubProcess, free_port
    from sync.transport import UnreachableError

    from .helpers import write_images

    old_port, new_port = free_port(), free_port()
    world = build_world(tmp_path, url=f"http://127.0.0.1:{old_port}")
    hub = world.hub
    assert main(["hub", "tls-init", "--hub", str(hub.root), "--port", str(new_port)]) == 0
    hub.config.update(json.loads((hub.root / "hub.json").read_text()))
    device_json = world.device_dir / "device.json"
    with HubProcess(hub.root, port=old_port, plain=True):  # the HTTPS port is not reachable (nothing serves it)
        SyncClient(world.device_dir, smoke_test=lambda b: None).sync()  # takes the signed offer
        dev = json.loads(device_json.read_text())
        assert dev["hub"] == f"https://127.0.0.1:{new_port}" and dev["fallback_hub"] == f"http://127.0.0.1:{old_port}"
        hub.add_part({"part_number": "P7", "name": "part 7"}, images=write_images(tmp_path / "p7", [7]))
        r = SyncClient(world.device_dir, smoke_test=lambda b: None).sync()  # HTTPS fails: the old address serves
        assert r.to_version == hub.store.version() and r.applied["parts"] == 1
        assert json.loads(device_json.read_text())["fallback_hub"] == f"http://127.0.0.1:{old_port}"
    with HubProcess(hub.root, port=new_port):  # the port is open now
        r = SyncClient(world.device_dir, smoke_test=lambda b: None).sync()
        assert r.to_version == hub.store.version()
        assert "fallback_hub" not in json.loads(device_json.read_text())  # the switch is confirmed
    with HubProcess(hub.root, port=old_port, plain=True):  # no way back to plain HTTP once HTTPS worked
        with pytest.raises(UnreachableError):
            SyncClient(world.device_dir, smoke_test=lambda b: None).sync()


def test_activation_without_the_rotation_marker_is_a_clear_error(tmp_path):
    from sync.hub.tls import activate_next, enable_tls, next_dir, pins, rotate_tls

    world = build_world(tmp_path)
    enable_tls(world.hub)
    rotate_tls(world.hub)
    (next_dir(world.hub.root) / "rotation.json").unlink()
    before = pins(world.hub.root)
    with pytest.raises(UsageError, match="rotation.json"):
        activate_next(world.hub)
    assert pins(world.hub.root) == before  # nothing switched


def test_the_reloading_context_waits_for_a_matching_pair(tmp_path):
    """A running server reloads its certificate when the files change, but not from a half-written pair (the
    new key beside the old certificate, as in the middle of `tls-rotate --activate`)."""
    import shutil

    from sync.hub.tls import CERT, KEY, ReloadingTLS, init_tls

    init_tls(tmp_path / "a", ["127.0.0.1"], _into=tmp_path / "a")
    init_tls(tmp_path / "b", ["127.0.0.1"], _into=tmp_path / "b")
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "a", live)

    def default():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(live / CERT, live / KEY)
        return ctx

    tls = ReloadingTLS(live / CERT, live / KEY)
    first = tls.uvicorn_factory(None, default)
    assert first.sni_callback is not None and tls.current() is first  # unchanged files: the same context
    shutil.copy(tmp_path / "b" / KEY, live / KEY)  # the key is new, the certificate not yet
    assert tls.current() is first
    shutil.copy(tmp_path / "b" / CERT, live / CERT)
    second = tls.current()
    assert second is not first and tls.current() is second

    class Conn:
        context = first

    conn = Conn()
    first.sni_callback(conn, None, first)  # what OpenSSL calls at a handshake (no SNI from an IP-address client)
    assert conn.context is second


def test_a_protected_tls_key_needs_the_passphrase_to_serve(tmp_path, monkeypatch, capsys):
    """`hub tls-init --protect`: the TLS key is encrypted; `hub serve` refuses to start without the passphrase
    (instead of failing every handshake) and serves HTTPS with it; a rotation protects the next key the same way."""
    from edge_app.cli import main
    from edge_app.signing import PASSPHRASE_ENV
    from sync.hub.tls import KEY, key_is_protected, next_dir, tls_dir
    from sync.transport import HttpTransport

    world = build_world(tmp_path, url="http://127.0.0.1:8765")
    hub_dir = str(world.hub.root)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    assert main(["hub", "tls-init", "--hub", hub_dir, "--protect"]) == UsageError.exit_code
    assert PASSPHRASE_ENV in capsys.readouterr().err and not (tls_dir(world.hub.root) / KEY).exists()
    monkeypatch.setenv(PASSPHRASE_ENV, "tls passphrase")
    assert main(["hub", "tls-init", "--hub", hub_dir, "--protect"]) == 0
    key = tls_dir(world.hub.root) / KEY
    assert key_is_protected(key) and b"BEGIN ENCRYPTED PRIVATE KEY" in key.read_bytes()
    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    assert main(["hub", "serve", "--hub", hub_dir, "--port", "9"]) == UsageError.exit_code
    assert "wrong passphrase" in capsys.readouterr().err
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert main(["hub", "serve", "--hub", hub_dir, "--port", "9"]) == UsageError.exit_code
    assert "protected by a passphrase" in capsys.readouterr().err
    monkeypatch.setenv(PASSPHRASE_ENV, "tls passphrase")
    world.hub.config.update(json.loads((world.hub.root / "hub.json").read_text()))
    from sync.hub.enrol import add_device

    server = HubServer(world.hub.root)  # inherits the environment, as a service would
    try:
        payload = add_device(world.hub, "tls-p", "site_a", server.url)
        who = HttpTransport(server.url, payload["token"], tls_sha256=payload["tls_sha256"]).whoami()
        assert who["device"] == "tls-p"
    finally:
        server.stop()
    assert main(["hub", "tls-rotate", "--hub", hub_dir]) == 0
    assert key_is_protected(next_dir(world.hub.root) / KEY)


def test_rotation_can_protect_a_plain_tls_key(tmp_path, monkeypatch):
    from edge_app.signing import PASSPHRASE_ENV
    from sync.hub.tls import KEY, enable_tls, key_is_protected, next_dir, rotate_tls, tls_dir

    world = build_world(tmp_path, url="http://127.0.0.1:8765")
    enable_tls(world.hub)
    assert not key_is_protected(tls_dir(world.hub.root) / KEY)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(UsageError, match=PASSPHRASE_ENV):
        rotate_tls(world.hub, protect=True)
    monkeypatch.setenv(PASSPHRASE_ENV, "tls passphrase")
    rotate_tls(world.hub, protect=True)
    assert key_is_protected(next_dir(world.hub.root) / KEY)


def test_a_tls_init_stopped_before_the_url_switch_is_finished_by_running_it_again(tmp_path, monkeypatch):
    """Stopped after the certificate was written and before the hub's URL became https:// (before the fix: every
    later tls-init asked for --force and warned to re-enrol every tablet, although none pins that certificate, and
    tablets on http:// were never offered the switch)."""
    from sync.hub import tls as tls_mod
    from sync.hub.tls import enable_tls, fingerprint, tls_dir, upgrade_offer

    world = build_world(tmp_path, url="http://127.0.0.1:8765")
    with monkeypatch.context() as m:
        def dies(*a, **k):
            raise KeyboardInterrupt

        m.setattr(tls_mod, "atomic_write_json", dies)
        with pytest.raises(KeyboardInterrupt):
            enable_tls(world.hub, ["hub.terminal.lan"])
    cert = (tls_dir(world.hub.root) / "cert.pem").read_text()
    assert json.loads((world.hub.root / "hub.json").read_text())["url"] == "http://127.0.0.1:8765"
    assert upgrade_offer(world.hub) is None  # the half-done state: no offer for http:// tablets
    # a certificate without a name now asked for is not taken over
    with pytest.raises(UsageError, match="--force"):
        enable_tls(world.hub, ["other.lan"])
    info = enable_tls(world.hub, ["hub.terminal.lan"])
    assert info["resumed"] and info["sha256"] == fingerprint(cert)
    assert (tls_dir(world.hub.root) / "cert.pem").read_text() == cert  # the same certificate, kept
    assert json.loads((world.hub.root / "hub.json").read_text())["url"] == "https://127.0.0.1:8765"
    assert upgrade_offer(world.hub)["doc"]["tls_sha256"] == fingerprint(cert)
    with pytest.raises(UsageError, match="--force"):  # done now: tablets may pin it
        enable_tls(world.hub, ["hub.terminal.lan"])


def test_a_rotation_begun_during_a_sync_is_learnt_by_that_sync(tmp_path):
    """An audit: a rotation begun while a tablet was mid-sync was recorded as learnt by it (its end-of-sync
    check-in counts as a sync at the hub), though the tablet never read the check-in's pins; `--activate` then
    went through without --force and locked that tablet out. The check-in takes the signed settings now."""
    from edge_app.cli import main
    from sync.client import SyncClient
    from sync.hub.tls import pins, rotate_tls

    from .helpers import write_images

    world = build_world(tmp_path, url="http://127.0.0.1:8765")
    hub = world.hub
    assert main(["hub", "tls-init", "--hub", str(hub.root)]) == 0
    hub.config.update(json.loads((hub.root / "hub.json").read_text()))
    server = HubServer(hub.root)
    try:
        tab, _, tdir = _enrol(world, server, "tls-busy")
        tab.sync()
        hub.add_part({"part_number": "MID", "name": "mid-sync"}, images=write_images(tmp_path / "mid", [21]))
        busy = SyncClient(tdir, smoke_test=lambda b: None)
        real_download = busy.transport.download

        def download(*a, **k):  # the admin starts the rotation while this tablet fetches its update
            if not (hub.root / "tls" / "next").exists():
                rotate_tls(hub)
            return real_download(*a, **k)

        busy.transport.download = download
        assert busy.sync().checked_in is True
        old, new = pins(hub.root)
        assert json.loads((tdir / "device.json").read_text())["tls_sha256"] == [old, new]  # learnt at the check-in
        hub.store.revoke_device("tab1")  # (the world's in-process tablet: not part of this story)
        assert main(["hub", "tls-rotate", "--activate", "--hub", str(hub.root)]) == 0  # no --force needed
        assert SyncClient(tdir, smoke_test=lambda b: None).sync().to_version == hub.store.version()
        # a restore of a backup from before would bring back the old certificate: said until a backup is taken
        assert any("certificate" in c["what"] for c in hub.status()["changes_since_backup"])
    finally:
        server.stop()


def test_activation_asks_the_tablets_settings_not_the_clock_whether_they_know_the_next_pin(tmp_path):
    """An audit: a tablet that synced while the hub's clock ran 3 h ahead counted as having synced after a
    rotation begun once the clock was put right; `--activate` went through without --force and locked it out.
    Tablets now say which signed settings they follow, and activation checks that."""
    from edge_app.cli import main
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device
    from sync.hub.tls import activate_next, rotate_tls
    from sync.transport import InMemoryTransport

    world = build_world(tmp_path)
    hub = world.hub
    assert main(["hub", "tls-init", "--hub", str(hub.root)]) == 0
    follower_dir = tmp_path / "follower"
    payload = add_device(hub, "follower", "site_a", url="https://127.0.0.1:9")
    enrol(follower_dir, payload)

    def sync(device_dir, token):
        return SyncClient(device_dir, transport=InMemoryTransport(hub, token), smoke_test=lambda b: None).sync()

    sync(world.device_dir, world.payload["token"])
    sync(follower_dir, payload["token"])
    conn = hub.store._db().conn
    conn.execute("UPDATE devices SET last_sync_at='2099-01-01T00:00:00+00:00' WHERE name='tab1'")  # clock ahead
    rotate_tls(hub)
    sync(follower_dir, payload["token"])  # only the follower syncs during the rotation
    with pytest.raises(UsageError, match=r"1 tablet\(s\) have not synced since the rotation began .*: tab1\."):
        activate_next(hub)
    sync(world.device_dir, world.payload["token"])
    assert activate_next(hub)["not_synced_since_rotation"] == []

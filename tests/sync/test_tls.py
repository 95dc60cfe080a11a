"""HTTPS with a pinned self-signed certificate: a real hub process, a real urllib client."""
from __future__ import annotations

import json
import os
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
    assert payload["tls_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert json.loads((d / "device.json").read_text())["tls_cert"] == payload["tls_cert"]
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
    dev["tls_cert"] = open(other["cert"]).read()
    (d / "device.json").write_text(json.dumps(dev))
    with pytest.raises(TLSError, match="not the one this device trusts"):
        SyncClient(d, smoke_test=lambda b: None).sync()
    # plain HTTP to the HTTPS port does not work either, and a pinned cert needs an https URL
    with pytest.raises(SyncError):
        HttpTransport(server.url.replace("https://", "http://"), payload["token"], retries=0).whoami()
    with pytest.raises(SyncError, match="https"):
        HttpTransport(server.url.replace("https://", "http://"), payload["token"], tls_cert=payload["tls_cert"])
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
    payload["tls_cert"] = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    with pytest.raises(UsageError, match="certificate"):
        enrol(world.root / "tls-c", payload)
    assert not (world.root / "tls-c" / "device.json").exists()

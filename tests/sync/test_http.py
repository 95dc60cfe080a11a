"""Acceptance tests against a REAL hub process (uvicorn on a free loopback port)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from edge_app.errors import AuthError

from .conftest import build_world
from .helpers import CuttingProxy, HubServer, make_bundle, part_image, write_images
from .test_inmemory import search


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    world = build_world(root)
    server = HubServer(world.hub.root)
    yield world, server
    server.stop()


def enrol_device(world, server, name, site="site_a", url=None):
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    payload = add_device(world.hub, name, site, url or server.url)
    d = world.root / name
    enrol(d, payload)
    return SyncClient(d, smoke_test=lambda b: None), payload, d


def test_openapi_served(served):
    _, server = served
    spec = json.loads(urllib.request.urlopen(server.url + "/openapi.json").read())
    assert "/v1/sync" in spec["paths"] and "/v1/uploads/{uuid}/blob" in spec["paths"]


@pytest.mark.parametrize("path", ["/v1/sync?version=0", "/v1/whoami", "/v1/packages/snapshot-000005.tar",
                                  "/v1/uploads/0000-1111-2222"])
@pytest.mark.parametrize("token", [None, "pl1.tab1.wrong", "garbage"])
def test_bad_token_gets_401_and_no_data(served, path, token):
    _, server = served
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 401
    body = exc.value.read()
    assert json.loads(body) == {"detail": "invalid or missing token"}


def test_full_incremental_new_part_and_site_isolation(served):
    world, server = served
    c, payload, d = enrol_device(world, server, "http-a")
    r = c.sync()
    assert r.package.startswith("snapshot-") and r.downloaded_bytes > 0
    st = c.status()
    assert st["catalogue_version"] == world.hub.store.version() and st["active"]["bundle_id"] == world.hub.bundle_id
    img = write_images(world.root / "new-http", [91])[0]
    world.hub.add_part({"part_number": "HTTP-NEW", "name": "made after the bundle"},
                       inventory={"site_a": (3, "Q1"), "site_b": (7, "Q2")}, images=[img])
    r2 = c.sync()
    assert r2.package.startswith("delta-") and r2.applied["parts"] == 1

    class W:  # search() wants .device_dir
        device_dir = d
    assert search(W, part_image(91, noise=8.0))[0] == "HTTP-NEW"
    from edge_app.runtime.catalogue import CatalogueDB

    db = CatalogueDB(d / "catalogue.db")
    assert [i["site"] for i in db.part("HTTP-NEW")["inventory"]] == ["site_a"]
    db.close()
    # a site_b device receives site_b stock only, and cannot fetch site_a's packages
    cb, payload_b, db_dir = enrol_device(world, server, "http-b", site="site_b")
    cb.sync()
    db = CatalogueDB(db_dir / "catalogue.db")
    assert [i["site"] for i in db.part("HTTP-NEW")["inventory"]] == ["site_b"]
    db.close()
    snap = sorted(p.name for p in (world.hub.root / "packages" / "site_a").glob("snapshot-*.tar"))[0]
    req = urllib.request.Request(f"{server.url}/v1/packages/{snap}",
                                 headers={"Authorization": f"Bearer {payload_b['token']}",
                                          "X-Partlens-Install": cb.install_id})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 404
    # the same token from another app install (the enrolment code used on a second tablet): refused, and said so
    for install in ("f" * 32, None):
        other = urllib.request.Request(f"{server.url}/v1/whoami", headers={
            "Authorization": f"Bearer {payload_b['token']}", **({"X-Partlens-Install": install} if install else {})})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(other)
        assert exc.value.code == 401 and b"another" in exc.value.read()
    assert [d for d in world.hub.store.list_devices() if d["name"] == "http-b"][0]["install_conflict_at"]


def test_cut_download_resumes_with_range(served):
    world, server = served
    proxy = CuttingProxy(server.port, cut_at=6000, cuts=2)
    try:
        c, _, d = enrol_device(world, server, "http-cut", url=proxy.url)
        r = c.sync()
    finally:
        proxy.close()
    assert proxy.cut_done == 2, "the proxy should have cut two downloads (bundle and snapshot)"
    ranged = [h for h in proxy.requests if "\r\nRange: bytes=" in h]
    assert len(ranged) >= 2 and all("bytes=0-" not in h for h in ranged)
    assert r.bundle_installed == world.hub.bundle_id and r.package.startswith("snapshot-")
    assert c.status()["catalogue_version"] == world.hub.store.version()


def test_uploads_idempotent_resumable_and_review(served):
    from edge_app.runtime.outbox import Outbox
    from sync.hub.review import approve_photo, export_training, list_uploads

    world, server = served
    c, _, d = enrol_device(world, server, "http-up")
    c.sync()
    photo = d / "photo.jpg"
    photo.write_bytes(part_image(2, noise=20.0, size=400))
    ob = Outbox(d / "outbox.db")
    uid = ob.add("photo", {"part_number": "P2", "note": "field photo"}, blob_path=photo)
    ob.add("feedback", {"part_number": "P1", "correct": True})
    ob.close()
    # simulate an earlier, interrupted upload: record and first chunk only
    import hashlib

    data = photo.read_bytes()
    body = {"uuid": uid, "kind": "photo", "payload": {"part_number": "P2"}, "created_at": "2001-01-01T00:00:00",
            "catalogue_version": 1, "blob": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    first = c.transport.post_upload(body)
    assert not first["duplicate"]
    c.transport.put_chunk(uid, 0, data[:1000])
    r = c.sync()
    assert r.uploaded == 2
    again = c.transport.post_upload(body)  # the ack got lost; the device sends it again
    assert again["duplicate"] and again["blob_complete"] and again["seq"] == first["seq"]
    rows = [u for u in list_uploads(world.hub) if u["device"] == "http-up"]
    assert sorted(u["kind"] for u in rows) == ["feedback", "photo"]
    assert (world.hub.root / "uploads" / f"{uid}.blob").read_bytes() == data
    res = approve_photo(world.hub, uid)
    r2 = c.sync()
    assert r2.to_version == res["catalogue_version"] and r2.applied["images"] == 1
    out = export_training(world.hub, world.root / "train")
    assert out["images"] >= 1 and (world.root / "train" / "P2" / f"{res['image_id']}.jpg").is_file()


def test_new_bundle_over_http_and_revoked_token(served):
    world, server = served
    c, payload, d = enrol_device(world, server, "http-bundle")
    c.sync()
    old = c.status()["active"]["bundle_id"]
    world.hub.set_bundle(make_bundle(world.root / "export", world.export_key, 2))
    r = c.sync()
    assert r.bundle_installed and r.bundle_installed != old
    st = c.status()
    assert st["active"]["bundle_id"] == st["bundle_id"] == world.hub.bundle_id
    assert st["index_stamp"] == f"{world.hub.bundle_id}@{st['catalogue_version']}"
    from sync.client import SyncClient
    from sync.transport import HttpTransport

    bad = SyncClient(d, transport=HttpTransport(server.url, payload["token"] + "x"), smoke_test=lambda b: None)
    with pytest.raises(AuthError):
        bad.sync()
    # A lost tablet: revoking its token at the hub locks the right token out at once.
    from sync.hub.enrol import revoke_device

    assert revoke_device(world.hub, "http-bundle") is True
    assert revoke_device(world.hub, "http-bundle") is False  # already revoked: says so, changes nothing
    with pytest.raises(AuthError):
        c.sync()
    listed = {r["name"]: r for r in world.hub.store.list_devices()}
    assert listed["http-bundle"]["revoked"] == 1 and "token_hash" not in listed["http-bundle"]


def test_malformed_requests_get_4xx_and_change_nothing(served):
    """Found by an audit: these got a 500 (and a traceback in the hub's log)."""
    import http.client

    world, server = served
    _c, payload, _d = enrol_device(world, server, "http-bad")
    host, port = server.url.split("//")[1].split(":")
    before = world.hub.store.version(), len(world.hub.store.list_uploads())

    def send(method, path, body=None):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {payload['token']}",
                                                       "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data

    deep = "[" * 100_000 + "]" * 100_000
    assert send("POST", "/v1/uploads", deep)[0] == 400
    assert send("POST", "/v1/uploads/batch", deep)[0] == 400
    nan = '{"uuid": "0f5d8f6e-6b1e-4b8c-9d6a-1a2b3c4d5e6f", "kind": "usage", "payload": {"ms": NaN}}'
    status, data = send("POST", "/v1/uploads", nan)
    assert status == 400 and b"not JSON" in data
    assert send("GET", "/v1/sync?version=9223372036854775808")[0] == 422
    assert send("GET", "/v1/sync?epoch=99999999999999999999")[0] == 422
    assert send("GET", "/v1/sync?bundle_id=" + "x" * 3000)[0] == 422
    assert send("GET", "/v1/packages/snapshot-" + "0" * 300 + ".tar")[0] == 404
    assert (world.hub.store.version(), len(world.hub.store.list_uploads())) == before


def test_a_connection_that_never_sends_a_request_is_closed(monkeypatch):
    """uvicorn waits forever for a request head: 1,100 idle connections used up a desktop's 1,024 descriptors and
    locked every tablet out. The hub's protocol closes them after HEADER_TIMEOUT_S; real requests still work."""
    import socket
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI

    from sync.hub import server as hub_server
    from sync.hub.process import free_port

    monkeypatch.setattr(hub_server, "HEADER_TIMEOUT_S", 0.5)
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        http=hub_server.timed_h11_protocol()))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    try:
        for _ in range(100):
            if srv.started:
                break
            time.sleep(0.05)
        idle = socket.create_connection(("127.0.0.1", port))
        idle.settimeout(5)
        t0 = time.monotonic()
        assert idle.recv(1) == b""  # closed by the hub
        assert 0.3 < time.monotonic() - t0 < 3
        ok = socket.create_connection(("127.0.0.1", port))
        ok.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ok.settimeout(5)
        assert b"200 OK" in ok.recv(4096)
        # an audit: after one answered request, a second head dripped a byte at a time kept the connection for good
        ka = socket.create_connection(("127.0.0.1", port))
        ka.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        ka.settimeout(5)
        assert b"200 OK" in ka.recv(4096)
        ka.settimeout(0.1)
        t0, closed = time.monotonic(), False
        for byte in b"GET /ping HTTP/1.1\r\nHost: x\r\n" * 5:  # about 15 s of dripping
            try:
                ka.send(bytes([byte]))
                if ka.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - t0 < 5
    finally:
        srv.should_exit = True
        t.join(10)


def test_an_enrolment_code_nobody_used_expires_and_the_tablet_is_told_why(served):
    """An unused enrolment code used to work for ever (a QR code photographed, or a PNG left on a share, before
    the tablet was set up gave access to the site's stock and uploads whenever). Unused past `--valid-days`, it
    is refused with its reason (over real HTTP, to the engineer); a code a tablet used before does not expire."""
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    world, server = served
    store = world.hub.store
    used, _, _ = enrol_device(world, server, "exp-used")
    used.sync()  # used in time: its tablet's credential from now on
    payload = add_device(world.hub, "exp-late", "site_a", server.url, valid_days=0.5)
    d = world.root / "exp-late"
    enrol(d, payload)
    past = "2000-01-01T00:00:00+00:00"
    for name in ("exp-used", "exp-late"):
        store._db().conn.execute("UPDATE devices SET enrol_expires_at=? WHERE name=?", (past, name))
    with pytest.raises(AuthError, match="expired unused on 2000-01-01 00:00 UTC.*--reissue"):
        SyncClient(d, smoke_test=lambda b: None).sync()
    assert used.sync() is not None  # unaffected
    assert store.device("exp-late")["install_id"] is None  # the refused request bound nothing
    # the old app (no install header) is refused too
    req = urllib.request.Request(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {payload['token']}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 401 and b"expired unused" in exc.value.read()
    # a new code for it (`--reissue`) works, with a new expiry
    again = add_device(world.hub, "exp-late", "site_a", server.url, reissue=True)
    assert again["expires_at"] > past
    d2 = world.root / "exp-late-2"
    enrol(d2, again)
    assert SyncClient(d2, smoke_test=lambda b: None).sync().to_version == store.version()


def test_a_photo_damaged_on_the_way_is_told_apart_from_a_refused_one_over_http(served):
    """The hub answers bytes whose sha256 does not match with 422 and ``blob_discarded`` (the tablet sends the
    photo again); any other 422 on a photo stays a refusal for good."""
    import hashlib
    import uuid as _uuid

    from edge_app.errors import BlobDamagedError, IntegrityError
    from sync.transport import HttpTransport

    world, server = served
    cl, payload, _ = enrol_device(world, server, "blob-http")
    t = HttpTransport(server.url, payload["token"], install_id=cl.install_id)
    data = part_image(3, noise=20.0, size=100)
    uid = str(_uuid.uuid4())
    (status,) = t.post_uploads([{"uuid": uid, "kind": "photo", "payload": {"part_number": "P1"},
                                 "blob": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}])
    assert status["blob_sha256"] == hashlib.sha256(data).hexdigest() and status["blob_offset"] == 0
    with pytest.raises(BlobDamagedError, match="damaged"):
        t.put_chunk(uid, 0, bytes([data[0] ^ 1]) + data[1:])
    assert t.put_chunk(uid, 0, data)["blob_complete"]  # the hub discarded the damaged copy: sent again, complete
    other = str(_uuid.uuid4())
    t.post_uploads([{"uuid": other, "kind": "photo", "payload": {}, "blob": {"size": 10, "sha256": "0" * 64}}])
    with pytest.raises(IntegrityError) as exc:  # more bytes than declared: not a transit fault
        t.put_chunk(other, 0, b"x" * 11)
    assert not isinstance(exc.value, BlobDamagedError)

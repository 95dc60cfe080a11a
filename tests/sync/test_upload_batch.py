"""Outbox upload in batches: one request and one hub transaction per batch; refused records are kept
on the device, marked refused, and never block the records behind them."""
from __future__ import annotations

import json
import sqlite3
import uuid as _uuid

import pytest

from edge_app.errors import SyncError, UsageError

from .helpers import part_image


def _device(world):
    from sync.hub.auth import authenticate

    return authenticate(world.hub.store, world.hub.secret, world.payload["token"])


def _body(kind="usage", payload=None, uid=None):
    return {"uuid": uid or str(_uuid.uuid4()), "kind": kind, "payload": payload or {"status": "match"},
            "created_at": "2026-12-06T00:00:00+00:00", "catalogue_version": 1, "blob": None}


def test_receive_records_stores_good_refuses_bad_in_order(world):
    from sync.hub.uploads import MAX_PAYLOAD_BYTES, receive_records

    dev = _device(world)
    good = [_body() for _ in range(3)]
    dup = dict(good[0])
    bad_uuid = _body(uid="not a uuid!")
    big = _body(payload={"note": "x" * (MAX_PAYLOAD_BYTES + 1)})
    bad_kind = dict(_body(), kind="selfie")
    out = receive_records(world.hub, dev, [good[0], bad_uuid, good[1], big, dup, bad_kind, good[2], "junk"])
    assert [r["uuid"] for r in out[:7]] == [good[0]["uuid"], "not a uuid!", good[1]["uuid"], big["uuid"],
                                            good[0]["uuid"], bad_kind["uuid"], good[2]["uuid"]]
    refused = [i for i, r in enumerate(out) if "refused" in r]
    assert refused == [1, 3, 4, 5, 7]
    assert "not a UUID" in out[1]["refused"] and "over" in out[3]["refused"]
    assert "twice" in out[4]["refused"] and "kind" in out[5]["refused"] and "object" in out[7]["refused"]
    stored = [out[i] for i in (0, 2, 6)]
    assert [r["seq"] for r in stored] == sorted(r["seq"] for r in stored)  # receipt order kept
    assert all(not r["duplicate"] and r["blob_complete"] for r in stored)
    assert {u["uuid"] for u in world.hub.store.list_uploads(kind="usage")} == {g["uuid"] for g in good}
    # the lost-acknowledgement case: the same batch again is stored nothing new
    again = receive_records(world.hub, dev, good)
    assert all(r["duplicate"] for r in again) and [r["seq"] for r in again] == [r["seq"] for r in stored]
    assert not any(r.get("conflict") for r in again)


def test_a_uuid_sent_again_with_other_content_keeps_the_first_and_says_so(world, caplog):
    from sync.hub.uploads import receive_record, receive_records

    dev = _device(world)
    first = _body(payload={"status": "match", "part": "P1"})
    receive_records(world.hub, dev, [first])
    other = dict(first, payload={"status": "match", "part": "P2"})
    out = receive_records(world.hub, dev, [other])[0]
    assert out["duplicate"] and out["conflict"] and "sent again with other content (payload)" in caplog.text
    one = receive_record(world.hub, dev, dict(first, kind="feedback"))
    assert one["duplicate"] and one["conflict"]
    kept = world.hub.store.upload(first["uuid"])
    assert json.loads(kept["payload"])["part"] == "P1" and kept["kind"] == "usage"


def test_fields_of_the_wrong_type_refuse_their_record_not_the_batch(world):
    """Found by an audit: such a record made the hub's database insert fail (500), and the batch's good records
    were lost with it, at every sync."""
    from sync.hub.uploads import receive_records

    dev = _device(world)
    good = _body()
    bad = [dict(_body(), created_at={"nested": [1, 2]}), dict(_body(), catalogue_version=10**30),
           dict(_body(), catalogue_version=[1]), dict(_body(), catalogue_version=True),
           dict(_body(), created_at="\ud800"), dict(_body(), created_at="x" * 1000),
           dict(_body(kind="photo"), blob={"size": float("inf"), "sha256": "a" * 64}),
           dict(_body(kind="photo"), blob={"size": "12", "sha256": "a" * 64}), dict(_body(), payload={"ms": float("nan")}),
           dict(_body(), payload=0), dict(_body(), uuid=12345678901), dict(_body(), uuid="-" * 64)]
    out = receive_records(world.hub, dev, [*bad, good])
    assert all("refused" in r for r in out[:-1]), [r for r in out[:-1] if "refused" not in r]
    assert "refused" not in out[-1] and not out[-1]["duplicate"]
    assert {u["uuid"] for u in world.hub.store.list_uploads(kind="usage")} >= {good["uuid"]}
    stored = {u["uuid"] for u in world.hub.store.list_uploads()}
    assert not stored & {str(b["uuid"]) for b in bad}


def test_receive_records_limits_and_ownership(world):
    from sync.hub.enrol import add_device
    from sync.hub.uploads import MAX_BATCH, receive_records

    dev = _device(world)
    with pytest.raises(UsageError, match="at most"):
        receive_records(world.hub, dev, [_body() for _ in range(MAX_BATCH + 1)])
    with pytest.raises(UsageError, match="list"):
        receive_records(world.hub, dev, {"uuid": "x"})
    mine = _body()
    receive_records(world.hub, dev, [mine])
    add_device(world.hub, "tab2", "site_a")
    other = {"name": "tab2", "site": "site_a"}
    out = receive_records(world.hub, other, [mine, _body()])
    assert "another device" in out[0]["refused"] and "refused" not in out[1]
    assert world.hub.store.upload(mine["uuid"])["device"] == "tab1"



def test_the_same_uuid_from_two_tablets_at_once_refuses_the_later_one(world):
    """Found by an audit: the owner check ran before the write, so the tablet that lost a race for one UUID was
    told "duplicate" (stored) with the other tablet's record: ownership is now checked on what the write returns,
    so the order of the two requests does not matter. And a UUID with a trailing newline was accepted (its photo named with a newline)."""
    from sync.hub import uploads as U
    from sync.hub.enrol import add_device

    dev = _device(world)
    first = _body()
    U.receive_record(world.hub, dev, first)
    add_device(world.hub, "tab3", "site_a")
    other = {"name": "tab3", "site": "site_a"}
    with pytest.raises(UsageError, match="belongs to another device"):
        U.receive_record(world.hub, other, first)
    out = U.receive_records(world.hub, other, [first, _body()])
    assert "another device" in out[0]["refused"] and "refused" not in out[1]
    assert world.hub.store.upload(first["uuid"])["device"] == "tab1"
    with pytest.raises(UsageError, match="is not a UUID"):
        U.receive_record(world.hub, dev, _body(uid=str(_uuid.uuid4()) + "\n"))


def _client(world):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    return SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                      smoke_test=lambda b: None)


class CountingTransport:
    """Wraps a transport and counts record requests."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[int] = []
        self.singles = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def post_uploads(self, records):
        self.batches.append(len(records))
        return self.inner.post_uploads(records)

    def post_upload(self, record):
        self.singles += 1
        return self.inner.post_upload(record)


def test_sync_uploads_in_batches_and_keeps_refused_records(world):
    from edge_app.runtime.outbox import Outbox
    from sync.upload import UPLOAD_BATCH
    from sync.hub.enrol import add_device
    from sync.hub.uploads import MAX_PAYLOAD_BYTES, receive_records

    # a UUID another tablet already used (the hub refuses it: it belongs to that device)
    add_device(world.hub, "tab2", "site_a")
    taken = _body()
    receive_records(world.hub, {"name": "tab2", "site": "site_a"}, [taken])

    ob = Outbox(world.device_dir / "outbox.db")
    n_usage = UPLOAD_BATCH + 50
    ids = [ob.add("usage", {"status": "match", "i": i}) for i in range(n_usage // 2)]
    # over the hub's limit: the outbox refuses such a record now; one queued by an older app is still refused
    # by the client at upload time, not sent, and kept
    too_big = str(_uuid.uuid4())
    with sqlite3.connect(world.device_dir / "outbox.db") as raw:
        raw.execute("INSERT INTO outbox(uuid, kind, payload, blob_path, created_at) VALUES (?, ?, ?, NULL, ?)",
                    (too_big, "feedback", json.dumps({"note": "x" * (MAX_PAYLOAD_BYTES + 10)}),
                     "2026-12-06T00:00:01+00:00"))
    gone = world.root / "gone.jpg"
    gone.write_bytes(part_image(1))
    lost_photo = ob.add("photo", {"part_number": "P1"}, blob_path=gone)
    gone.unlink()  # the photo file vanished before the sync
    clash = ob.add("usage", {"status": "match"}, uuid=taken["uuid"])
    photo = world.root / "photo.jpg"
    photo.write_bytes(part_image(2, noise=20.0, size=300))
    good_photo = ob.add("photo", {"part_number": "P2"}, blob_path=photo)
    ids += [ob.add("usage", {"status": "match", "i": i}) for i in range(n_usage // 2, n_usage)]
    ob.close()

    c = _client(world)
    c.transport = CountingTransport(c.transport)
    r = c.sync()
    assert (r.uploaded, r.upload_refused) == (n_usage + 1, 3)
    # the two records refused on the tablet are never sent; the clash is refused by the hub
    assert c.transport.singles == 0 and len(c.transport.batches) == 2 and sum(c.transport.batches) == n_usage + 2
    hub_usage = {u["uuid"] for u in world.hub.store.list_uploads(kind="usage") if u["device"] == "tab1"}
    assert hub_usage == set(ids)
    assert world.hub.store.upload(good_photo)["blob_complete"] == 1
    assert (world.hub.root / "uploads" / f"{good_photo}.blob").read_bytes() == photo.read_bytes()
    assert world.hub.store.upload(too_big) is None and world.hub.store.upload(lost_photo) is None
    assert world.hub.store.upload(clash)["device"] == "tab2"

    ob = Outbox(world.device_dir / "outbox.db")
    refused = {x["uuid"]: x for x in ob.refused()}
    assert set(refused) == {too_big, lost_photo, clash}
    assert "limit" in refused[too_big]["refused_reason"] and "unreadable" in refused[lost_photo]["refused_reason"]
    assert "another device" in refused[clash]["refused_reason"]
    assert ob.pending() == [] and ob.count() == 0 and ob.count(pending_only=False) == n_usage + 4
    ob.close()
    # refused records are not sent again, and nothing is left to upload
    r2 = c.sync()
    assert (r2.uploaded, r2.upload_refused) == (0, 0) and len(c.transport.batches) == 2


def test_batches_split_on_payload_bytes(monkeypatch):
    from sync import upload

    monkeypatch.setattr(upload, "UPLOAD_BATCH_BYTES", 1000)
    recs = [{"payload": {"note": "x" * 300}} for _ in range(7)]
    sizes = [len(b) for b in upload._batches(recs)]
    assert sizes == [3, 3, 1]
    monkeypatch.setattr(upload, "UPLOAD_BATCH", 2)
    assert [len(b) for b in upload._batches(recs)] == [2, 2, 2, 1]
    assert upload._batches([]) == []


def test_outbox_v1_database_migrates_and_keeps_records(tmp_path):
    from edge_app.runtime.outbox import Outbox

    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
    conn.execute("CREATE TABLE outbox (uuid TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL, "
                 "blob_path TEXT, created_at TEXT NOT NULL, uploaded_at TEXT)")
    conn.execute("INSERT INTO schema_migrations VALUES (1, '2026-01-01')")
    conn.execute("INSERT INTO outbox VALUES ('u-1', 'feedback', '{\"a\": 1}', NULL, '2026-01-01', NULL)")
    conn.execute("INSERT INTO outbox VALUES ('u-2', 'usage', '{}', NULL, '2026-01-02', '2026-01-03')")
    conn.commit()
    conn.close()
    ob = Outbox(path)
    assert [r["uuid"] for r in ob.pending()] == ["u-1"] and ob.refused() == []
    assert ob.mark_refused("u-1", "hub says no") and not ob.mark_refused("u-1", "again")
    assert not ob.mark_refused("u-2", "already uploaded")
    assert ob.pending() == [] and [r["refused_reason"] for r in ob.refused()] == ["hub says no"]
    ob.close()
    ob = Outbox(path)  # reopening does not migrate twice
    assert [r["uuid"] for r in ob.refused()] == ["u-1"]
    ob.close()


def test_http_batch_and_fallback_for_an_older_hub(world, monkeypatch):
    """Real urllib client against the hub's FastAPI app in-process: one batch request; a hub without the
    batch route (405) gets the records one by one, and a record it refuses (400) is reported refused."""
    from fastapi.testclient import TestClient

    from sync.hub.server import create_app
    from sync.transport import HttpTransport, _HttpError

    app = create_app(world.hub)
    tc = TestClient(app)
    calls: list[str] = []

    def fake_json(self, method, path, payload=None, **kw):
        calls.append(path)
        resp = tc.request(method, path, json=payload, headers={"Authorization": f"Bearer {self.token}"})
        if resp.status_code >= 400:
            raise _HttpError(resp.status_code, resp.text, f"HTTP {resp.status_code}")
        return resp.json()

    monkeypatch.setattr(HttpTransport, "_json", fake_json)
    t = HttpTransport("http://hub.invalid", world.payload["token"])
    recs = [_body() for _ in range(5)] + [_body(uid="bad uuid")]
    out = t.post_uploads(recs)
    assert calls == ["/v1/uploads/batch"] and [("refused" in r) for r in out] == [False] * 5 + [True]

    # an older hub: no batch route
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/uploads/batch"]
    calls.clear()
    t2 = HttpTransport("http://hub.invalid", world.payload["token"])
    recs2 = [_body() for _ in range(3)] + [_body(uid="also bad")]
    out2 = t2.post_uploads(recs2)
    assert calls == ["/v1/uploads/batch"] + ["/v1/uploads"] * 4
    assert [("refused" in r) for r in out2] == [False, False, False, True] and "not a UUID" in out2[3]["refused"]
    calls.clear()
    t2.post_uploads([_body()])  # remembered: no second batch attempt
    assert calls == ["/v1/uploads"]


def test_hub_checks_the_token_before_reading_a_body_and_caps_its_size(world, monkeypatch):
    from fastapi.testclient import TestClient

    from sync.hub import server

    monkeypatch.setattr(server, "MAX_JSON_BODY", 10_000)
    monkeypatch.setattr(server, "MAX_CHUNK", 5_000)
    tc = TestClient(server.create_app(world.hub))
    auth = {"Authorization": f"Bearer {world.payload['token']}"}
    json_h = {"Content-Type": "application/json"}
    for path in ("/v1/uploads", "/v1/uploads/batch"):
        # no token: 401 whatever the body (it was parsed first before: 422 for bad JSON)
        assert tc.post(path, content=b"{not json", headers=json_h).status_code == 401
        assert tc.post(path, content=b"x" * 50_000, headers=json_h).status_code == 401
        big = tc.post(path, content=b'{"a": "' + b"x" * 20_000 + b'"}', headers={**auth, **json_h})
        assert big.status_code == 413 and "over 10000 bytes" in big.json()["detail"]
        bad = tc.post(path, content=b"{not json", headers={**auth, **json_h})
        assert bad.status_code == 400 and "not JSON" in bad.json()["detail"]
        assert tc.post(path, content=b"[1, 2]", headers={**auth, **json_h}).status_code == 400

    # a streamed body with no Content-Length is cut at the limit too
    def gen():
        for _ in range(30):
            yield b"x" * 1_000

    assert tc.post("/v1/uploads", content=gen(), headers={**auth, **json_h}).status_code == 413
    ok = tc.post("/v1/uploads/batch", json={"records": [_body()]}, headers=auth)
    assert ok.status_code == 200 and not ok.json()["results"][0]["duplicate"]
    rec = _body()
    rec["blob"] = {"size": 9_000, "sha256": "0" * 64}
    assert tc.post("/v1/uploads", json=rec, headers=auth).status_code == 200
    put = tc.put(f"/v1/uploads/{rec['uuid']}/blob?offset=0", content=b"x" * 6_000, headers=auth)
    assert put.status_code == 413
    put = tc.put(f"/v1/uploads/{rec['uuid']}/blob?offset=0", content=b"x" * 4_000, headers=auth)
    assert put.status_code == 200 and put.json()["blob_offset"] == 4_000


def test_refused_uploads_listed_and_requeued_from_the_cli(world, capsys):
    import json

    from edge_app.cli import main
    from edge_app.runtime.outbox import Outbox
    from sync.hub.enrol import add_device
    from sync.hub.uploads import receive_records

    add_device(world.hub, "tab2", "site_a")
    taken = _body()
    receive_records(world.hub, {"name": "tab2", "site": "site_a"}, [taken])
    ob = Outbox(world.device_dir / "outbox.db")
    clash = ob.add("usage", {"status": "match"}, uuid=taken["uuid"])
    fine = ob.add("usage", {"status": "match"})
    gone = world.root / "gone.jpg"
    gone.write_bytes(part_image(3))
    lost = ob.add("photo", {"part_number": "P1"}, blob_path=gone)
    ob.close()
    gone.unlink()  # its photo vanished from the tablet: the tablet itself marks it refused
    c = _client(world)
    assert (c.sync().upload_refused, c.status()["uploads_refused"], c.status()["uploads_pending"]) == (2, 2, 0)
    dd = ["--data-dir", str(world.device_dir)]
    assert main(["sync", "refused", *dd]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["uuid"] for r in out["refused"]] == [clash, lost] and out["requeued"] == 0
    assert "another device" in out["refused"][0]["refused_reason"]
    # the hub admin frees the UUID (here: the other tablet's record goes); requeue and sync again; the record
    # whose photo is gone would only be refused again: it stays, with the reason
    world.hub.store._db().conn.execute("DELETE FROM uploads WHERE uuid=?", (clash,))
    assert main(["sync", "refused", "--requeue", *dd]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requeued"] == 1 and out["refused"][1]["not_requeued_because"] == "its photo is no longer on this device"
    assert c.status()["uploads_pending"] == 1
    r = c.sync()
    assert (r.uploaded, r.upload_refused) == (1, 0) and c.status()["uploads_refused"] == 1
    assert world.hub.store.upload(clash)["device"] == "tab1" and world.hub.store.upload(fine)["device"] == "tab1"
    with pytest.raises(SystemExit) as exc:
        main(["sync", "refused", "--help"])
    assert exc.value.code == 0 and "--requeue" in capsys.readouterr().out


def test_a_photo_whose_last_chunk_arrived_before_the_hub_stopped_is_finished(world):
    """The hub was killed after the last chunk reached the disk and before it checked and renamed the photo: the
    tablet, told the hub holds every byte, sends nothing more. The hub finishes the photo when the record comes
    again (before the fix it stayed 'not finished uploading' for good); a full but corrupt file is discarded and
    the tablet sends the photo again."""
    import hashlib

    from edge_app.runtime.outbox import Outbox
    from sync.hub.uploads import blob_path, partial_path, receive_records, upload_status

    photo = world.root / "photo.jpg"
    photo.write_bytes(part_image(3, noise=20.0, size=200))
    data = photo.read_bytes()
    dev = _device(world)
    ob = Outbox(world.device_dir / "outbox.db")
    good = ob.add("photo", {"part_number": "P1"}, blob_path=photo)
    bad = ob.add("photo", {"part_number": "P2"}, blob_path=photo)
    ob.close()
    for uid, content in ((good, data), (bad, data[:-1] + bytes([data[-1] ^ 1]))):
        body = {**_body("photo", {"part_number": "P1"}, uid),
                "blob": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
        (status,) = receive_records(world.hub, dev, [body])
        assert status["blob_offset"] == 0 and not status["blob_complete"]
        part = partial_path(world.hub, uid)  # every byte on disk, then the hub died: no check, no rename
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(content)
    assert world.hub.store.upload(good)["blob_complete"] == 0
    r = _client(world).sync()  # the tablet sends the records again (it never heard back)
    assert r.uploaded == 2 and r.upload_refused == 0
    for uid in (good, bad):
        assert world.hub.store.upload(uid)["blob_complete"] == 1, uid
        assert blob_path(world.hub, uid).read_bytes() == data  # the corrupt one was discarded and sent again
        assert not partial_path(world.hub, uid).exists()
        assert upload_status(world.hub, dev, uid)["blob_complete"]


@pytest.mark.parametrize("change", ["larger", "smaller"])
def test_a_photo_that_cannot_complete_at_the_hub_is_refused_and_blocks_nothing(world, monkeypatch, change):
    """The hub registered a photo's size and sha256, received part of it, and the file on the tablet then changed
    (as a shared crop file did when the engineer cut the same photo again). Before: larger, every chunk was refused
    and every sync stopped there, with nothing behind it sent; smaller, the record was marked uploaded although the
    hub never completed the photo. Now the record is marked refused (kept, with the reason) and the rest goes."""
    from edge_app.runtime.outbox import Outbox
    from sync import upload as upload_mod
    from sync.hub.uploads import blob_path

    monkeypatch.setattr(upload_mod, "UPLOAD_CHUNK", 1000)
    photo = world.root / "photo.jpg"
    photo.write_bytes(part_image(4, noise=30.0, size=300))
    ob = Outbox(world.device_dir / "outbox.db")
    first = ob.add("photo", {"part_number": "P1"}, blob_path=photo)
    ob.close()

    class CutAfterOneChunk:
        def __init__(self, inner):
            self.inner, self.chunks = inner, 0

        def put_chunk(self, *a):
            self.chunks += 1
            if self.chunks > 1:
                raise SyncError("connection lost")
            return self.inner.put_chunk(*a)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    c = _client(world)
    c.transport = CutAfterOneChunk(c.transport)
    with pytest.raises(SyncError):
        c.sync()
    data = photo.read_bytes()
    photo.write_bytes(data + data[-3000:] if change == "larger" else data[:-2000])
    ob = Outbox(world.device_dir / "outbox.db")
    later = ob.add("usage", {"status": "match"})
    other = world.root / "other.jpg"
    other.write_bytes(part_image(5, noise=30.0, size=120))
    later_photo = ob.add("photo", {"part_number": "P2"}, blob_path=other)
    ob.close()
    r = _client(world).sync()
    assert (r.uploaded, r.upload_refused) == (2, 1)
    ob = Outbox(world.device_dir / "outbox.db")
    (refused,) = ob.refused()
    assert refused["uuid"] == first and "changed on this device after its first upload" in refused["refused_reason"]
    ob.close()
    assert world.hub.store.upload(first)["blob_complete"] == 0
    assert world.hub.store.upload(later) is not None
    assert blob_path(world.hub, later_photo).read_bytes() == other.read_bytes()


@pytest.mark.parametrize("damaged", [1, 2])
def test_a_photo_damaged_on_the_way_is_sent_again_not_refused(world, monkeypatch, damaged):
    """An audit: one chunk's bytes damaged on the way (a proxy, a flaky Wi-Fi bridge) made the hub discard the photo
    ("send it again") and the tablet mark it refused for good; it never reached the hub without a manual requeue.
    Damaged once: sent again from the start in the same sync. Damaged at every try: kept pending, and the next
    clean sync delivers it."""
    from edge_app.runtime.outbox import Outbox
    from sync import upload as upload_mod
    from sync.hub.uploads import blob_path

    monkeypatch.setattr(upload_mod, "UPLOAD_CHUNK", 1000)
    photo = world.root / "photo.jpg"
    photo.write_bytes(part_image(4, noise=30.0, size=300))
    ob = Outbox(world.device_dir / "outbox.db")
    uid = ob.add("photo", {"part_number": "P1"}, blob_path=photo)
    ob.close()

    class FlipOneByte:
        def __init__(self, inner, times):
            self.inner, self.left = inner, times

        def put_chunk(self, uuid, offset, data):
            if self.left and offset == 0 and data:
                self.left -= 1
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            return self.inner.put_chunk(uuid, offset, data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    c = _client(world)
    c.transport = FlipOneByte(c.transport, damaged)
    r = c.sync()
    assert r.upload_refused == 0
    ob = Outbox(world.device_dir / "outbox.db")
    assert ob.refused() == []
    assert [p["uuid"] for p in ob.pending()] == ([] if damaged == 1 else [uid])
    ob.close()
    if damaged == 2:
        assert world.hub.store.upload(uid)["blob_complete"] == 0
        assert _client(world).sync().upload_refused == 0
    assert world.hub.store.upload(uid)["blob_complete"] == 1
    assert blob_path(world.hub, uid).read_bytes() == photo.read_bytes()


def test_an_empty_chunk_finishes_a_full_photo_and_leaves_no_empty_file(world):
    import hashlib

    from sync.hub.uploads import blob_path, partial_path, receive_chunk, receive_record

    dev = _device(world)
    data = part_image(4, noise=20.0, size=120)
    body = dict(_body(kind="photo", payload={"part_number": "P1"}),
                blob={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    receive_record(world.hub, dev, body)
    st = receive_chunk(world.hub, dev, body["uuid"], 0, b"")  # nothing to append: no 0-byte .part left behind
    assert st["blob_offset"] == 0 and not partial_path(world.hub, body["uuid"]).exists()
    partial_path(world.hub, body["uuid"]).write_bytes(data)  # every byte arrived, the hub stopped before finishing
    st = receive_chunk(world.hub, dev, body["uuid"], len(data), b"")  # the tablet's closing empty chunk
    assert st["blob_complete"] and blob_path(world.hub, body["uuid"]).read_bytes() == data


def test_chunks_of_one_upload_are_serialised_and_other_uploads_are_not_held_up(world, monkeypatch):
    """Per-upload locks (a global lock made one tablet's parallel chunks and 64 MiB checksums hold up the others)."""
    import threading
    import time

    from sync.hub import uploads
    from sync.hub.uploads import OffsetMismatch, receive_chunk, receive_records

    dev = _device(world)
    a, b = (_body(kind="photo", payload={"part_number": "P1"}) for _ in range(2))
    for r in (a, b):
        r["blob"] = {"size": 8, "sha256": "0" * 64}
    receive_records(world.hub, dev, [a, b])
    real = uploads._receive_chunk
    entered = threading.Event()

    def slow(hub, device, uuid, offset, data):
        if uuid == a["uuid"]:
            entered.set()
            time.sleep(0.5)
        return real(hub, device, uuid, offset, data)

    monkeypatch.setattr(uploads, "_receive_chunk", slow)
    results: list = []

    def send(uuid):
        try:
            results.append(receive_chunk(world.hub, dev, uuid, 0, b"1234"))
        except OffsetMismatch as exc:
            results.append(exc)

    t1, t2 = threading.Thread(target=send, args=(a["uuid"],)), threading.Thread(target=send, args=(a["uuid"],))
    t1.start()
    entered.wait(5)
    t2.start()
    t0 = time.perf_counter()
    other = receive_chunk(world.hub, dev, b["uuid"], 0, b"1234")  # another upload: not behind a's lock
    assert time.perf_counter() - t0 < 0.3 and other["blob_offset"] == 4
    t1.join()
    t2.join()
    assert sum(isinstance(r, OffsetMismatch) for r in results) == 1  # the same offset twice: one appended
    assert uploads.partial_path(world.hub, a["uuid"]).read_bytes() == b"1234"

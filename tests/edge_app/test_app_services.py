"""The Kivy-free service facade: capture store, app state, result mapping, outbox, catalogue."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app import spotcheck
from edge_app.errors import ImageError, InputError, UsageError
from edge_app.services import (CaptureStore, DeviceServices, IdentifyOutcome, Match, StateStore, confidence_words,
                               detect_look_alikes, local_time, refine_by_size, validate_crop)

ROOT = Path(__file__).resolve().parents[2]


def photo(path: Path, size=(64, 48), colour=(200, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_capture_is_on_disk_at_once_and_never_overwritten(tmp_path) -> None:
    store = CaptureStore(tmp_path / "captures")
    src = photo(tmp_path / "p.jpg")
    a = store.add_file(src)
    b = store.add_file(src)
    assert a.capture_id != b.capture_id and Path(a.path).read_bytes() == src.read_bytes()
    assert json.loads((store.root / f"{a.capture_id}.json").read_text())["source"] == "file"
    assert not list(store.root.glob(".*.tmp"))  # atomic: no temp files left
    assert store.get(a.capture_id) == a and len(store.all()) == 2


def test_bad_capture_names_the_file_and_stores_nothing(tmp_path) -> None:
    store = CaptureStore(tmp_path / "captures")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        store.add_file(bad)
    with pytest.raises(ImageError):
        store.add_bytes(b"")
    assert list(store.root.iterdir()) == []


def test_camera_writes_into_the_store_then_adopt(tmp_path) -> None:
    store = CaptureStore(tmp_path / "captures")
    cid, path = store.new_path(".jpg")
    photo(path)
    cap = store.adopt(cid, path)
    assert store.get(cid).path == str(path) and cap.source == "camera"


def test_a_photo_the_camera_took_while_the_app_was_stopped_is_recovered(tmp_path) -> None:
    """Android often stops an app while the camera app is in front: the photo was written but partlens never got
    it back. Before, it was neither shown nor ever deleted; now the next start adopts it, and files nobody owns
    (a QR-scan photo, a temp file of a killed write) are deleted once they are an hour old."""
    import os as _os
    import time as _time

    store = CaptureStore(tmp_path / "captures")
    cid, path = store.camera_path(".jpg")
    photo(path)  # the camera wrote it; the callback never came
    empty_cid, empty_path = store.camera_path(".jpg")  # the engineer backed out: nothing written
    bad_cid, bad_path = store.camera_path(".jpg")
    bad_path.write_bytes(b"\xff\xd8 cut")  # the camera was killed mid-write
    ok_cid, ok_path = store.camera_path(".jpg")
    photo(ok_path)
    store.adopt(ok_cid, ok_path)  # the normal way: the callback came
    assert not (store.root / f"{ok_cid}.camera").exists()
    got = store.recover_camera()
    assert [c.capture_id for c in got] == [cid] and store.get(cid).source == "camera"
    assert not list(store.root.glob("*.camera")) and store.recover_camera() == []
    # orphans: the unusable camera file, a QR-scan photo, a temp file; young ones are kept (may be in use)
    qr_cid, qr_path = store.new_path(".jpg")
    photo(qr_path)
    tmp = store.root / f".{cid}.json.abc123.tmp"
    tmp.write_text("{")
    assert store.prune_orphans() == 0
    old = _time.time() - 7200
    for p in (bad_path, qr_path, tmp, path, ok_path):
        _os.utime(p, (old, old))
    assert store.prune_orphans() == 3  # the cut camera file, the QR photo, the temp file; never a capture's photo
    assert path.is_file() and ok_path.is_file() and not bad_path.exists() and not qr_path.exists()
    assert not tmp.exists() and not empty_path.exists()
    assert store.get(cid).path == str(path) and store.get(ok_cid).path == str(ok_path)


def test_crop_is_saved_and_applied(tmp_path) -> None:
    store = CaptureStore(tmp_path / "c")
    img = Image.new("RGB", (100, 50), (0, 0, 0))
    img.paste((255, 255, 255), (50, 0, 100, 50))  # right half white
    img.save(tmp_path / "half.png")
    cap = store.set_crop(store.add_file(tmp_path / "half.png"), (0.5, 0.0, 1.0, 1.0))
    assert store.get(cap.capture_id).crop == (0.5, 0.0, 1.0, 1.0)
    out = store.cropped_image(cap)
    assert out.size == (50, 50) and np.asarray(out).min() == 255
    exported = Image.open(store.export_cropped(cap))
    assert exported.size == (50, 50)
    for bad in [(0.5, 0, 0.4, 1), (0, 0, 1.2, 1), (0, 0, 1)]:
        with pytest.raises(UsageError):
            validate_crop(bad)


def test_state_roundtrip_and_damaged_state_kept_aside(tmp_path) -> None:
    st = StateStore(tmp_path / "app_state.json")
    assert st.load() == {}
    st.save({"screen": "results", "captures": []})
    assert st.load()["screen"] == "results"
    st.path.write_text("{ half written")
    assert st.load() == {}
    assert (tmp_path / "app_state.json.bad").read_text() == "{ half written"


def m(pn, score, size=None, group=None) -> Match:
    return Match(pn, pn, score, confidence_words(score), size_mm=size, look_alike_group=group)


def test_confidence_words_and_look_alikes() -> None:
    assert [confidence_words(x) for x in (0.95, 0.7, 0.4, 0.1)] == ["very likely", "likely", "possible", "unlikely"]
    pair = [m("A", 0.9, 47, "g"), m("B", 0.85, 52, "g"), m("C", 0.2)]
    assert detect_look_alikes(pair)
    assert not detect_look_alikes([m("A", 0.9, 47, "g"), m("B", 0.85, 47, "g")])  # same size: not a size question
    assert not detect_look_alikes([m("A", 0.9, 47, "g"), m("B", 0.2, 52, "g")])  # far apart in score


def test_measurement_reranks_look_alikes() -> None:
    out = IdentifyOutcome([m("A", 0.9, 47, "g"), m("B", 0.85, 52, "g"), m("C", 0.2, 52)], True, True)
    r = refine_by_size(out, 51.5)
    assert [x.part_number for x in r.matches] == ["B", "A", "C"] and not r.look_alike and r.measured_mm == 51.5
    assert refine_by_size(out, 80).look_alike  # nothing fits: still ask
    with pytest.raises(UsageError):
        refine_by_size(out, -3)
    assert IdentifyOutcome.from_dict(r.to_dict()) == r


# --------------------------------------------------------------------------- real runtime pieces
@pytest.fixture
def device(tmp_path):
    svc = DeviceServices(tmp_path / "device", site="Quay A")
    (tmp_path / "device" / "images").mkdir()
    img = photo(tmp_path / "device" / "images" / "a.jpg")
    with svc.catalogue.transaction():
        svc.catalogue.set_meta("hub_time", "2026-11-21T22:00:00+00:00")
        svc.catalogue.set_meta("catalogue_version", 3)
        svc.catalogue.upsert_parts([
            {"part_number": "BRG-1", "name": "Bearing 6204", "category": "bearings", "manufacturer": "SKF",
             "description": "deep groove", "size_mm": 47.0, "look_alike_group": "b", "version": 1},
            {"part_number": "BRG-2", "name": "Bearing 6205", "category": "bearings", "manufacturer": "SKF",
             "description": "deep groove", "size_mm": 52.0, "look_alike_group": "b", "version": 1},
            {"part_number": "FUS-1", "name": "Fuse 32 A", "category": "electrical", "manufacturer": "X",
             "description": "", "size_mm": 78.0, "look_alike_group": None, "version": 1}])
        svc.catalogue.upsert_inventory([
            {"part_number": "BRG-1", "site": "Quay A", "stock": 4, "bin": "A-1", "as_of": "2026-11-21T22:00:00+00:00"},
            {"part_number": "BRG-2", "site": "Quay A", "stock": 0, "bin": "A-2", "as_of": "2026-11-21T22:00:00+00:00"},
            {"part_number": "FUS-1", "site": "Quay B", "stock": 9, "bin": "E-1", "as_of": "2026-11-21T22:00:00+00:00"}])
        svc.catalogue.upsert_images([{"image_id": "i1", "part_number": "BRG-1", "path": "images/a.jpg",
                                      "kind": "catalogue", "version": 1}])
    assert img.is_file()
    yield svc
    svc.close()


def test_device_catalogue_part_and_search(device) -> None:
    part = device.part("BRG-1")
    assert part["images"][0]["file"].endswith("images/a.jpg") and part["inventory"][0]["stock"] == 4
    with pytest.raises(InputError, match="NOPE"):
        device.part("NOPE")
    assert [r["part_number"] for r in device.search(text="bearing")] == ["BRG-1", "BRG-2"]
    assert [r["part_number"] for r in device.search(in_stock=True)] == ["BRG-1"]  # stock at this site only
    assert device.categories() == ["bearings", "electrical"]


def test_runtime_result_maps_to_words_stock_and_look_alikes(device) -> None:
    from edge_app.runtime.identify import IdentifyResult, PartMatch

    def pm(rank, pn, sim, conf, size, stock, bin_):
        return PartMatch(rank=rank, part_number=pn, name=None, category="bearings", similarity=sim,
                         confidence=conf, best_image_id="i1" if pn == "BRG-1" else None, size_mm=size,
                         look_alike_group="b", stock=stock, bin=bin_, stock_as_of="2026-11-21T22:00:00+00:00",
                         site="Quay A")

    res = IdentifyResult(status="match", matches=[pm(1, "BRG-1", 0.91, 0.88, 47.0, 4, "A-1"),
                                                  pm(2, "BRG-2", 0.89, None, 52.0, 0, "A-2")],
                         confidence=0.88, threshold=0.5, calibrated=True, needs_scale_photo=True,
                         look_alike={"group": "b"}, needs_detail_photo=False, views=2, skipped=[], bundle_id="bnd-1",
                         catalogue_version=3, hub_time="2026-11-21T22:00:00+00:00", site="Quay A", filters={},
                         timings_ms={})
    out = device.outcome_from_result(res, ["c1", "c2"])
    assert out.confident and out.look_alike and out.bundle_id == "bnd-1" and out.capture_ids == ["c1", "c2"]
    assert out.detail_look_alikes == []
    # same-size look-alikes: no measurement prompt, the parts a close-up must tell apart instead
    from dataclasses import replace

    same = replace(res, needs_scale_photo=False, needs_detail_photo=True,
                   look_alike={"group": "b", "part_numbers": ["BRG-1", "BRG-2"], "differ_by": "detail"})
    out = device.outcome_from_result(same, ["c1"])
    assert not out.look_alike and out.detail_look_alikes == ["BRG-1", "BRG-2"]
    assert IdentifyOutcome.from_dict(out.to_dict()).detail_look_alikes == ["BRG-1", "BRG-2"]
    a, b = out.matches
    assert (a.words, a.stock, a.bin, a.as_of) == ("very likely", 4, "A-1", "2026-11-21T22:00:00+00:00")
    assert a.thumbnail and a.thumbnail.endswith("a.jpg") and b.thumbnail is None
    # the words follow the answer (an audit of the app: "No confident match" over "Match: likely"): below the
    # bundle's threshold at most "possible", above it at least "likely"
    first = res.matches[0]
    below = replace(res, status="no_confident_match", confidence=0.80, threshold=0.9,
                    matches=[replace(first, confidence=0.80), res.matches[1]])
    assert [x.words for x in device.outcome_from_result(below, ["c1"]).matches] == ["possible", "possible"]
    above = replace(res, confidence=0.30, threshold=0.25, matches=[replace(first, confidence=0.30), res.matches[1]])
    assert device.outcome_from_result(above, ["c1"]).matches[0].words == "likely"
    assert b.words == "possible" and b.name == "BRG-2"


def test_records_about_a_part_not_in_the_catalogue_are_refused(device, tmp_path) -> None:
    cap = device.captures.add_file(photo(tmp_path / "v.jpg"))
    for call in (lambda: device.add_photos("NOPE", [cap]), lambda: device.send_feedback("NOPE", "wrong", [cap])):
        with pytest.raises(InputError, match="NOPE is not in the catalogue"):
            call()
    assert device.outbox.pending() == []


def test_feedback_photos_and_unknown_part_go_to_the_real_outbox(device, tmp_path) -> None:
    caps = [device.captures.add_file(photo(tmp_path / f"v{i}.jpg", colour=(i * 50, 0, 0))) for i in range(2)]
    out = IdentifyOutcome([m("BRG-1", 0.9)], True, bundle_id="bnd-1", identification_id="ident-1")
    device.send_feedback("BRG-1", "correct", caps, out)
    device.add_photos("BRG-1", caps[:1])
    uid = device.record_unknown(caps, "spreader twistlock", out)
    rows = device.outbox.pending()
    assert [r["kind"] for r in rows] == ["feedback", "photo", "unknown_part", "photo"]
    assert rows[0]["payload"]["verdict"] == "correct" and rows[0]["payload"]["bundle_id"] == "bnd-1"
    assert rows[0]["payload"]["identification_id"] == "ident-1"  # the hub joins it to that identification
    assert all(Path(r["blob_path"]).is_file() for r in rows)
    assert rows[3]["payload"]["unknown_part"] == uid and device.pending_uploads() == 4
    with pytest.raises(UsageError):
        device.send_feedback("BRG-1", "maybe", caps)
    with pytest.raises(UsageError):
        device.record_unknown([], "")
    st = device.sync_status()
    assert (st.refused_uploads, st.refused_reason) == (0, None)
    device.outbox.mark_refused(rows[0]["uuid"], "upload uuid belongs to another device")
    device.outbox.mark_refused(rows[2]["uuid"], "payload over the hub's limit")
    st = device.sync_status()  # the sync screen shows how many and the latest reason, for the hub admin
    assert st.refused_uploads == 2 and st.refused_reason == "payload over the hub's limit"


def test_old_captures_are_pruned_but_never_a_pending_upload_or_the_one_on_screen(device, tmp_path) -> None:
    import datetime as dt

    caps = [device.captures.add_file(photo(tmp_path / f"p{i}.jpg", colour=(i * 40, 9, 9))) for i in range(4)]
    device.add_photos("BRG-1", caps[:2])  # two uploads queued ...
    device.outbox.mark_uploaded(device.outbox.pending()[1]["uuid"])  # ... and the second one sent
    device.state.save({"captures": [caps[2].to_dict()]})  # the third is on screen
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    assert device.prune_captures(max_age_days=14, now=dt.datetime.now(dt.timezone.utc)) == \
        {"removed_files": 0, "kept": 4}  # nothing is old yet
    res = device.prune_captures(max_age_days=14, now=later)
    root = device.captures.root
    # pending upload: the original goes, its cropped copy (the upload) stays and is still sent
    assert not Path(caps[0].path).exists() and len(list(root.glob(f"{caps[0].capture_id}.*.crop.jpg"))) == 1
    assert all(Path(r["blob_path"]).is_file() for r in device.outbox.pending())
    # uploaded: everything goes; on screen: everything stays; not shared with anybody: goes
    assert not list(root.glob(f"{caps[1].capture_id}*")) and not list(root.glob(f"{caps[3].capture_id}*"))
    assert device.captures.get(caps[2].capture_id).path == caps[2].path
    assert res == {"removed_files": 3 + 4 + 3, "kept": 1}  # photo, sidecar, screen copy (+ upload copy)
    # once that upload is sent, the next start removes its kept copy too
    device.outbox.mark_uploaded(device.outbox.pending()[0]["uuid"])
    assert device.prune_captures(max_age_days=14, now=later)["removed_files"] == 1
    assert not list(root.glob(f"{caps[0].capture_id}*"))


def test_each_record_keeps_its_own_copy_of_the_photo(device, tmp_path) -> None:
    """Cutting the same photo again for another record must not change the copy an earlier record uploads: the
    hub registered that copy's size and sha256 (before, one shared ``<id>.crop.jpg`` was rewritten, leaving the hub
    with a photo that never completed, or refusing every chunk and blocking the outbox behind it)."""
    cap = device.captures.add_file(photo(tmp_path / "p.jpg", size=(200, 120)))
    device.add_photos("BRG-1", [cap])
    first = Path(device.outbox.pending()[0]["blob_path"])
    before = first.read_bytes()
    cap = device.captures.set_crop(cap, (0.1, 0.1, 0.5, 0.6))
    device.send_feedback("BRG-1", "correct", [cap])
    second = Path(device.outbox.pending()[1]["blob_path"])
    assert second != first and first.read_bytes() == before and second.read_bytes() != before
    from PIL import Image as _Image

    assert _Image.open(first).size == (200, 120) and _Image.open(second).size == (80, 60)


def test_sync_status_before_enrolment_and_bad_enrol_code(device) -> None:
    st = device.sync_status()
    assert not st.enrolled and st.catalogue_version == 3 and st.pending_uploads == 0 and st.last_sync is None
    with pytest.raises(UsageError):
        device.enrol("   ")
    with pytest.raises(UsageError):
        device.enrol("not json")


def test_a_damaged_enrolment_is_a_clear_error_on_the_sync_screen(device) -> None:
    (device.data_dir / "device.json").write_text("[]")  # was an AttributeError from the status code
    with pytest.raises(InputError, match="enrol this device again"):
        device.sync_status()


def test_sync_status_says_when_a_sync_is_running(device) -> None:
    from sync.lock import device_lock

    assert not device.sync_status().sync_running
    with device_lock(device.data_dir, "nightly sync"):  # e.g. the nightly service, mid-sync
        assert device.sync_status().sync_running
    assert not device.sync_status().sync_running


def test_sync_status_shows_the_nightly_attempt_and_its_last_success(device) -> None:
    assert device.sync_status().nightly is None
    (device.data_dir / "last_sync.json").write_text(json.dumps({"at": "2026-11-20T10:00:00+00:00"}))
    (device.data_dir / "sync_status.json").write_text(json.dumps({
        "at": "2026-11-22T01:30:00+01:00", "outcome": "skipped", "reason": "not docked", "window": "01:00-05:00",
        "next_at": "2026-11-22T02:00:00+01:00", "last_success": "2026-11-21T01:00:00+01:00"}))
    st = device.sync_status()
    assert st.last_sync == "2026-11-21T01:00:00+01:00"  # the nightly success is newer than the manual one
    # on the tablet's clock, as "Last sync" (was the raw ISO text)
    assert st.nightly == (f"skipped at {local_time('2026-11-22T01:30:00+01:00')} (not docked); next attempt "
                          f"{local_time('2026-11-22T02:00:00+01:00')}, window 01:00-05:00")
    (device.data_dir / "last_sync.json").write_text(json.dumps({"at": "2026-11-22T09:00:00+00:00"}))
    assert device.sync_status().last_sync == "2026-11-22T09:00:00+00:00"
    # a nightly success recorded while the clock said 2040 (since put right) does not hide the real last sync
    (device.data_dir / "sync_status.json").write_text(json.dumps({
        "at": "2040-12-08T01:30:00+01:00", "outcome": "synced", "reason": "ok", "window": "01:00-05:00",
        "next_at": "2040-12-09T01:00:00+01:00", "last_success": "2040-12-08T01:30:00+01:00"}))
    assert device.sync_status().last_sync == "2026-11-22T09:00:00+00:00"


def test_identify_without_a_bundle_is_a_clear_error(device, tmp_path) -> None:
    cap = device.captures.add_file(photo(tmp_path / "q.jpg"))
    with pytest.raises(InputError, match="no model bundle installed"):
        device.identify([cap])


def test_services_and_app_commands_do_not_import_kivy() -> None:
    code = ("import sys, edge_app.services, edge_app.app.commands, edge_app.app.theme, edge_app.app.android; "
            "print('kivy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_app_command_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "edge_app.cli", "app", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--data-dir" in out.stdout and "--size" in out.stdout


def test_crop_for_identification_decodes_a_big_jpeg_at_reduced_size(tmp_path) -> None:
    """A 12 MP photo is not decoded at full size for the model, yet the crop keeps the pixels it needs."""
    store = CaptureStore(tmp_path / "c")
    big = Image.new("RGB", (4000, 3000), (30, 30, 30))
    big.paste((250, 250, 250), (2000, 0, 4000, 3000))  # right half white
    big.save(tmp_path / "big.jpg", quality=90)
    cap = store.set_crop(store.add_file(tmp_path / "big.jpg"), (0.5, 0.0, 1.0, 1.0))
    small = store.cropped_image(cap, draft_size=(320, 320))
    assert 320 <= small.size[0] < 2000 and 320 <= small.size[1] < 3000  # DCT-scaled, still >= the need
    assert np.asarray(small).mean() > 240  # the same (white) region
    full = store.cropped_image(cap)  # uploads keep full resolution
    assert full.size == (2000, 3000)


def test_each_identification_queues_a_usage_event_for_the_hub(device, tmp_path, monkeypatch, caplog) -> None:
    """The hub's field statistics need to know what tablets answered; a broken outbox never costs the answer."""
    from types import SimpleNamespace

    from edge_app.runtime.identify import IdentifyResult, PartMatch

    match = PartMatch(rank=1, part_number="BRG-1", name=None, category="bearings", similarity=0.91, confidence=0.88,
                      best_image_id="i1", size_mm=47.0, look_alike_group="b", stock=4, bin="A-1",
                      stock_as_of=None, site="Quay A")
    res = IdentifyResult(status="match", matches=[match], confidence=0.8812345, threshold=0.5, calibrated=True,
                         needs_scale_photo=False, look_alike=None, needs_detail_photo=False, views=2, skipped=[],
                         bundle_id="bnd-7", catalogue_version=3, hub_time=None, site="Quay A", filters={},
                         timings_ms={})
    device._identifier = SimpleNamespace(identify=lambda images, site: res, spec=None)
    caps = [device.captures.add_file(photo(tmp_path / f"v{i}.jpg", colour=(i * 60, 0, 0))) for i in range(2)]
    out = device.identify(caps)
    assert out.best.part_number == "BRG-1"
    (row,) = device.outbox.pending()
    assert row["kind"] == "usage" and row["blob_path"] is None  # no photo leaves the tablet for statistics
    p = row["payload"]
    assert (p["event"], p["bundle_id"], p["status"], p["confidence"], p["top"], p["views"]) == (
        "identify", "bnd-7", "match", 0.8812, ["BRG-1"], 2)
    assert p["capture_ids"] == [c.capture_id for c in caps] and p["site"] == "Quay A" and p["ms"] >= 0
    # the screen's "waiting to upload" counts what the engineer queued, not the automatic events
    assert device.pending_uploads() == 0 and device.outbox.count() == 1
    device.send_feedback("BRG-1", "correct", caps, out)
    assert device.pending_uploads() == 1 and device.outbox.count(kinds=("usage",)) == 1
    assert device.outbox.count(kinds=()) == 0

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(device.outbox, "add", full_disk)
    (device.data_dir / "device.json").write_text(json.dumps({"hub": "http://h", "token": "t",
                                                             "policy": {"spot_check_rate": 1.0}}))
    out = device.identify(caps)
    assert out.best.part_number == "BRG-1"  # the answer still reaches the screen
    assert "No space left on device" in caplog.text
    assert not out.spot_check  # not asked: the hub could not know the question was asked


def test_sync_status_says_whether_the_hub_connection_is_encrypted(device) -> None:
    assert device.sync_status().connection is None  # not enrolled
    cases = [({"hub": "http://10.0.0.5:8765"}, "NOT encrypted"),
             ({"hub": "https://hub.example"}, "encrypted"),
             ({"hub": "https://10.0.0.5:8765", "tls_sha256": "ab" * 32}, "encrypted, hub certificate pinned")]
    for enrolment, words in cases:
        (device.data_dir / "device.json").write_text(json.dumps({**enrolment, "device": "t", "site": "s",
                                                                 "token": "x"}))
        st = device.sync_status()
        assert st.enrolled and st.connection.startswith(words) and (words != "encrypted" or "NOT" not in st.connection)


# --------------------------------------------------------------------------- spot checks
def _fake_identifier(device, statuses):
    """The runtime stubbed: each call answers with the next status (match / no_confident_match)."""
    from types import SimpleNamespace

    from edge_app.runtime.identify import IdentifyResult, PartMatch

    seq = iter(statuses)

    def identify(images, site):
        status = next(seq)
        ms = [PartMatch(rank=i + 1, part_number=pn, name=None, category="bearings", similarity=0.9 - i / 10,
                        confidence=0.9 if i == 0 else None, best_image_id="i1", size_mm=None,
                        look_alike_group=None, stock=1, bin="A", stock_as_of=None, site="Quay A")
              for i, pn in enumerate(["BRG-2", "BRG-1", "FUS-1"])]
        return IdentifyResult(status=status, matches=ms, confidence=0.9, threshold=0.5, calibrated=True,
                              needs_scale_photo=False, look_alike=None, needs_detail_photo=False, views=1,
                              skipped=[], bundle_id="bnd-7", catalogue_version=3, hub_time=None, site="Quay A",
                              filters={}, timings_ms={})

    device._identifier = SimpleNamespace(identify=identify, spec=None)


def _set_rate(device, rate) -> None:
    (device.data_dir / "device.json").write_text(json.dumps({"hub": "http://h", "token": "t",
                                                             "policy": {"spot_check_rate": rate}}))


def test_spot_checks_are_drawn_before_the_answer_one_draw_per_identification(tmp_path) -> None:
    import random

    svc = DeviceServices(tmp_path / "dev", site="Quay A", spot_rng=random.Random(7))
    try:
        cap = svc.captures.add_file(photo(tmp_path / "p.jpg"))
        statuses = ["match", "no_confident_match"] * 100
        _fake_identifier(svc, statuses)
        assert spotcheck.device_rate(svc.data_dir) == 0.0  # never synced: no policy, no spot checks
        _set_rate(svc, 0.3)
        flags = [svc.identify([cap]).spot_check for _ in statuses]
        ref = random.Random(7)
        # exactly the seeded draws in order, whatever the model answered: the sample cannot follow the outcome
        assert flags == [ref.random() < 0.3 for _ in statuses]
        assert 40 <= sum(flags) <= 80
        events = [r["payload"] for r in svc.outbox.pending() if r["payload"]["event"] == "identify"]
        assert [e["spot_check"] for e in events] == flags
    finally:
        svc.close()


def test_rate_zero_draws_nothing_and_rate_one_asks_every_time(device, tmp_path) -> None:
    class NoDraws:
        def random(self):
            raise AssertionError("no spot check may be drawn at rate 0")

    device._spot_rng = NoDraws()
    cap = device.captures.add_file(photo(tmp_path / "p.jpg"))
    _fake_identifier(device, ["match", "match"])
    _set_rate(device, 0.0)
    assert device.identify([cap]).spot_check is False
    _set_rate(device, 1.0)
    import random

    device._spot_rng = random.Random(0)
    out = device.identify([cap])
    assert out.spot_check and out.spot_check_pending and out.model_top == ["BRG-2", "BRG-1", "FUS-1"]
    assert IdentifyOutcome.from_dict(json.loads(json.dumps(out.to_dict()))) == out  # survives an app restart
    (device.data_dir / "device.json").write_text("{not json")
    assert spotcheck.device_rate(device.data_dir) == 0.0


def test_spot_check_answers_go_to_the_outbox_once(device, tmp_path) -> None:
    import random

    device._spot_rng = random.Random(0)
    _set_rate(device, 1.0)
    cap = device.captures.add_file(photo(tmp_path / "p.jpg"))
    _fake_identifier(device, ["match", "no_confident_match", "match", "match", "match", "match"])
    out = device.identify([cap])
    # the engineer browsed the catalogue and names a part that is not a candidate: still an answer
    with pytest.raises(InputError):
        device.answer_spot_check(out, "NOPE-1")
    assert out.spot_check_pending  # a refused answer leaves the question open
    with pytest.raises(UsageError):
        device.answer_spot_check(out, "BRG-1", skipped=True)
    device.answer_spot_check(out, "BRG-1")
    with pytest.raises(UsageError, match="already answered"):
        device.answer_spot_check(out, None)
    ans = [r["payload"] for r in device.outbox.pending() if r["payload"]["event"] == "spot_check"]
    assert ans == [{"event": "spot_check", "result": "answered", "answer": "BRG-1",
                    "top": ["BRG-2", "BRG-1", "FUS-1"], "status": "match", "bundle_id": "bnd-7",
                    "capture_ids": [cap.capture_id], "views": 1, "site": "Quay A",
                    "identification_id": out.identification_id}]
    ident = [r["payload"] for r in device.outbox.pending() if r["payload"]["event"] == "identify"]
    assert ident[0]["identification_id"] == out.identification_id and len(out.identification_id) == 32
    # the app was stopped after queueing the answer but before saving that: restarted, the engineer answers
    # again; the same record (same UUID, which the hub also keeps once), the first answer stands
    restored = IdentifyOutcome.from_dict(dict(out.to_dict(), spot_check_done=False))
    assert device.answer_spot_check(restored, "FUS-1") == spotcheck.answer_uuid(out) and restored.spot_check_done
    ans = [r["payload"] for r in device.outbox.pending() if r["payload"].get("event") == "spot_check"]
    assert [a["answer"] for a in ans] == ["BRG-1"]
    assert device.pending_uploads() == 0  # an automatic event, not something the engineer waits for

    # answered on the results screen: the named part also goes up as "this is the part" with the photo (a
    # labelled field photo drawn at random); answering again after a restart queues neither twice
    with_photo = device.identify([cap])
    device.answer_spot_check(with_photo, "FUS-1", captures=[cap])
    again = IdentifyOutcome.from_dict(dict(with_photo.to_dict(), spot_check_done=False))
    device.answer_spot_check(again, "FUS-1", captures=[cap])
    fbs = [r for r in device.outbox.pending() if r["kind"] == "feedback"]
    assert len(fbs) == 1 and fbs[0]["payload"]["spot_check"] is True and fbs[0]["payload"]["part_number"] == "FUS-1"
    assert fbs[0]["payload"]["candidates"] == ["BRG-2", "BRG-1", "FUS-1"] and Path(fbs[0]["blob_path"]).is_file()
    none = device.identify([cap])
    device.answer_spot_check(none, None, captures=[cap])  # "none of these" names no part: no feedback
    assert len([r for r in device.outbox.pending() if r["kind"] == "feedback"]) == 1
    skip = device.identify([cap])
    device.answer_spot_check(skip, None, skipped=True)
    results = [(r["payload"]["result"], r["payload"]["status"]) for r in device.outbox.pending()
               if r["payload"].get("event") == "spot_check"]
    assert results == [("answered", "match"), ("answered", "no_confident_match"), ("none_of_these", "match"),
                       ("skipped", "match")]

    # "this is the part" on a picked identification answers it too; "not this one" does not
    fb = device.identify([cap])
    device.send_feedback("BRG-2", "wrong", [cap], fb)
    assert fb.spot_check_pending
    device.send_feedback("BRG-1", "correct", [cap], fb)
    assert not fb.spot_check_pending
    fbs = [r["payload"] for r in device.outbox.pending() if r["kind"] == "feedback"]
    assert [f.get("spot_check") for f in fbs[-2:]] == [None, True]  # "not this one" is no answer; this one is
    last = [r["payload"] for r in device.outbox.pending() if r["payload"].get("event") == "spot_check"][-1]
    assert (last["result"], last["answer"]) == ("answered", "BRG-1")
    unpicked = replace(fb, spot_check=False, spot_check_done=False)
    with pytest.raises(UsageError, match="not picked"):
        device.answer_spot_check(unpicked, "BRG-1")
    # "this is the part" again after a restart that lost the saved state: its feedback and the answer go once
    # (before, the feedback had a random UUID: a second labelled spot-check photo reached the hub)
    n_before = device.outbox.count(pending_only=False)
    device.send_feedback("BRG-1", "correct", [cap], IdentifyOutcome.from_dict(dict(fb.to_dict(),
                                                                                  spot_check_done=False)))
    assert device.outbox.count(pending_only=False) == n_before
    # a confirmation without a photo still counts as a confirmation (and as the answer)
    bare = device.identify([cap])
    device.send_feedback("BRG-1", "correct", [], bare)
    kinds = [r["kind"] for r in device.outbox.pending()][-2:]
    assert sorted(kinds) == ["feedback", "usage"] and not bare.spot_check_pending


def test_records_of_one_action_are_queued_together_or_not_at_all(device, tmp_path, monkeypatch) -> None:
    """An unknown-part report and its other views, or several photos added at once, are one transaction: the hub
    never gets the report without some of its views because the app was stopped in between."""
    caps = [device.captures.add_file(photo(tmp_path / f"u{i}.jpg", colour=(9, i * 60, 9))) for i in range(3)]
    real = device.captures.export_cropped
    calls = []

    def dies_on_third(cap):
        calls.append(cap.capture_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cap)

    monkeypatch.setattr(device.captures, "export_cropped", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        device.record_unknown(caps, "winch brake pad")
    assert device.outbox.count(pending_only=False) == 0
    monkeypatch.setattr(device.captures, "export_cropped", real)
    uid = device.record_unknown(caps, "winch brake pad")
    rows = device.outbox.pending()
    assert [r["kind"] for r in rows] == ["unknown_part", "photo", "photo"]
    assert all(r["payload"]["unknown_part"] == uid for r in rows[1:])
    with pytest.raises(UsageError):  # a bad record in a batch: none of it is queued
        device.outbox.add_many([("photo", {"x": 1}, None, None), ("bogus", {}, None, None)])
    assert device.outbox.count(pending_only=False) == 3


def test_last_sync_is_shown_on_the_tablets_clock() -> None:
    import datetime as dt

    from edge_app.services import local_time

    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert local_time("2026-12-06T23:56:10+00:00", plus2) == "2026-12-07 01:56"
    assert local_time("2026-12-06T23:56:10", plus2) == "2026-12-06 23:56"  # no zone: shown as written
    assert local_time(None) == "unknown" and local_time("garbled") == "garbled"


def test_a_first_start_killed_while_seeding_seeds_again(tmp_path, monkeypatch) -> None:
    """The starter bundle is copied in at the first start; a start killed in the middle must not leave a
    catalogue without its keyring or bundle (before, the next start saw catalogue.db and skipped seeding)."""
    import os as _os

    from edge_app import services as services_mod
    from edge_app.services import seed_from_starter

    starter = tmp_path / "starter"
    (starter / "bundles" / "v1-abc").mkdir(parents=True)
    (starter / "bundles" / "v1-abc" / "manifest.json").write_text("{}")
    (starter / "keyring.json").write_text('{"keys": {}}')
    (starter / "catalogue.db").write_bytes(b"SQLite format 3\x00" + bytes(100))
    data = tmp_path / "device"
    real = _os.replace
    calls = []

    def dies(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # the bundles are in place, the keyring not yet, the catalogue not yet
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(services_mod.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        seed_from_starter(data, starter)
    monkeypatch.setattr(services_mod.os, "replace", real)
    assert not (data / "catalogue.db").exists() and calls[-1] != "catalogue.db"
    assert seed_from_starter(data, starter)  # the next start seeds again, completely
    assert (data / "keyring.json").read_text() == '{"keys": {}}'
    assert (data / "bundles" / "v1-abc" / "manifest.json").is_file()
    assert (data / "catalogue.db").read_bytes() == (starter / "catalogue.db").read_bytes()
    assert not list(data.glob(".seeding-*"))
    assert not seed_from_starter(data, starter)  # seeded: never again


def test_a_photo_stored_minutes_ago_is_never_pruned(device, tmp_path) -> None:
    """Low storage makes the nightly sync (another process) prune every capture not on screen, at any age. A photo
    the app has just stored, before it saved its state, must survive that."""
    import datetime as dt

    cap = device.captures.add_file(photo(tmp_path / "new.jpg"))
    now = dt.datetime.now(dt.timezone.utc)
    assert device.prune_captures(max_age_days=0, now=now)["removed_files"] == 0
    assert Path(cap.path).is_file()
    later = now + dt.timedelta(minutes=11)
    assert device.prune_captures(max_age_days=0, now=later)["removed_files"] == 3  # photo, record, screen copy


def test_photos_taken_under_a_clock_set_years_ahead_age_and_go_when_storage_is_low(device, tmp_path) -> None:
    """Captures stamped 2040 by a tablet whose clock ran ahead were never pruned after the clock was put right,
    not even when storage ran out (an audit, 23rd session): they are dated when first seen, and age from there."""
    import datetime as dt

    def stamp(cap, when: str) -> None:
        side = device.captures.root / f"{cap.capture_id}.json"
        side.write_text(json.dumps({**json.loads(side.read_text()), "created_at": when}))

    a, b = (device.captures.add_file(photo(tmp_path / f"f{i}.jpg", colour=(9, i * 90, 9))) for i in range(2))
    for cap in (a, b):
        stamp(cap, "2040-12-07T10:00:00+00:00")
    now = dt.datetime(2026, 12, 8, 12, 0, tzinfo=dt.timezone.utc)
    assert device.prune_captures(max_age_days=14, now=now) == {"removed_files": 0, "kept": 2}
    assert device.captures.get(a.capture_id).created_at == now.isoformat(timespec="seconds")  # dated when seen
    assert device.prune_captures(max_age_days=14, now=now + dt.timedelta(days=15))["kept"] == 0
    assert not list(device.captures.root.glob(f"{a.capture_id}*"))
    c = device.captures.add_file(photo(tmp_path / "f2.jpg", colour=(200, 9, 9)))
    stamp(c, "2040-12-07T10:00:00+00:00")
    device.state.save({"captures": []})
    assert device.prune_captures(max_age_days=0, now=now) == {"removed_files": 3, "kept": 0}  # storage low


# -- found by an audit driving the app headless (17th session) -------------------------------------------------
def test_the_screen_copy_of_a_sideways_photo_is_upright_and_small(tmp_path) -> None:
    from edge_app.captures import VIEW_MAX_SIDE

    store = CaptureStore(tmp_path / "captures")
    stored = np.zeros((1000, 4000, 3), dtype=np.uint8)  # 4000 wide as stored, left quarter blue
    stored[:, :1000] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "side.jpg", exif=exif.tobytes())
    cap = store.add_file(tmp_path / "side.jpg")
    view = Path(store.view_path(cap))
    assert view.name == f"{cap.capture_id}.view.jpg" and view.is_file()  # made when the photo was added
    with Image.open(view) as v:
        assert v.size[1] > v.size[0] and max(v.size) <= VIEW_MAX_SIDE  # upright (tall) and small
        top = np.asarray(v.convert("RGB"))[: v.size[1] // 5].reshape(-1, 3).mean(axis=0)
    assert top[2] > 200 and top[0] < 60  # blue on top, as cropped_image sees it
    cut = store.cropped_image(store.set_crop(cap, (0.0, 0.0, 1.0, 0.2)))
    assert np.asarray(cut, dtype=float).reshape(-1, 3).mean(axis=0)[2] > 200
    view.unlink()  # made again on demand (e.g. a capture stored by an older app)
    assert Path(store.view_path(cap)).is_file()
    assert store.remove(cap.capture_id) == 3 and not list(store.root.iterdir())  # photo, sidecar, screen copy


def test_a_double_tap_queues_one_record_and_one_photo_copy(device, tmp_path) -> None:
    caps = [device.captures.add_file(photo(tmp_path / f"d{i}.jpg", colour=(90 + i, 0, 0))) for i in range(2)]
    out = IdentifyOutcome([m("BRG-1", 0.9)], True, bundle_id="bnd-1", identification_id="abc")
    for _ in range(2):
        device.send_feedback("BRG-1", "wrong", caps, out)
        device.add_photos("BRG-1", caps)
    kinds = [r["kind"] for r in device.outbox.pending()]
    assert kinds == ["feedback", "photo", "photo"]
    assert len(list(device.captures.root.glob("*.crop.jpg"))) == 3
    # another answer, another crop or another identification is another record
    device.send_feedback("BRG-1", "correct", caps, out)
    device.send_feedback("BRG-1", "wrong", caps, replace(out, identification_id="def"))
    recut = device.captures.set_crop(caps[0], (0.1, 0.1, 0.9, 0.9))
    device.add_photos("BRG-1", [recut])
    assert len(device.outbox.pending()) == 6


def test_search_folds_case_beyond_ascii(device) -> None:
    with device.catalogue.transaction():
        device.catalogue.upsert_parts([
            {"part_number": "DR-12", "name": "Dichtring Ø12 ÖLPUMPE", "category": "seals", "description": "",
             "version": 1},
            {"part_number": "OR-1", "name": "O-Ring für Ölpumpe", "category": "seals",
             "description": "Straße", "version": 1}])
    for text, want in (("ø12", ["DR-12"]), ("Ø12", ["DR-12"]), ("ölpumpe", ["DR-12", "OR-1"]),
                       ("ÖLPUMPE", ["DR-12", "OR-1"]), ("strasse", ["OR-1"]), ("FÜR", ["OR-1"]),
                       ("o\u0308lpumpe", ["DR-12", "OR-1"])):  # a decomposed ö (NFD) as some keyboards send it
        assert [r["part_number"] for r in device.search(text=text)] == want, text
    assert device.search(text="%") == [] and device.search(text="_") == []  # still literal


def test_a_damaged_catalogue_or_outbox_is_set_aside_at_start_not_a_crash(tmp_path) -> None:
    from edge_app.services import open_device_services

    starter = tmp_path / "starter"
    svc = DeviceServices(starter, site="Quay A")  # a usable starter catalogue
    with svc.catalogue.transaction():
        svc.catalogue.upsert_parts([{"part_number": "S-1", "name": "starter part", "version": 1}])
    svc.close()
    data = tmp_path / "device"
    data.mkdir()
    (data / "catalogue.db").write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(InputError, match="damaged database"):  # the CLI: one line, exit 3
        DeviceServices(data)
    s = open_device_services(data, starter=starter)
    try:
        assert [p["part_number"] for p in s.search()] == ["S-1"]  # not enrolled: seeded again from the starter
        assert "parts catalogue on this tablet was damaged" in " ".join(s.start_notes)
        assert len(list(data.glob("catalogue.db.damaged-*"))) == 1  # kept, never deleted
    finally:
        s.close()
    (data / "outbox.db").write_bytes(b"SQLite format 3\x00" + np.random.default_rng(1).bytes(8000))
    (data / "device.json").write_text("{}")  # enrolled now: a damaged catalogue would wait for the sync
    s = open_device_services(data, starter=starter)
    try:
        assert "upload queue on this tablet was damaged" in " ".join(s.start_notes)
        assert s.pending_uploads() == 0 and len(list(data.glob("outbox.db.damaged-*"))) == 1
    finally:
        s.close()


# -- second app audit (17th session) ----------------------------------------------------------------------------
def test_an_unknown_part_reported_twice_is_one_record(device, tmp_path) -> None:
    caps = [device.captures.add_file(photo(tmp_path / f"u{i}.jpg", colour=(10 + i, 90, 0))) for i in range(2)]
    out = IdentifyOutcome([m("BRG-1", 0.3)], False, bundle_id="bnd-1", identification_id="xyz")
    first = device.record_unknown(caps, "pump seal", out)
    assert device.record_unknown(caps, "", out) == first  # a double tap (the note was cleared after the first)
    rows = device.outbox.pending()
    assert [r["kind"] for r in rows] == ["unknown_part", "photo"] and rows[0]["payload"]["note"] == "pump seal"
    assert len(list(device.captures.root.glob("*.crop.jpg"))) == 2


def test_a_damaged_last_sync_file_is_an_unknown_time_not_a_crash(device) -> None:
    for text in ('{"at": "2026-01-0', "[1, 2]", '{"at": 5}'):
        (device.data_dir / "last_sync.json").write_text(text)
        assert device.sync_status().last_sync is None


def test_a_photo_deleted_behind_the_apps_back(device, tmp_path) -> None:
    cap = device.captures.add_file(photo(tmp_path / "gone.jpg"))
    Path(cap.path).unlink()
    with pytest.raises(InputError, match="no longer on the tablet: remove the view"):
        device.add_photos("BRG-1", [cap])
    out = IdentifyOutcome([m("BRG-1", 0.9)], True, bundle_id="bnd-1", identification_id="q1", spot_check=True)
    device.answer_spot_check(out, "BRG-1", captures=[cap])  # the answer counts without its photo
    kinds = [(r["kind"], r["blob_path"]) for r in device.outbox.pending()]
    assert [k for k, _ in kinds] == ["usage", "feedback"] and kinds[1][1] is None


def test_a_damaged_catalogue_image_is_counted_not_shown_blank(device) -> None:
    img = device.data_dir / "images" / "a.jpg"
    assert device.part("BRG-1")["images"][0]["file"] and device.part("BRG-1")["damaged_images"] == 0
    img.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    part = device.part("BRG-1")
    assert part["images"][0]["file"] is None and part["damaged_images"] == 1


def test_third_app_audit_words_notes_and_a_disk_filling_up(device, tmp_path, monkeypatch) -> None:
    """A runner-up never reads stronger than the best match; a note typed after "Record unknown part" joins the
    record while it is on the tablet (it was dropped without a word); a disk that fills while answering is a
    storage message, not an OSError out of a touch handler (the app closed)."""
    import errno

    from edge_app import captures as captures_mod
    from edge_app.errors import StorageError
    from edge_app.runtime.identify import IdentifyResult, PartMatch

    def pm(rank, pn, sim, conf):
        return PartMatch(rank=rank, part_number=pn, name=None, category="bearings", similarity=sim, confidence=conf,
                         best_image_id=None, size_mm=None, look_alike_group=None, stock=None, bin=None,
                         stock_as_of=None, site="Quay A")

    res = IdentifyResult(status="no_confident_match", matches=[pm(1, "BRG-1", 0.80, 0.20), pm(2, "BRG-2", 0.78, None),
                                                               pm(3, "BRG-3", 0.30, None)],
                         confidence=0.2, threshold=0.5, calibrated=True, needs_scale_photo=False, look_alike=None,
                         needs_detail_photo=False, views=1, skipped=[], bundle_id="bnd-1", catalogue_version=3,
                         hub_time=None, site="Quay A", filters={}, timings_ms={})
    assert [x.words for x in device.outcome_from_result(res, ["c1"]).matches] == ["unlikely"] * 3

    caps = [device.captures.add_file(photo(tmp_path / "u.jpg", colour=(10, 99, 0)))]
    out = IdentifyOutcome([m("BRG-1", 0.9)], False, bundle_id="bnd-1", identification_id="u1")
    uid = device.record_unknown(caps, "", out)
    assert device.record_unknown(caps, "stamped 7731 on the flange", out) == uid  # the same report
    (rec,) = [r for r in device.outbox.pending() if r["kind"] == "unknown_part"]
    assert rec["payload"]["note"] == "stamped 7731 on the flange"
    assert device.record_unknown(caps, "", out) == uid  # an empty note keeps the one given
    device.outbox.mark_uploaded(uid)
    with pytest.raises(UsageError, match="already sent to the hub without this note"):
        device.record_unknown(caps, "another note", out)
    assert device.outbox.payload(uid)["note"] == "stamped 7731 on the flange"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(captures_mod, "atomic_write_bytes", full)
    before = len(device.outbox.pending())
    with pytest.raises(StorageError, match="storage full while storing the photo to upload"):
        device.send_feedback("BRG-1", "correct", caps, replace(out, identification_id="u2"))
    with pytest.raises(StorageError):
        device.record_unknown(caps, "", replace(out, identification_id="u3"))
    assert len(device.outbox.pending()) == before


# -- found by an audit of the Catalogue, Part detail and Sync screens (20th session) ------------------------------
def test_list_rows_say_the_stock_here_and_elsewhere_and_never_read_unknown_as_zero(device) -> None:
    from edge_app.services import stock_count_text, stock_text

    rows = {r["part_number"]: r for r in device.search()}
    assert stock_text(rows["BRG-1"]["inventory"], device.site) == "4 in stock"
    assert stock_text(rows["BRG-2"]["inventory"], device.site) == "out of stock here"
    # stocked only at another site: was "stock unknown" (the row carried this site's stock only)
    assert stock_text(rows["FUS-1"]["inventory"], device.site) == "not stocked here (9 at other sites)"
    here_unknown = [{"site": "Quay A", "stock": None}, {"site": "Quay B", "stock": 2}]
    assert stock_text(here_unknown, "Quay A") == "stock here not known (2 at other sites)"
    assert stock_text([{"site": "Quay A", "stock": None}]) == "stock not known"  # was "out of stock"
    assert stock_text([{"site": "Quay A", "stock": 0}, {"site": "Quay B", "stock": 3}]) == "3 in stock"
    assert stock_text([{"site": "Quay A", "stock": None}, {"site": "Quay B", "stock": 0}]) == "stock not known"
    assert stock_text([{"site": "Quay A", "stock": 0}, {"site": "Quay B", "stock": 0}]) == "out of stock"
    assert stock_text([]) == "stock unknown"
    assert [stock_count_text(s) for s in (None, 0, 7)] == ["stock not known", "out of stock", "7 in stock"]


def test_the_catalogue_list_pages_and_counts_every_match(device) -> None:
    """The list showed at most 50 parts and said "50 parts (first 50)" whatever the real number was."""
    assert device.count_parts() == 3 and device.count_parts(text="bearing") == 2
    assert device.count_parts(in_stock=True) == 1  # at this tablet's site
    assert [r["part_number"] for r in device.search(limit=2)] == ["BRG-1", "BRG-2"]
    assert [r["part_number"] for r in device.search(limit=2, offset=2)] == ["FUS-1"]
    assert device.search(limit=2, offset=3) == []


def test_a_failed_sync_is_shown_after_a_restart_until_any_sync_succeeds(device, tmp_path) -> None:
    """The Sync screen lost the error on a restart (kept in memory only) and never had errors that are not
    SyncErrors (no keyring, not enrolled); now the device's own record is shown, whoever ran the sync."""
    from sync.client import FAILURE_FILE

    with pytest.raises(UsageError, match="not enrolled"):
        device.sync_now()
    assert "not enrolled" in device.sync_status().last_error
    again = DeviceServices(device.data_dir, site="Quay A")  # the app restarted
    try:
        assert "not enrolled" in again.sync_status().last_error
        # another process (the nightly service) synced successfully: its success removes the record
        (device.data_dir / FAILURE_FILE).unlink()
        import datetime as dt

        just_now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")  # (not a future time: a
        (device.data_dir / "last_sync.json").write_text(json.dumps({"at": just_now}))  # wrong clock's, that is)
        assert again.sync_status().last_error is None
        assert device.sync_status().last_error is None  # this app's own, older error is not shown either
    finally:
        again.close()


def test_the_sync_screen_shows_this_failure_not_an_older_one_and_a_busy_tablet_is_no_failure(device) -> None:
    """Found by a review: an error raised before the client's sync began left an older record standing (the
    screen showed that one), and "another sync is running" was recorded as a failed sync for the hub."""
    from sync.client import FAILURE_FILE, read_failure
    from sync.lock import SyncBusyError

    from edge_app.errors import SyncError

    (device.data_dir / FAILURE_FILE).write_text(json.dumps({"at": "2020-01-01T00:00:00+00:00",
                                                            "error": "OLD: hub unreachable"}))

    def enrolled_again():  # a SyncError raised before the client's own recording began
        raise SyncError("this tablet was enrolled again while this sync was being set up; sync again")

    device._client = lambda: type("C", (), {"sync": staticmethod(enrolled_again)})()
    with pytest.raises(SyncError, match="enrolled again"):
        device.sync_now()
    assert "enrolled again" in device.sync_status().last_error and "OLD" not in device.sync_status().last_error
    (device.data_dir / FAILURE_FILE).unlink()

    def busy():
        raise SyncBusyError("sync: another sync of this tablet is running")

    device._client = lambda: type("C", (), {"sync": staticmethod(busy)})()
    device._last_error = None
    with pytest.raises(SyncBusyError):
        device.sync_now()
    assert read_failure(device.data_dir) is None and device.sync_status().last_error is None
    # a record older than the last successful sync is not shown
    (device.data_dir / FAILURE_FILE).write_text(json.dumps({"at": "2020-01-01T00:00:00+00:00", "error": "OLD"}))
    (device.data_dir / "last_sync.json").write_text(json.dumps({"at": "2021-01-01T00:00:00+00:00"}))
    assert device.sync_status().last_error is None


def test_a_reload_during_an_identification_frees_the_model_only_after_it(device) -> None:
    """Found by an audit (21st session): the Java interpreter was never closed (native memory held until the JVM's
    finalizer ran) and a reload closed the identifier's catalogue connection under a running identification."""
    import threading

    closed: list[str] = []
    started, release = threading.Event(), threading.Event()

    class Stub:
        bundle_id = "b1"
        db = None

        def close(self, *, db: bool = True) -> None:
            closed.append(self.bundle_id)

    first, second = Stub(), Stub()
    second.bundle_id = "b2"
    device._bundle_dir = Path("/nonexistent")  # no "did a sync install another bundle" check in this test
    device._identifier = first
    got: list = []

    def identification() -> None:
        with device._leased_identifier() as ident:
            started.set()
            release.wait(10)
            got.append(ident.bundle_id)

    t = threading.Thread(target=identification)
    t.start()
    assert started.wait(10)
    device.reload()  # a sync installed a bundle while the engineer's identification runs
    assert closed == [], "the model was freed under a running identification"
    device._identifier = second
    with device._leased_identifier() as ident:  # a new identification gets the new model
        assert ident is second
    release.set()
    t.join(10)
    assert got == ["b1"] and closed == ["b1"]  # freed when its last identification ended
    device.reload()  # unused: freed at once
    assert closed == ["b1", "b2"] and device._leases == {} and device._retired == []
    # the lease is taken in the same locked step that hands the identifier out (a review: a reload between the two
    # closed it under the identification)
    third = Stub()
    third.bundle_id = "b3"
    device._identifier = third
    got = device._get_identifier(lease=True)
    device.reload()
    assert got is third and closed == ["b1", "b2"]
    device._release_identifier(got)
    assert closed == ["b1", "b2", "b3"] and device._leases == {}


def test_results_after_a_sync_show_the_current_stock_and_leave_out_removed_parts(device) -> None:
    """An audit: after a sync the results screen kept the old stock and bins (an engineer walks to the old bin)
    and parts the sync had removed; the part's own page said otherwise."""
    out = IdentifyOutcome([Match("BRG-1", "Bearing 6204", 0.9, "very likely", stock=1, bin="A-1", site="Quay A"),
                           Match("BRG-2", "Bearing 6205", 0.5, "possible", stock=0, bin="A-2", site="Quay A")],
                          True, catalogue_version=device.catalogue.catalogue_version, identification_id="i1")
    assert device.freshen(out) is out  # nothing changed: the same object, nothing re-read
    with device.catalogue.transaction():
        device.catalogue.set_meta("catalogue_version", device.catalogue.catalogue_version + 1)
        device.catalogue.delete_parts(["BRG-2"])
        device.catalogue.upsert_inventory([{"part_number": "BRG-1", "site": "Quay A", "stock": 99, "bin": "NEW",
                                            "as_of": "2030-01-01T06:00:00+00:00"}])
    fresh = device.freshen(out)
    assert [(x.part_number, x.stock, x.bin, x.as_of) for x in fresh.matches] == [
        ("BRG-1", 99, "NEW", "2030-01-01T06:00:00+00:00")]
    assert fresh.removed_since == ["BRG-2"] and fresh.catalogue_version == device.catalogue.catalogue_version
    assert device.freshen(fresh) is fresh
    assert IdentifyOutcome.from_dict(fresh.to_dict()) == fresh  # kept across an app restart


def test_a_crop_on_a_full_disk_is_a_storage_error_and_keeps_the_old_crop(device, tmp_path, monkeypatch) -> None:
    """An audit: dragging a crop corner on a full tablet raised a bare OSError on the UI thread (the app closed)."""
    import errno

    from edge_app import captures as captures_mod
    from edge_app.errors import StorageError

    cap = device.captures.set_crop(device.captures.add_file(photo(tmp_path / "c.jpg")), (0.1, 0.1, 0.9, 0.9))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(captures_mod, "atomic_write_json", full)
    with pytest.raises(StorageError, match="storage full while saving the crop"):
        device.captures.set_crop(cap, (0.2, 0.2, 0.8, 0.8))
    monkeypatch.undo()
    assert device.captures.get(cap.capture_id).crop == (0.1, 0.1, 0.9, 0.9)


def test_the_catalogue_texts_the_app_chooses_its_font_by(device) -> None:
    texts = set(device.catalogue_texts())
    assert {"Bearing 6204", "Fuse 32 A", "bearings", "electrical", "A-1", "E-1"} <= texts and None not in texts


def test_the_site_follows_the_catalogue_without_a_restart(tmp_path) -> None:
    """Read once at start, the site stayed None after an enrolment in the app, and the old site after the tablet
    was moved, until a restart: no stock shown, the "in stock" filter empty, records tagged with the wrong site
    (an audit, 23rd session)."""
    svc = DeviceServices(tmp_path / "dev")
    try:
        assert svc.site is None
        with svc.catalogue.transaction():  # what a sync (here, or the nightly one in another process) writes
            svc.catalogue.set_meta("site", "site_b")
        assert svc.site == "site_b"
        with svc.catalogue.transaction():
            svc.catalogue.set_meta("site", "quay_c")
        assert svc.site == "quay_c"
    finally:
        svc.close()
    given = DeviceServices(tmp_path / "dev", site="Quay A")
    try:
        assert given.site == "Quay A"  # a site given explicitly (the demo) wins
    finally:
        given.close()

"""``partlens hub review export-calibration``: the hub's field photos as ``partlens calibrate`` folders."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_app.errors import UsageError

from .helpers import part_image, upload_items


def test_export_calibration_writes_what_calibrate_reads(world, tmp_path: Path) -> None:
    from edge_app.cli import main
    from export.calibrate import OUTSIDE, _check_photos
    from export.catalogue import catalogue_from_dir, images_from_dir
    from sync.hub.review import approve_photo, export_calibration, make_part

    hub = world.hub
    src = tmp_path / "slash.jpg"
    src.write_bytes(part_image(7))
    hub.add_part({"part_number": "DIN 934/M8", "name": "nut"}, images=[src])  # a part number with a slash
    ids = upload_items(world, [
        ("feedback", {"part_number": "P1", "verdict": "correct", "capture_ids": ["c1"]}, part_image(1, noise=20)),
        ("feedback", {"part_number": "DIN 934/M8", "verdict": "correct", "capture_ids": ["c2"], "spot_check": True},
         part_image(7, noise=20)),
        ("feedback", {"part_number": "P2", "verdict": "wrong", "capture_ids": ["c3"]}, part_image(2, noise=20)),
        ("feedback", {"part_number": "P2", "verdict": "correct", "capture_ids": ["c4"]}, None),  # no photo
        ("photo", {"part_number": "P0", "capture_id": "c5"}, part_image(0, noise=20)),  # approved below
        ("feedback", {"part_number": "P0", "verdict": "correct", "capture_ids": ["c5"]}, part_image(0, noise=20)),
        ("unknown_part", {"note": "pump seal", "capture_ids": ["c6", "c7"]}, part_image(20)),
        ("unknown_part", {"note": "made into a part below", "capture_ids": ["c8"]}, part_image(21)),
        ("unknown_part", {"note": "rejected below", "capture_ids": ["c9"]}, part_image(22)),
        ("feedback", {"part_number": "P1", "verdict": "correct", "capture_ids": ["c10"]}, part_image(1, noise=30)),
        # a buggy tablet's records: wrong types are skipped, never a crash or a mislabelled photo
        ("feedback", {"part_number": ["P1"], "verdict": "correct", "capture_ids": [["x"]]}, part_image(1, noise=5)),
        ("feedback", {"part_number": "P2", "verdict": "correct", "capture_ids": "c11"}, part_image(2, noise=5)),
        ("photo", {"unknown_part": ["nope"], "capture_id": ["c12"]}, part_image(3, noise=5)),
        # a confirmation approved into the catalogue, and the same capture confirmed again: a catalogue image now
        ("feedback", {"part_number": "P2", "verdict": "correct", "capture_ids": ["c13"]}, part_image(2, noise=9)),
        ("feedback", {"part_number": "P2", "verdict": "correct", "capture_ids": ["c13"]}, part_image(2, noise=9)),
    ])
    # the report's second view travels as a photo linked to the report
    ids += upload_items(world, [("photo", {"unknown_part": ids[6], "capture_id": "c7"}, part_image(20, noise=10))])
    approve_photo(hub, ids[4])
    approve_photo(hub, ids[14])
    make_part(hub, ids[7], {"part_number": "P-NEW", "name": "new"})
    from sync.hub.review import reject

    reject(hub, ids[8], "it is P2")
    reject(hub, ids[9], "blurred")

    out = tmp_path / "cal"
    counts = export_calibration(hub, out)
    assert counts == {"catalogue_images": 7, "catalogue_parts": 5, "positives": 3, "positive_parts": 3,
                      "negatives": 2, "negative_reports": 1, "incomplete_uploads_skipped": 0,
                      "not_spot_checks_skipped": 0}
    # the random sample only: the spot-check answer's photo is the one positive left
    spot = export_calibration(hub, tmp_path / "spot", spot_checks_only=True)
    assert (spot["positives"], spot["not_spot_checks_skipped"], spot["negatives"]) == (1, 2, 2)
    assert [p.name for p in (tmp_path / "spot" / "positives").iterdir()] == ["DIN 934%2FM8"]
    # the slash does not nest folders; readers give the part number back
    assert (out / "catalogue" / "DIN 934%2FM8").is_dir() and not (out / "catalogue" / "DIN 934").exists()
    catalogue = catalogue_from_dir(out / "catalogue")
    assert sorted({c.part_number for c in catalogue}) == ["DIN 934/M8", "P-NEW", "P0", "P1", "P2"]
    assert sum(c.part_number == "P0" for c in catalogue) == 2  # the approved photo is a catalogue image now
    positives = images_from_dir(out / "positives", kind="field")
    assert sorted((p.part_number, p.path.stem) for p in positives) == sorted(
        [("P1", ids[0]), ("DIN 934/M8", ids[1]), ("P2", ids[11])])  # capture_ids not a list: still a confirmation
    negatives = images_from_dir(out / "negatives", kind="field", flat_part=OUTSIDE)
    assert sorted(p.path.name for p in negatives) == sorted([f"{ids[6]}.jpg", f"{ids[6]}-{ids[-1]}.jpg"])
    assert (out / "negatives" / f"{ids[6]}.jpg").read_bytes() == part_image(20)
    _check_photos({c.part_number for c in catalogue}, positives, negatives)  # what calibrate checks first

    # a reviewer confirms the open report is really not in the catalogue: still a negative, and the only
    # kind --reviewed-only takes
    from sync.hub.review import confirm_unknown, export_training

    assert export_calibration(hub, tmp_path / "unreviewed", reviewed_only=True)["negatives"] == 0
    confirm_unknown(hub, ids[6], "a pump seal we do not stock")
    assert export_calibration(hub, tmp_path / "again")["negatives"] == 2
    assert export_calibration(hub, tmp_path / "reviewed", reviewed_only=True)["negatives"] == 2
    with pytest.raises(UsageError, match="already approved"):
        confirm_unknown(hub, ids[6])
    with pytest.raises(UsageError, match="is a feedback"):
        confirm_unknown(hub, ids[0])
    assert export_training(hub, tmp_path / "train") == {"images": 2, "parts": 2}  # the approved photos only
    # a stale folder would change the fit: refused, nothing touched
    with pytest.raises(UsageError, match="not an empty folder"):
        export_calibration(hub, out)
    # the CLI edge: exit code and message, no traceback
    assert main(["hub", "review", "export-calibration", str(out), "--hub", str(hub.root)]) != 0
    assert main(["hub", "review", "export-calibration", str(tmp_path / "cal2"), "--hub", str(hub.root)]) == 0
    assert sorted(p.name for p in (tmp_path / "cal2").iterdir()) == ["catalogue", "negatives", "positives"]


def test_export_calibration_skips_photos_still_uploading(world, tmp_path: Path) -> None:
    import hashlib

    from sync.client import SyncClient
    from sync.hub.review import export_calibration
    from sync.transport import InMemoryTransport

    c = SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                   smoke_test=lambda b: None)
    data = part_image(30)
    body = {"uuid": "0123456789abcdef", "kind": "unknown_part", "payload": {"note": "x"},
            "created_at": "2001-01-01T00:00:00", "catalogue_version": 1,
            "blob": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    c.transport.post_upload(body)
    c.transport.put_chunk(body["uuid"], 0, data[:100])  # a cut upload: the rest never came
    counts = export_calibration(world.hub, tmp_path / "cal")
    assert counts["negatives"] == 0 and counts["incomplete_uploads_skipped"] == 1
    assert not (tmp_path / "cal" / "negatives").exists()


def test_export_calibration_link_shares_the_hubs_files(world, tmp_path: Path, monkeypatch) -> None:
    import os

    from edge_app.cli import main
    from sync.hub import review
    from sync.hub.uploads import blob_path

    hub = world.hub
    ids = upload_items(world, [
        ("feedback", {"part_number": "P1", "verdict": "correct", "capture_ids": ["c1"]}, part_image(1, noise=20)),
        ("unknown_part", {"note": "seal", "capture_ids": ["c2"]}, part_image(20))])
    copied = review.export_calibration(hub, tmp_path / "copy")
    assert main(["hub", "review", "export-calibration", str(tmp_path / "link"), "--link", "--hub", str(hub.root)]) == 0
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "link") == files(tmp_path / "copy") and len(files(tmp_path / "copy")) == 5
    linked_pos = tmp_path / "link" / "positives" / "P1" / f"{ids[0]}.jpg"
    assert os.path.samefile(linked_pos, blob_path(hub, ids[0]))
    assert not os.path.samefile(tmp_path / "copy" / "positives" / "P1" / f"{ids[0]}.jpg", blob_path(hub, ids[0]))
    for img in hub.store.live_images():
        name = f"{img['image_id']}{hub.image_path(img).suffix}"
        assert os.path.samefile(tmp_path / "link" / "catalogue" / img["part_number"] / name, hub.image_path(img))

    def no_link(src, dst):  # e.g. another file system
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    counts = review.export_calibration(hub, tmp_path / "fallback", link=True)
    assert counts == copied and files(tmp_path / "fallback") == files(tmp_path / "copy")
    assert (tmp_path / "fallback" / "negatives" / f"{ids[1]}.jpg").read_bytes() == part_image(20)
    assert not os.path.samefile(tmp_path / "fallback" / "negatives" / f"{ids[1]}.jpg", blob_path(hub, ids[1]))


@pytest.mark.parametrize("action", ["approve", "make-part"])
def test_a_review_and_the_catalogue_change_it_makes_commit_together(world, monkeypatch, action: str) -> None:
    """Approving a photo (or making a part of an unknown-part report) changes the catalogue and the upload's status.
    Stopped in between, before the fix, the catalogue held the photo while the upload stayed "new": export-calibration
    wrote it as both a catalogue image and a field photo, and make-part could never be re-run. Now both are one
    transaction: a failure leaves neither, and the action then runs again."""
    from sync.hub import store as store_mod
    from sync.hub.review import approve_photo, make_part

    hub = world.hub
    kind, payload = (("feedback", {"part_number": "P1", "verdict": "correct", "capture_ids": ["c1"]})
                     if action == "approve" else ("unknown_part", {"note": "pump seal", "capture_ids": ["c2"]}))
    (uid,) = upload_items(world, [(kind, payload, part_image(1, noise=20))])
    before = (hub.store.version(), len(hub.store.live_images()), hub.store.upload(uid)["status"])

    def run():
        if action == "approve":
            return approve_photo(hub, uid)
        return make_part(hub, uid, {"part_number": "P-NEW", "name": "new"})

    def dies(self, uuid, **fields):
        raise KeyboardInterrupt  # stopped after the catalogue rows were written, before the commit

    with monkeypatch.context() as m:
        m.setattr(store_mod._SqliteChange, "update_upload", dies)
        with pytest.raises(KeyboardInterrupt):
            run()
    assert (hub.store.version(), len(hub.store.live_images()), hub.store.upload(uid)["status"]) == before
    assert hub.store.part("P-NEW") is None
    res = run()
    row = hub.store.upload(uid)
    assert row["status"] == ("approved" if action == "approve" else "done")
    assert hub.store.version() == before[0] + 1 == res["catalogue_version"]
    assert len(hub.store.live_images()) == before[1] + 1
    import json as _json

    assert _json.loads(row["review"])["catalogue_version"] == res["catalogue_version"]


def test_an_export_that_fails_half_way_leaves_no_folder_behind(world, tmp_path, monkeypatch) -> None:
    """Found by an audit: a failure mid-export (a part number too long for a file name) left a partly filled
    folder, and the re-run refused it as not empty."""
    import errno

    from sync.hub import review

    out = tmp_path / "cal"
    real, calls = review._place, []

    def fails(src, dst, link):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(dst))
        return real(src, dst, link)

    monkeypatch.setattr(review, "_place", fails)
    with pytest.raises(OSError):
        review.export_calibration(world.hub, out)
    assert not out.exists() and not list(tmp_path.glob(".cal.exporting-*"))
    monkeypatch.setattr(review, "_place", real)
    counts = review.export_calibration(world.hub, out)  # the re-run goes through
    assert counts["catalogue_images"] == 3 and len(list((out / "catalogue").rglob("*.jpg"))) == 3

"""The field-feedback loop at the hub: approving photos into the catalogue, undoing, making parts, and which
photos count as field photos (an audit of the loop, 23rd session)."""
from __future__ import annotations

import json

import pytest

from edge_app.errors import UsageError

from .helpers import part_image, upload_items


def _cli(*argv: str) -> int:
    from edge_app.cli import main

    return main(list(argv))


def test_a_not_this_one_confirmation_is_never_filed_under_the_part_it_rejects(world) -> None:
    from sync.hub.review import approve_photo

    uid = upload_items(world, [("feedback", {"part_number": "P0", "verdict": "wrong", "capture_ids": ["c1"]},
                                part_image(1, noise=6))])[0]
    with pytest.raises(UsageError, match="says the photo is NOT part P0; pass --part"):
        approve_photo(world.hub, uid)
    assert world.hub.store.upload(uid)["status"] == "new"
    res = approve_photo(world.hub, uid, "P1")
    assert res["part_number"] == "P1" and res["warnings"] == []


def test_approval_warns_when_the_photo_looks_like_another_part(world) -> None:
    from sync.hub.review import approve_photo

    right, wrong = upload_items(world, [("photo", {"part_number": "P0", "capture_id": "c1"}, part_image(0, noise=6)),
                                        ("photo", {"part_number": "P0", "capture_id": "c2"}, part_image(2, noise=6))])
    assert approve_photo(world.hub, right)["warnings"] == []
    (msg,) = approve_photo(world.hub, wrong)["warnings"]
    assert "approved into P0 looks more like P2" in msg and f"review unapprove --hub {world.hub.root} {wrong}" in msg


def test_undoing_one_of_two_approvals_of_the_same_picture_keeps_the_image(world) -> None:
    from sync.hub.review import approve_photo, unapprove

    data = part_image(1, noise=9)
    a, b = upload_items(world, [("photo", {"part_number": "P1", "capture_id": "y1"}, data),
                                ("photo", {"part_number": "P1", "capture_id": "y2"}, data)])
    image = approve_photo(world.hub, a)["image_id"]
    assert approve_photo(world.hub, b)["image_id"] == image  # one content-named image
    res = unapprove(world.hub, a)
    assert res["image_removed"] is False and res["image_kept_for"] == [b]
    assert world.hub.store.image(image) is not None  # still what upload b stands for
    assert unapprove(world.hub, b)["image_removed"] is True and world.hub.store.image(image) is None


def test_approve_many_at_once_one_version_per_batch_and_the_refused_listed(world, tmp_path, capsys,
                                                                            monkeypatch) -> None:
    from sync import commands

    monkeypatch.setattr(commands, "_open_hub", lambda args: world.hub)  # (the world's stand-in model)
    ids = upload_items(world, [("photo", {"part_number": "P1", "capture_id": f"m{i}"}, part_image(1, noise=5 + i))
                               for i in range(4)])
    before = world.hub.store.version()
    (tmp_path / "ids.txt").write_text(f"# approve these\n{ids[2]}  second batch file\n{ids[3]}\nnope-uuid\n")
    capsys.readouterr()
    rc = _cli("hub", "review", "approve", "--hub", str(world.hub.root), ids[0], ids[1], ids[0],
              "--from-file", str(tmp_path / "ids.txt"))
    out = json.loads(capsys.readouterr().out)
    assert rc == 3 and [r["uuid"] for r in out["refused"]] == ["nope-uuid"]
    assert sorted(a["uuid"] for a in out["approved"]) == sorted(ids)
    assert {a["catalogue_version"] for a in out["approved"]} == {before + 1}  # one version for the batch
    assert all(world.hub.store.upload(u)["status"] == "approved" for u in ids)
    assert _cli("hub", "review", "approve", "--hub", str(world.hub.root), ids[0], ids[1]) == 3  # not twice
    assert world.hub.store.version() == before + 1
    assert _cli("hub", "review", "approve", "--hub", str(world.hub.root)) == 2  # nothing named


def test_a_part_made_from_a_report_gets_every_view_of_it(world) -> None:
    from sync.hub.review import make_part

    report = "rep-1"
    ids = upload_items(world, [("unknown_part", {"description": "twistlock", "capture_ids": ["u1", "u2"]},
                                part_image(30, noise=4)),
                               ("photo", {"unknown_part": "PLACEHOLDER", "capture_id": "u2"}, part_image(30, noise=8))])
    # the view names its report by the report's UUID (as the tablet does)
    conn = world.hub.store._db().conn
    conn.execute("UPDATE uploads SET payload=? WHERE uuid=?", (json.dumps({"unknown_part": ids[0], "capture_id": "u2"}),
                                                               ids[1]))
    res = make_part(world.hub, ids[0], {"part_number": "TWL-1", "name": "twistlock"})
    assert res["images"] == 2 and res["views_approved"] == [ids[1]] and report
    assert len([r for r in world.hub.store.live_images() if r["part_number"] == "TWL-1"]) == 2
    assert world.hub.store.upload(ids[1])["status"] == "approved"


def test_a_catalogue_photo_confirmed_again_is_no_field_photo(world, tmp_path) -> None:
    from sync.hub.evaluate import labelled_field_photos
    from sync.hub.review import export_calibration

    catalogue_bytes = (world.hub.root / "images" / world.hub.store.live_images()[0]["path"]).read_bytes()
    pn = world.hub.store.live_images()[0]["part_number"]
    upload_items(world, [("feedback", {"part_number": pn, "verdict": "correct", "capture_ids": ["new-capture"]},
                          catalogue_bytes),
                         ("feedback", {"part_number": "P1", "verdict": "correct", "capture_ids": ["field"]},
                          part_image(1, noise=12))])
    photos, skipped = labelled_field_photos(world.hub)
    assert [p["part_number"] for p in photos] == ["P1"] and skipped["in_catalogue_or_duplicate"] == 1
    counts = export_calibration(world.hub, tmp_path / "cal")
    assert counts["positives"] == 1


def test_photos_approved_together_do_not_vouch_for_each_other(world) -> None:
    """A review: three photos of P2 approved into P0 in ONE batch each found the other two "own" and no warning
    came; one by one, only the first warned."""
    from sync.hub.review import approve_photos

    ids = upload_items(world, [("photo", {"part_number": "P0", "capture_id": f"w{i}"}, part_image(2, noise=6 + i))
                               for i in range(3)])
    out = approve_photos(world.hub, ids)
    assert [len(a["warnings"]) for a in out["approved"]] == [1, 1, 1]
    assert all("looks more like P2" in a["warnings"][0] for a in out["approved"])

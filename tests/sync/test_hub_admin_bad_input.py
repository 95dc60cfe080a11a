"""The hub's admin commands with bad input (found by an audit running them, 17th session): one line and the
right exit code, never a traceback, and nothing half done."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from edge_app.errors import InputError, UsageError

from .helpers import part_image, upload_items


def _cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from edge_app.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()


def _csvs(tmp_path: Path, parts: str, images: str | None = None) -> tuple[Path, Path | None]:
    (tmp_path / "parts.csv").write_bytes(parts.encode("utf-8"))
    if images is None:
        return tmp_path / "parts.csv", None
    (tmp_path / "images.csv").write_text(images)
    return tmp_path / "parts.csv", tmp_path / "images.csv"


def test_reject_refuses_a_reviewed_upload(world) -> None:
    from sync.hub.review import approve_photo, reject

    uid = upload_items(world, [("photo", {"part_number": "P0", "capture_id": "c1"}, part_image(0, noise=20))])[0]
    approve_photo(world.hub, uid)
    with pytest.raises(UsageError, match="already approved"):
        reject(world.hub, uid)  # had overwritten the review: the catalogue image was no longer traceable
    assert world.hub.store.upload(uid)["status"] == "approved"


@pytest.mark.parametrize("parts, words", [
    ("part_number,name,stock_site_a\nG0,gear,-5\n", "must be 0.."),
    ("part_number,name,stock_site_a\nG0,gear,99999999999999999999999\n", "must be 0.."),  # was an OverflowError
    ("part_number,name,size_mm\nG0,gear,inf\n", "size_mm"),
    ("part_number,name\nG0,gear,extra\n", "more fields than the header"),
    ("part_number,name\n" + "X" * 300 + ",long\n", "at most 100 characters"),
], ids=["negative-stock", "huge-stock", "infinite-size", "extra-field", "long-part-number"])
def test_hub_import_checks_rows_as_the_device_importer_does(world, tmp_path, parts, words) -> None:
    before = world.hub.store.version()
    with pytest.raises(InputError, match=words):
        world.hub.import_csv(*_csvs(tmp_path, parts))
    assert world.hub.store.version() == before


def test_hub_import_reads_a_bom_and_refuses_one_image_for_two_parts(world, tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(part_image(40))
    parts, images = _csvs(tmp_path, "\ufeffpart_number,name\nG0,gear\nG1,gear 2\n",
                          "path,part_number,kind\nimgs/a.jpg,G0,catalogue\nimgs/a.jpg,G1,catalogue\n")
    with pytest.raises(InputError, match="listed twice"):  # the last row had taken the image silently
        world.hub.import_csv(parts, images)
    images.write_text("path,part_number,kind\nimgs/a.jpg,G0,catalogue\n")
    out = world.hub.import_csv(parts, images)  # the BOM Excel writes is read (was "missing column part_number")
    assert out["parts"] == 2 and out["images"] == 1


def test_add_part_checks_stock_size_and_part_number(world) -> None:
    with pytest.raises(InputError, match="must be 0.."):
        world.hub.add_part({"part_number": "G9", "name": "x"}, inventory={"site_a": (-1, "B")})
    with pytest.raises(InputError, match="size_mm"):
        world.hub.add_part({"part_number": "G9", "name": "x", "size_mm": -3})
    with pytest.raises(InputError, match="at most 100"):
        world.hub.add_part({"part_number": "Y" * 300, "name": "x"})
    rc, err = _cli("hub", "add-part", "--hub", str(world.hub.root), "G9", "--name", "x", "--stock", "site_a=1e99:B")
    assert rc == 2 and "whole number" in err and "Traceback" not in err


def test_restore_refuses_a_tampered_or_incomplete_backup(world, tmp_path) -> None:
    from sync.hub.backup import backup_hub, restore_hub

    good = tmp_path / "backup"
    backup_hub(world.hub, good)

    def broken(name, change):
        b = tmp_path / name
        shutil.copytree(good, b)
        change(b)
        return b

    cases = [
        (broken("b1", lambda b: (b / "hub.json").write_text("{not json")), "hub.json"),
        (broken("b2", lambda b: (b / "backup.json").write_text("[]")), "not an object"),
        (broken("b3", lambda b: (b / "hub.db").write_bytes(b"\x00" * 4096)), "not a usable hub database"),
        (broken("b4", lambda b: [p.unlink() for p in (b / "images").iterdir()]), "missing"),
        (broken("b5", lambda b: next((b / "images").iterdir()).write_bytes(b"changed")), "changed"),
    ]
    for i, (backup, words) in enumerate(cases):
        with pytest.raises(InputError, match=words):
            restore_hub(backup, tmp_path / f"restored{i}", key_path=world.hub_key_path)
        assert not (tmp_path / f"restored{i}").exists()
    assert restore_hub(good, tmp_path / "ok", key_path=world.hub_key_path)["catalogue_version"]


def test_a_damaged_hub_folder_is_one_line_not_a_traceback(world, tmp_path) -> None:
    bad = tmp_path / "hub-copy"
    shutil.copytree(world.hub.root, bad)
    (bad / "hub.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000)
    rc, err = _cli("hub", "status", "--hub", str(bad))
    assert rc == 3 and "damaged" in err and "Traceback" not in err
    shutil.copy(world.hub.root / "hub.db", bad / "hub.db")
    (bad / "hub.json").write_text("[]")
    rc, err = _cli("hub", "status", "--hub", str(bad))
    assert rc == 3 and "not a hub settings object" in err


def test_day_counts_out_of_range_are_usage_errors(world) -> None:
    hub = str(world.hub.root)
    for args in (("prune-usage", "--older-than-days", "1000000"), ("prune-usage", "--older-than-days", "inf"),
                 ("field-stats", "--days", "inf")):
        rc, err = _cli("hub", args[0], "--hub", hub, *args[1:])
        assert rc == 2 and "at most 36500" in err, (args, err)
    rc, err = _cli("hub", "prune-packages", "--hub", hub, "--grace-hours", "nan")
    assert rc == 3 and "grace" in err  # NaN had made every cached package old enough to delete


def test_hub_init_needs_a_url_tablets_can_use(tmp_path, world) -> None:
    from sync.hub.hub import Hub

    with pytest.raises(UsageError, match="http:// or https://"):
        Hub.init(tmp_path / "h", world.hub_key_path, url="10.0.0.5:8765")
    assert not (tmp_path / "h" / "hub.json").exists()


def test_read_only_hub_commands_do_not_wait_for_a_writer(world) -> None:
    """Opening the hub took the write lock for its schema check even when nothing was due: `hub status` waited
    30 s behind a long import, then failed busy."""
    import time

    writer = sqlite3.connect(world.hub.root / "hub.db", isolation_level=None, timeout=1)
    writer.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        rc, err = _cli("hub", "status", "--hub", str(world.hub.root))
        assert rc == 0, err
        assert time.monotonic() - t0 < 10
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_admin_commands_racing_a_set_bundle_write_nothing_stale(world, tmp_path, monkeypatch) -> None:
    """Found by an audit running two admin commands at once: an import that embedded with bundle v1 while another
    process made v2 active stored its vectors under v1 (tablets could never identify those parts); two set-bundles
    at once made the OLDER bundle active after the newer one (every tablet that took the newer failed each sync)."""
    from sync.hub.hub import Hub

    from .helpers import embedder_factory, make_bundle

    hub = world.hub
    other = Hub(hub.root, embedder_factory=embedder_factory)  # another admin process on the same hub folder
    v2 = make_bundle(tmp_path / "export", world.export_key, 2)
    v3 = make_bundle(tmp_path / "export", world.export_key, 3)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "k.jpg").write_bytes(part_image(77))
    parts, images = _csvs(tmp_path, "part_number,name\nK0,knob\n", "path,part_number,kind\nimgs/k.jpg,K0,catalogue\n")
    real_embed = hub.embed_rows
    before = hub.store.version()

    def embed_then_switch(rows, emb):
        vecs = real_embed(rows, emb)
        other.set_bundle(v2)  # commits while this import still holds v1's vectors
        return vecs

    monkeypatch.setattr(hub, "embed_rows", embed_then_switch)
    with pytest.raises(UsageError, match="active bundle changed to .* nothing was written"):
        hub.import_csv(parts, images)
    monkeypatch.undo()
    assert hub.store.part("K0") is None and hub.store.version() == before + 1  # only v2's own version
    out = hub.import_csv(parts, images)  # run again: embedded with v2
    assert out["images"] == 1 and hub.store.counts()["embeddings"] == hub.store.counts()["images"]

    real_cached = hub.embed_rows_cached

    def cached_then_newer(rows, emb, **kw):
        vecs = real_cached(rows, emb, **kw)
        other.set_bundle(v3)  # the newer bundle lands first
        return vecs

    v2b = make_bundle(tmp_path / "export2", world.export_key, 3)  # same version as v3, another bundle
    monkeypatch.setattr(hub, "embed_rows_cached", cached_then_newer)
    with pytest.raises(UsageError, match="became active while"):
        hub.set_bundle(v2b)
    assert Hub(hub.root, embedder_factory=embedder_factory).bundle_id == Path(v3).name

    # an import never deletes: parts left out are counted, and `hub delete-parts` removes them
    out = hub.import_csv(*_csvs(tmp_path, "part_number,name\nK0,knob\n"))
    assert out["parts_not_in_file"] == 3  # P0, P1, P2 stay live
    rc, err = _cli("hub", "delete-parts", "--hub", str(hub.root), "P0", "P1")
    assert rc == 0 and "deleted 2 part(s)" in err
    assert Hub(hub.root).store.part_numbers() == ["K0", "P2"]


def test_a_photo_approved_into_the_wrong_part_can_be_undone(world) -> None:
    """An admin audit: `review reject` refuses an approved upload and no command removed the image, so a photo
    approved into the wrong part stayed a reference of that part on every tablet."""
    from sync.hub.review import approve_photo, unapprove

    from .test_inmemory import client

    uid = upload_items(world, [("photo", {"part_number": "P0", "capture_id": "c9"}, part_image(1, noise=20))])[0]
    res = approve_photo(world.hub, uid)  # the photo shows P1, approved as P0
    tab = client(world)
    tab.sync()
    images = lambda: {r["image_id"] for r in world.hub.store.live_images()}  # noqa: E731
    assert res["image_id"] in images()
    rc, _ = _cli("hub", "review", "unapprove", "--hub", str(world.hub.root), uid, "--note", "shows P1")
    assert rc == 0 and res["image_id"] not in images()
    assert world.hub.store.upload(uid)["status"] == "new"
    assert world.hub.store.counts()["embeddings"] == world.hub.store.counts()["images"]
    tab.sync()  # the tablet drops the image and its vector
    import sqlite3 as _sq

    held = {r[0] for r in _sq.connect(world.device_dir / "catalogue.db").execute("SELECT image_id FROM images")}
    assert res["image_id"] not in held
    again = approve_photo(world.hub, uid, "P1")  # and it can be approved into the right part
    assert again["part_number"] == "P1" and world.hub.store.image(again["image_id"])["part_number"] == "P1"
    with pytest.raises(UsageError, match="not an approved photo"):
        unapprove(world.hub, upload_items(world, [("photo", {"part_number": "P0"}, part_image(2))])[0])


def test_hub_import_reads_images_csv_as_the_device_importer_does(world, tmp_path) -> None:
    """A review of this session's fixes: the device's import got the new images.csv checks, the hub's own copy of
    the loop did not (a decomposed "Ö" part number failed there; a 'Catalogue' kind imported 0 images silently)."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(part_image(41))
    nfd = "O\u0308L-12"
    parts, images = _csvs(tmp_path, f"part_number,name,,\n{nfd},oil ring,,\n",  # empty trailing columns: fine
                          f"path,part_number,kind\nimgs/a.jpg,{nfd},catalogue\n")
    out = world.hub.import_csv(parts, images)
    assert out["images"] == 1 and world.hub.store.part("\u00d6L-12") is not None
    images.write_text("path,part_number,kind\nimgs/a.jpg,\u00d6L-12,Catalogue\n")
    with pytest.raises(InputError, match="kind 'Catalogue' is not one of"):
        world.hub.import_csv(parts, images)
    images.write_text("path,part_number,kind\n../outside.jpg,\u00d6L-12,catalogue\n")
    with pytest.raises(InputError, match="outside the CSV's folder"):
        world.hub.import_csv(parts, images)


def test_files_a_failed_import_stored_are_swept_by_the_nightly_prune(world, tmp_path) -> None:
    """Found by an audit (21st session): an import that failed on a later image (or was killed) had stored the
    earlier images and thumbnails, which no row referred to and nothing ever deleted (and backups carried)."""
    import os
    import time

    hub = world.hub
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(part_image(70 + i))
    cut = part_image(80, size=96)
    (tmp_path / "imgs" / "cut.jpg").write_bytes(cut[:len(cut) // 2])  # its header reads; its data is cut
    (tmp_path / "imgs" / "cut2.jpg").write_bytes(cut[:len(cut) // 2])
    parts, images = _csvs(tmp_path, "part_number,name\nG0,gear\n", "path,part_number,kind\n" + "".join(
        f"imgs/{n}.jpg,G0,catalogue\n" for n in ("0", "cut", "1", "2", "cut2")))
    files = lambda: {f"{d}/{f.name}" for d in ("images", "thumbs") for f in (hub.root / d).iterdir()}  # noqa: E731
    before = files()
    with pytest.raises(InputError, match=r"2 image\(s\) cannot be imported, nothing was: .*cut.jpg.*cut2.jpg"):
        hub.import_csv(parts, images)  # every bad photo named at once (it stopped at the first)
    left = files() - before
    assert len(left) == 6  # three images and their thumbnails, in no row
    rc, err = _cli("hub", "prune-packages", "--hub", str(hub.root))
    assert rc == 0 and files() - before == left  # younger than the 24 h grace: maybe another process's import
    old = time.time() - 25 * 3600
    for rel in left:
        os.utime(hub.root / rel, (old, old))
    for f in (hub.root / "images").iterdir():  # referenced files, however old, stay
        os.utime(f, (old, old))
    # an import storing one of them again (not committed yet) makes it young: the sweep leaves it (a review)
    row = hub.store_image(tmp_path / "imgs" / "0.jpg", "G0")
    out = hub.prune_orphan_files()
    assert out["orphan_files_removed"] == 4 and files() - before == {f"images/{row['path']}",
                                                                     f"thumbs/{row['image_id']}.jpg"}
    for rel in files() - before:
        os.utime(hub.root / rel, (old, old))
    assert hub.prune_orphan_files()["orphan_files_removed"] == 2 and files() == before
    assert all((hub.root / "images" / r["path"]).is_file() for r in hub.store.live_images())
    images.write_text("path,part_number,kind\nimgs/0.jpg,G0,catalogue\n")
    assert hub.import_csv(parts, images)["images"] == 1  # a re-run stores them again

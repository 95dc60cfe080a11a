"""The tablet with its storage full to the last byte (a real tmpfs): the app still opens, shows parts and
stock, says why a photo or a note cannot be stored, and gets room back by pruning photos already uploaded."""
from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from tests.fullfs import SKIP_REASON, can_mount_tmpfs, run_on_tmpfs


def noise_jpeg(seed: int, side: int = 900) -> bytes:
    """An incompressible photo (~1 MB): what fills a tablet."""
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def device_folder(root):
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.outbox import Outbox
    from edge_app.services import CaptureStore

    dev = root / "device"
    db = CatalogueDB(dev / "catalogue.db")
    with db.transaction():
        db.upsert_parts([{"part_number": f"P{i}", "name": f"hex bolt M{8 + i}", "category": "bolt", "version": 1}
                         for i in range(3)])
        db.set_meta("site", "site_a")
    db.close()
    store = CaptureStore(dev / "captures")
    old = [store.add_bytes(noise_jpeg(s)) for s in (1, 2)]  # engineers' photos from last month
    for cap in old:
        side = store.root / f"{cap.capture_id}.json"
        meta = json.loads(side.read_text())
        meta["created_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)).isoformat()
        side.write_text(json.dumps(meta))
    crop = store.root / f"{old[0].capture_id}.crop.jpg"  # ...one of them still waits to upload
    crop.write_bytes(noise_jpeg(3, side=200))
    ob = Outbox(dev / "outbox.db")
    ob.add("photo", {"part_number": "P1"}, blob_path=crop)
    ob.close()
    (root / "new.jpg").write_bytes(noise_jpeg(4, side=64))
    assert not list(dev.glob("*-wal")) and not list(dev.glob("*-shm")), "closed cleanly, as after an app exit"
    # the same catalogue as a crash leaves it: its last change only in the -wal file (no -shm)
    crashed, scratch = root / "crashed", root / "scratch"
    crashed.mkdir()
    scratch.mkdir()
    shutil.copy2(dev / "catalogue.db", scratch / "catalogue.db")
    conn = sqlite3.connect(scratch / "catalogue.db", isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE parts SET name = 'renamed' WHERE part_number = 'P0'")
    for name in ("catalogue.db", "catalogue.db-wal"):
        shutil.copy2(scratch / name, crashed / name)
    conn.close()
    return dev


@pytest.mark.slow
def test_a_tablet_full_to_the_last_byte_still_opens_and_recovers(tmp_path):
    if not can_mount_tmpfs():
        pytest.skip(SKIP_REASON)
    device_folder(tmp_path)
    out = run_on_tmpfs("tests.edge_app._child_full_open", [str(tmp_path)], tmp_path / "mnt", size_mb=8)
    assert out["free"] == 0
    # plain SQLite cannot even read a cleanly closed WAL database on a full disk (it must create the -shm file)
    assert "disk I/O error" in out["raw_sqlite_open"]
    assert out["read_only"] == [True, True]
    assert out["search"] == ["P0", "P1", "P2"] and out["part"] == "hex bolt M9" and out["pending"] == 1
    assert out["status"] == {"storage_low": True, "pending_uploads": 1}
    assert out["photo"].startswith("StorageError: storage full while storing the photo")
    assert out["feedback"].startswith("StorageError:") and "outbox was opened read-only" in out["feedback"]
    assert out["catalogue_write"].startswith("StorageError:")
    # start-up pruning: the old photo that was uploaded goes, the one waiting to upload keeps its copy
    # (two photos, their screen copies and the upload copy of the pending one)
    assert out["captures_before"] == 5 and out["captures_after"] == 1 and out["pruned"]["removed_files"] >= 2
    assert out["read_only_after"] == [False, False]
    # after a crash the last changes are only in the -wal: no safe read-only view; a clear error, nothing lost
    assert out["crashed_open"].startswith("StorageError:") and "changes SQLite must recover" in out["crashed_open"]
    assert out["feedback_after"].startswith("ok ") and out["pending_after"] == 2


def test_an_unreadable_camera_photo_on_a_full_tablet_says_storage_full(tmp_path, monkeypatch):
    from edge_app import storage
    from edge_app.errors import ImageError, StorageError
    from edge_app.services import LOW_SPACE_BYTES, CaptureStore

    store = CaptureStore(tmp_path / "captures")
    cid, path = store.new_path(".jpg")
    path.write_bytes(noise_jpeg(5, side=64)[:300])  # what a camera leaves when the disk fills mid-write
    with pytest.raises(ImageError):  # space enough: a plain bad photo
        store.adopt(cid, path)
    monkeypatch.setattr(storage, "free_bytes", lambda p: LOW_SPACE_BYTES - 1)
    with pytest.raises(StorageError, match="storage is full"):
        store.adopt(cid, path)


@pytest.mark.skipif(not can_mount_tmpfs(), reason=SKIP_REASON)
def test_a_command_on_a_full_disk_says_so_in_one_line_with_exit_8(tmp_path):
    """An audit: `train`, `export` and `bundle build` on a full disk ended in a traceback and exit 1 (a failed write
    names no file, and the CLI re-raised such OSErrors), not the documented one line and exit 8."""
    out = run_on_tmpfs("tests.edge_app._child_cli_full", [], tmp_path / "mnt", size_mb=2)
    assert out["rc"] == 8, out
    assert "storage full" in out["stderr"] and "Traceback" not in out["stderr"], out
    assert out["left"] == [], out  # no half-written key or temporary file


def test_the_cli_turns_a_full_disk_into_exit_8_whatever_raised_it(monkeypatch, capsys):
    import errno

    from edge_app import cli

    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                sqlite3.OperationalError("database or disk is full")):
        def boom(args, exc=exc):
            raise exc
        parser = cli.build_parser()
        monkeypatch.setattr(cli, "build_parser", lambda parser=parser: parser)
        args = parser.parse_args(["keys", "init", "--dir", "x"])
        monkeypatch.setattr(parser, "parse_args", lambda argv=None, args=args: args)
        args.func = boom
        assert cli.main([]) == 8
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "storage full" in err, err

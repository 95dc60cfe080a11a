"""Bad input on the device side (found by an audit): one-line errors, nothing changed, nothing lost."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from edge_app.cli import main
from edge_app.errors import InputError, UsageError
from edge_app.runtime.catalogue import CatalogueDB
from edge_app.runtime.importer import import_catalogue

REPO = Path(__file__).resolve().parents[2]


def _csvs(root: Path, parts: str, images: str | None = None) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)
    (root / "parts.csv").write_text(parts)
    (root / "images.csv").write_text(images or "path,part_number\na.png,P1\nb.png,P2\n")
    return root / "parts.csv", root / "images.csv"


GOOD = "part_number,name,stock_site_a,bin_site_a,size_mm\nP1,one,3,A1,12\nP2,two,0,A2,16\n"


def _run(capsys, *argv):
    rc = main(list(map(str, argv)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_import_refuses_rows_that_would_corrupt_the_catalogue(tmp_path: Path) -> None:
    db = CatalogueDB(tmp_path / "c.db")
    cases = {
        "listed twice": "path,part_number\na.png,P1\na.png,P2\n",  # would move the image (and answers) to P2
        "outside the CSV's folder": "path,part_number\na.png,P1\n../elsewhere.png,P2\n",
    }
    (tmp_path / "elsewhere.png").write_bytes((tmp_path / "c.db").read_bytes()[:0] or b"x")
    for what, images in cases.items():
        parts, imgs = _csvs(tmp_path / what.replace(" ", "_"), GOOD, images)
        with pytest.raises(InputError, match=what):
            import_catalogue(db, parts, imgs)
    bad_parts = {"more fields than the header": GOOD + "P3,three,1,A3,10,extra,extra2\n",
                 "must be 0..": GOOD.replace("P2,two,0", "P2,two,99999999999999999999999"),
                 "must be above 0": GOOD.replace("A2,16", "A2,inf")}
    for what, text in bad_parts.items():
        parts, imgs = _csvs(tmp_path / "p", text)
        with pytest.raises(InputError, match=what):
            import_catalogue(db, parts, imgs)
    assert db.catalogue_version == 0 and not db.search_parts()  # nothing was imported by any of them


def test_a_failed_import_changes_nothing_and_makes_no_database(tmp_path: Path, capsys) -> None:
    parts, imgs = _csvs(tmp_path / "src", GOOD)
    dbp = tmp_path / "dev" / "catalogue.db"
    assert _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp, "--site", "site_a")[0] == 0
    parts.write_text(GOOD + "P1,dup,1,A9,12\n")
    rc, _, err = _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp, "--site", "site_b")
    assert rc == 3 and "duplicate part_number" in err
    with CatalogueDB(dbp) as db:
        assert db.get_meta("site") == "site_a"  # the site switch was part of the failed import
    typo = tmp_path / "new" / "catalogue.db"
    rc, _, err = _run(capsys, "catalogue", "import", tmp_path / "nope.csv", "--db", typo)
    assert rc == 3 and "no such file" in err and not typo.exists()


def test_a_hub_kept_catalogue_refuses_a_local_import(tmp_path: Path, capsys) -> None:
    """A local import bumped the hub's version number: the next syncs then skipped a hub change for good."""
    parts, imgs = _csvs(tmp_path / "src", GOOD)
    dbp = tmp_path / "catalogue.db"
    with CatalogueDB(dbp) as db:
        with db.transaction():
            db.set_meta("managed_by_hub", "1")
            db.set_meta("catalogue_version", 4)
    rc, _, err = _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp)
    assert rc == 2 and "kept by a hub" in err and "partlens hub import" in err
    with CatalogueDB(dbp) as db:
        assert db.catalogue_version == 4


def test_search_text_is_literal_not_a_wildcard(tmp_path: Path) -> None:
    with CatalogueDB(tmp_path / "c.db") as db:
        with db.transaction():
            db.upsert_parts([{"part_number": "A_1", "name": "100% steel"}, {"part_number": "B1", "name": "brass"}])
        assert [p["part_number"] for p in db.search_parts(text="%")] == ["A_1"]
        assert [p["part_number"] for p in db.search_parts(text="_")] == ["A_1"]
        assert [p["part_number"] for p in db.search_parts(text="b")] == ["B1"]
        with pytest.raises(UsageError, match="limit"):
            db.search_parts(limit=10**20)


def test_reads_go_on_while_another_process_writes_and_a_blocked_write_is_one_line(tmp_path: Path,
                                                                                   capsys) -> None:
    parts, imgs = _csvs(tmp_path / "src", GOOD)
    dbp = tmp_path / "catalogue.db"
    assert _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp)[0] == 0
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\nc.execute(\"INSERT OR REPLACE INTO meta VALUES ('x', '1')\")\n"
        "print('held', flush=True)\ntime.sleep(60)\n"), str(dbp)], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # e.g. a sync applying a large package
        rc, out, _ = _run(capsys, "catalogue", "list", "--db", dbp)  # opening took the write lock before
        assert rc == 0 and "P1" in out
        rc, _, err = _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp)
        assert rc == 10 and "busy" in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait(10)


def test_outbox_refuses_records_the_hub_would_refuse(tmp_path: Path) -> None:
    from edge_app.runtime.outbox import MAX_PAYLOAD_BYTES, Outbox

    ob = Outbox(tmp_path / "outbox.db")
    with pytest.raises(InputError, match="not JSON-serialisable"):  # NaN made the hub refuse every batch
        ob.add("feedback", {"x": math.nan})
    with pytest.raises(UsageError, match="too long for the hub"):  # was queued, then refused at the sync: lost
        ob.add("unknown_part", {"note": "n" * (MAX_PAYLOAD_BYTES + 1)})
    assert ob.pending() == []
    ob.close()


def _payload(**change):
    import base64

    from edge_app.signing import SigningKey

    key = SigningKey.generate()
    keys = {key.key_id: base64.b64encode(key.public_raw).decode()}
    base = {"v": 1, "hub": "http://hub.local:8765", "device": "tab", "site": "site_a", "token": "t0k3n",
            "keys": keys}
    return json.dumps({**base, **change})


@pytest.mark.parametrize("change, what", [
    ({"hub": "ftp://x"}, "http:// or https://"), ({"hub": None}, "hub must be"), ({"token": 123}, "token must be"),
    ({"token": ""}, "token must be"), ({"token": "abc\r\nX-Evil: 1"}, "token must be"),
    ({"keep_free_mb": 1e300}, "keep_free_mb"), ({"keep_free_mb": float("inf")}, "keep_free_mb"),
])
def test_enrolment_refuses_malformed_payloads(tmp_path: Path, change, what) -> None:
    from sync.client import enrol

    with pytest.raises(UsageError, match=what):
        enrol(tmp_path / "dev", _payload(**change))
    assert not (tmp_path / "dev" / "device.json").exists()


def test_enrol_and_sync_commands_give_one_line_errors(tmp_path: Path, capsys) -> None:
    dev = tmp_path / "dev"
    rc, _, err = _run(capsys, "sync", "enrol", '{"v": 1, "x": "' + "a" * 300 + '"}', "--data-dir", dev)
    assert rc == 2 and "incomplete or malformed" in err  # was OSError: the text taken for a file name
    binary = tmp_path / "payload.bin"
    binary.write_bytes(b"\xff\xfe{}")
    rc, _, err = _run(capsys, "sync", "enrol", binary, "--data-dir", dev)
    assert rc == 2 and "not a text file" in err
    dev.mkdir()
    (dev / "device.json").write_text("[]")  # damaged
    rc, _, err = _run(capsys, "sync", "run", "--data-dir", dev)
    assert rc == 2 and "enrol this device again" in err
    rc, _, err = _run(capsys, "sync", "run", "--data-dir", dev, "--keep-free-mb", "nan")
    assert rc == 2 and "--keep-free-mb must be" in err


def test_an_argument_that_is_not_text_is_a_usage_error(tmp_path: Path, capsys) -> None:
    parts, imgs = _csvs(tmp_path / "src", GOOD)
    dbp = tmp_path / "catalogue.db"
    assert _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp)[0] == 0
    rc, _, err = _run(capsys, "catalogue", "list", "--db", dbp, "--text", "\udcff")  # the byte 0xff from a shell
    assert rc == 2 and "not valid UTF-8" in err


def test_an_unknown_site_is_named_as_a_likely_typo(tmp_path: Path, capsys) -> None:
    parts, imgs = _csvs(tmp_path / "src", GOOD)
    dbp = tmp_path / "catalogue.db"
    assert _run(capsys, "catalogue", "import", parts, imgs, "--db", dbp)[0] == 0
    rc, out, err = _run(capsys, "catalogue", "list", "--db", dbp, "--site", "stie_a", "--in-stock")
    assert rc == 0 and "site 'stie_a' has no stock in this catalogue (sites: site_a)" in err
    rc, _, err = _run(capsys, "catalogue", "list", "--db", dbp, "--site", "site_a", "--in-stock")
    assert rc == 0 and "warning" not in err

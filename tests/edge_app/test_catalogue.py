"""CatalogueDB (docs/device_db.md), the CSV importer and the outbox."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from edge_app.errors import InputError, UsageError
from edge_app.runtime.catalogue import SCHEMA_VERSION, CatalogueDB
from edge_app.runtime.importer import import_catalogue
from edge_app.runtime.outbox import Outbox

from . import synthetic as syn


def test_pragmas_and_migrations(tmp_path):
    db = CatalogueDB(tmp_path / "c.db")
    conn = db.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.schema_version == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "parts", "inventory", "images", "embeddings", "schema_migrations"} <= tables
    db.close()
    again = CatalogueDB(tmp_path / "c.db")  # re-opening applies nothing twice
    assert again.db.conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
    again.db.conn.execute("INSERT INTO schema_migrations VALUES (999, 'x')")
    again.close()
    with pytest.raises(InputError, match="newer"):
        CatalogueDB(tmp_path / "c.db")


def test_a_version_1_catalogue_is_migrated_and_keeps_its_rows(tmp_path):
    """A tablet updated from a release whose catalogue had schema 1: migration 2 adds the thumbnail hash
    column; the parts and images it held are untouched."""
    import sqlite3

    from edge_app.runtime.catalogue import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
    conn.execute("BEGIN")
    MIGRATIONS[0][1](conn)  # exactly what release 1 created
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'then')")
    conn.execute("INSERT INTO parts (part_number, name, version) VALUES ('P1', 'bolt', 3)")
    conn.execute("INSERT INTO images (image_id, part_number, path, kind, version) VALUES ('i1', 'P1', 'thumbs/i1.jpg', "
                 "'catalogue', 3)")
    conn.execute("COMMIT")
    conn.close()
    db = CatalogueDB(path)
    try:
        assert db.schema_version == SCHEMA_VERSION >= 2
        row = db.db.conn.execute("SELECT image_id, path, thumb_sha256 FROM images").fetchone()
        assert row == ("i1", "thumbs/i1.jpg", None) and db.part("P1")["name"] == "bolt"
    finally:
        db.close()


def test_not_a_database(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match="bad.db"):
        CatalogueDB(bad)


def test_writes_need_the_transaction_and_roll_back_whole(tmp_path):
    db = CatalogueDB(tmp_path / "c.db")
    with pytest.raises(RuntimeError, match="transaction"):
        db.upsert_parts([{"part_number": "A"}])
    with pytest.raises(InputError):
        with db.transaction():
            db.upsert_parts([{"part_number": "A", "name": "a"}])
            db.set_meta("catalogue_version", 5)
            db.upsert_inventory([{"part_number": "A", "site": "s", "stock": "many"}])  # bad row
    assert db.count("parts") == 0 and db.catalogue_version == 0
    with db.transaction():
        db.upsert_parts([{"part_number": "A", "name": "a", "size_mm": "12.5"}])
        with db.transaction():  # nested joins the outer one
            db.set_meta("catalogue_version", 1)
    assert db.part("A")["size_mm"] == 12.5 and db.catalogue_version == 1
    with pytest.raises(InputError, match="unknown column"):
        with db.transaction():
            db.upsert_parts([{"part_number": "B", "colour": "red"}])


def test_reader_sees_a_snapshot_while_a_writer_works(tmp_path):
    path = tmp_path / "c.db"
    writer, reader = CatalogueDB(path), CatalogueDB(path)
    with writer.transaction():
        writer.upsert_parts([{"part_number": "A"}])
    started, done = threading.Event(), threading.Event()

    def write() -> None:
        with writer.transaction():
            writer.upsert_parts([{"part_number": "B"}])
            started.set()
            done.wait(5)

    t = threading.Thread(target=write)
    t.start()
    started.wait(5)
    assert [p["part_number"] for p in reader.search_parts()] == ["A"]  # WAL: readers are not blocked
    done.set()
    t.join()
    assert [p["part_number"] for p in reader.search_parts()] == ["A", "B"]


def test_embeddings_round_trip_and_labels_are_never_reused(tmp_path):
    db = CatalogueDB(tmp_path / "c.db")
    v = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    with db.transaction():
        db.upsert_parts([{"part_number": "A"}])
        db.upsert_images([{"image_id": f"i{i}", "part_number": "A"} for i in range(4)])
        labels = db.upsert_embeddings([f"i{i}" for i in range(4)], v, "b1")
    got_labels, got = db.all_embeddings("b1")
    np.testing.assert_array_equal(got, v)
    assert got.dtype == np.float32 and got_labels.tolist() == labels.tolist()
    blob = db.db.conn.execute("SELECT vector FROM embeddings WHERE image_id='i0'").fetchone()[0]
    assert blob == v[0].astype("<f4").tobytes()
    with db.transaction():
        db.delete_images(["i3"])
        relabel = db.upsert_embeddings(["i0"], v[:1], "b1")
    assert relabel[0] > labels.max()
    with pytest.raises(InputError, match="NaN"):
        with db.transaction():
            db.upsert_embeddings(["i1"], np.full((1, 8), np.nan, np.float32), "b1")
    with db.transaction():
        db.delete_parts(["A"])
    assert db.count("embeddings") == 0 and db.count("images") == 0


def test_import_generated_layout_and_search(tmp_path):
    cat = syn.write_catalogue(tmp_path / "gen", 6, catalogue_per_part=1, field_per_part=1)
    db = CatalogueDB(tmp_path / "c.db")
    res = import_catalogue(db, cat.parts_csv, cat.images_csv)
    assert res["parts"] == 6 and res["images"] == 6 and res["sites"] == ["site_a", "site_b"]
    assert db.catalogue_version == 1 and db.get_meta("hub_time") == res["as_of"]
    p = db.part("P0004")
    assert p["name"] == "Part 4 gear" and p["size_mm"] == 14.0
    assert {r["site"]: (r["stock"], r["bin"]) for r in p["inventory"]} == {"site_a": (1, "A-04"),
                                                                          "site_b": (5, "B-04")}
    assert [i["kind"] for i in p["images"]] == ["catalogue"]
    assert [r["part_number"] for r in db.search_parts(category="fastener")] == ["P0001", "P0003", "P0005"]
    assert [r["part_number"] for r in db.search_parts(text="NUMBER 3")] == ["P0003"]
    in_a = [r["part_number"] for r in db.search_parts(in_stock=True, site="site_a")]
    assert in_a == ["P0001", "P0002", "P0004", "P0005"]  # i % 3 != 0
    assert [r["part_number"] for r in db.search_parts(in_stock=False, site="site_a")] == ["P0000", "P0003"]
    assert len(db.search_parts(in_stock=True, site="site_b")) == 6
    assert len(db.search_parts(limit=2)) == 2
    with pytest.raises(UsageError):
        db.search_parts(limit=0)
    assert import_catalogue(db, cat.parts_csv)["catalogue_version"] == 2


def test_import_refuses_bad_rows_and_loses_nothing(tmp_path):
    cat = syn.write_catalogue(tmp_path / "gen", 3, catalogue_per_part=1, field_per_part=0)
    db = CatalogueDB(tmp_path / "c.db")
    import_catalogue(db, cat.parts_csv, cat.images_csv)
    bad = tmp_path / "bad.csv"
    bad.write_text(cat.parts_csv.read_text().replace("\nP0001,", "\nP0000,", 1))
    with pytest.raises(InputError, match="bad.csv:3: duplicate"):
        import_catalogue(db, bad)
    bad.write_text(cat.parts_csv.read_text().replace(",11.0,", ",eleven,"))
    with pytest.raises(InputError, match="size_mm"):
        import_catalogue(db, bad)
    with pytest.raises(InputError, match="no such file"):
        import_catalogue(db, tmp_path / "missing.csv")
    assert db.count("parts") == 3 and db.catalogue_version == 1


def test_outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    blob = tmp_path / "photo.jpg"
    blob.write_bytes(b"jpeg")
    a = box.add("feedback", {"query": "q1", "chosen": "P0001"})
    b = box.add("photo", {"part_number": "P0001"}, blob_path=blob)
    box.add("usage", {"part_number": "P0001", "qty": 1}, uuid="00000000-0000-4000-8000-000000000001")
    assert len({a, b}) == 2 and len(a) == 36
    pend = box.pending()
    assert [r["kind"] for r in pend] == ["feedback", "photo", "usage"]
    assert pend[0]["payload"] == {"query": "q1", "chosen": "P0001"} and pend[1]["blob_path"] == str(blob)
    assert box.mark_uploaded(a) and not box.mark_uploaded(a)
    assert [r["uuid"] for r in box.pending()] == [b, "00000000-0000-4000-8000-000000000001"]
    with pytest.raises(UsageError):
        box.add("gossip", {})
    with pytest.raises(InputError):
        box.add("photo", {}, blob_path=tmp_path / "nope.jpg")
    with pytest.raises(sqlite3.IntegrityError):
        box.add("usage", {}, uuid="00000000-0000-4000-8000-000000000001")
    box.close()
    assert Outbox(tmp_path / "outbox.db").count() == 2  # survives reopening


def test_import_refuses_what_it_used_to_take_silently(tmp_path, caplog):
    """Found by an audit of `partlens catalogue import`: each of these imported something else than the file said."""
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "notes.png").write_text("part_number,name\n")  # not an image, named like one
    db = CatalogueDB(tmp_path / "c.db")

    def parts(text):
        (tmp_path / "parts.csv").write_text(text, "utf-8")
        return tmp_path / "parts.csv"

    def images(text):
        (tmp_path / "images.csv").write_text(text, "utf-8")
        return tmp_path / "images.csv"

    good = "part_number,name,stock_s1,bin_s1\nP1,one,3,A\nP2,two,0,B\n"
    for text, msg in (("part_number,name,part_number\nabc,x,y\n", "appears more than once"),
                      ("part_number,name,stock_s1\nP1,one\n", "fewer fields than the header"),
                      ("part_number,name,stock_s1\nP1,one,1_000\n", "not a whole number"),
                      ("part_number,name,stock_s1\nP1,one,\u0663\n", "not a whole number"),
                      ("part_number,name,stock_s1,bin_s2\nP1,one,3,A\n", "bin_s2 without the matching stock_"),
                      ("part_number,name,stock_\nP1,one,3\n", "'stock_' without a site")):
        with pytest.raises(InputError, match=msg):
            import_catalogue(db, parts(text))
    for text, msg in (("path,part_number,kind\na.png,P1,Catalogue\n", "kind 'Catalogue' is not one of"),
                      ("path,part_number\na.png,P1\n./a.png,P2\n", "listed twice"),
                      (f"path,part_number\na.png,P1\n{tmp_path / 'a.png'},P2\n", "listed twice"),
                      ("path,part_number\nnotes.png,P1\n", "notes.png is not an image")):
        with pytest.raises(InputError, match=msg):
            import_catalogue(db, parts(good), images(text))
    with pytest.raises(UsageError, match="unknown image kind"):
        import_catalogue(db, parts(good), images("path,part_number\na.png,P1\n"), kinds=("bogus",))
    assert db.count("parts") == 0  # nothing of the refused imports
    # part numbers in images.csv are read as in parts.csv; NFD (a macOS export) is the same part as NFC
    res = import_catalogue(db, parts(good + "\u00d6L,oil ring,1,C\n"), images("path,part_number\na.png, P1 \n"))
    assert res["images"] == 1 and res["parts_not_in_file"] == 0
    res = import_catalogue(db, parts("part_number,name,stock_s1\nO\u0308L,oil ring,5\n"))
    assert db.count("parts") == 3 and db.part("\u00d6L")["inventory"][0]["stock"] == 5
    assert res["parts_not_in_file"] == 2 and "stay as they were" in caplog.text  # an import never deletes

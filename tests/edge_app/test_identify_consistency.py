"""Identify beside a sync that writes, and what its answer reads (an audit of the device CLI, 23rd session)."""
from __future__ import annotations

import sqlite3
import time

import pytest

from edge_app.errors import UsageError
from edge_app.runtime.catalogue import CatalogueDB, fold_text

from .conftest import EVAL_KNOWN


def test_identify_after_a_change_does_not_wait_for_a_sync_holding_the_write_lock(world, device_db):
    """The first identify after a catalogue change wrote the index stamp through the waiting write path: with a
    sync holding the write lock it failed with "database is busy" after 5 s (exit 10)."""
    from edge_app.runtime.identify import Identifier

    Identifier.open(world.bundle, device_db, world.keyring_path, backend="onnx").db.close()  # set up once
    with CatalogueDB(device_db) as db, db.transaction():
        db.set_meta("catalogue_version", 7)  # a change the index has not seen
    writer = sqlite3.connect(device_db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a sync mid-write
        t0 = time.perf_counter()
        ident = Identifier.open(world.bundle, device_db, world.keyring_path, backend="onnx")
        pn = EVAL_KNOWN[0]
        assert ident.identify([world.field[pn][0]]).matches[0].part_number == pn
        assert time.perf_counter() - t0 < 4.0  # the busy timeout is 5 s
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with CatalogueDB(device_db) as db:
        assert db.set_meta_if_free("k", "v") and db.get_meta("k") == "v"
        other = sqlite3.connect(device_db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            t0 = time.perf_counter()
            assert db.set_meta_if_free("k", "w") is False and time.perf_counter() - t0 < 0.5
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert db.get_meta("k") == "v"
        with db.transaction():  # the busy timeout is back for real writes
            db.set_meta("k", "x")
        assert db.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_a_part_deleted_after_the_ranking_is_not_shown_and_the_answer_reads_one_snapshot(identifier, world,
                                                                                         device_db):
    pn = EVAL_KNOWN[0]
    photo = world.field[pn][0]
    first = identifier.identify([photo], top=3)
    assert first.matches[0].part_number == pn
    identifier.refresh = lambda: None  # the ranking's catalogue as read before the sync below
    with CatalogueDB(device_db) as db, db.transaction():
        db.db.conn.execute("DELETE FROM inventory WHERE part_number = ?", (pn,))
        db.db.conn.execute("DELETE FROM parts WHERE part_number = ?", (pn,))
        db.set_meta("catalogue_version", 99)
        db.set_meta("hub_time", "2026-12-08T01:00:00+00:00")
    res = identifier.identify([photo], top=3)
    shown = [m.part_number for m in res.matches]
    assert pn not in shown and len(shown) == 3 and all(m.name for m in res.matches)  # the next one moved up
    assert shown[:2] == [m.part_number for m in first.matches if m.part_number != pn]
    assert (res.catalogue_version, res.hub_time) == (99, "2026-12-08T01:00:00+00:00")


def test_the_answer_lists_every_site_s_stock_and_the_text_names_them(identifier, world, capsys):
    from edge_app.commands import _fmt_stock

    pn = EVAL_KNOWN[0]
    m = identifier.identify([world.field[pn][0]], top=1).matches[0]
    i = int(pn[1:])
    assert (m.site, m.stock, m.bin) == ("site_a", i % 3, f"A-{i:02d}")  # this tablet's site
    assert [(r["site"], r["stock"], r["bin"]) for r in m.inventory] == [("site_a", i % 3, f"A-{i:02d}"),
                                                                       ("site_b", 5, f"B-{i:02d}")]
    text = _fmt_stock(m.__dict__)
    assert text.startswith(f"{i % 3} in stock at site_a") and f"elsewhere: site_b: 5 @ B-{i:02d}" in text
    assert _fmt_stock({"site": "site_c", "stock": None, "inventory": m.inventory}).startswith(
        "no stock data at site_c (elsewhere: site_a:")


def test_filter_text_is_bounded_and_folds_the_turkish_dotted_i(device_db):
    with CatalogueDB(device_db) as db:
        with pytest.raises(UsageError, match="search text is 60000 characters; at most 500"):
            db.search_parts(text="a" * 60000)
        assert fold_text("İstanbul") == fold_text("istanbul") == fold_text("ISTANBUL") == "istanbul"

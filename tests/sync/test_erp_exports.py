"""Catalogue and stock files as ERP systems and Excel write them (an audit of `hub import`, `hub add-part` and the
device's `catalogue import`): data must never be changed or lost without a word."""
from __future__ import annotations

import logging

import pytest

from edge_app.errors import InputError
from edge_app.runtime.catalogue import CatalogueDB
from edge_app.runtime.importer import import_catalogue

from .helpers import part_image


def _write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


FULL = ("part_number,name,category,manufacturer,description,size_mm,look_alike_group,stock_site_a,bin_site_a\n"
        "000123,Dichtung Ø20,seal,Freudenberg,\"O-ring, 20 mm \"\"NBR\"\"\",20,orings,4,A-1\n"
        "A1,Pump Mk2,pump,Grundfos,centrifugal,50,g1,2,B-2\n")


def test_a_stray_quote_is_refused_with_its_line_not_swallowing_rows(world, tmp_path) -> None:
    """`P4,"Hose 1/2 inch,3,D` swallowed the next rows into one name and took a later row's stock, exit 0."""
    bad = _write(tmp_path / "inch.csv", "part_number,name,stock_site_a,bin_site_a\nP1,Bolt,1,A\n"
                 "P4,\"Hose 1/2 inch,3,D\n" + "".join(f"Q{i},Bolt M8,6,C\n" for i in range(50))
                 + "P6,Pipe 1/2\" BSP,7,B\n")
    before = world.hub.store.version()
    with pytest.raises(InputError, match=r"inch.csv:3: .*must end with one"):  # where the quote opened (a review)
        world.hub.import_csv(bad)
    assert world.hub.store.version() == before
    with pytest.raises(InputError, match="must end with one"):
        import_catalogue(CatalogueDB(tmp_path / "c.db"), bad)
    # an inch mark inside a field (not opening it) is just a character, as before
    ok = _write(tmp_path / "ok.csv", "part_number,name\nP6,Pipe 1/2\" BSP\n")
    world.hub.import_csv(ok)
    assert world.hub.store.part("P6")["name"] == "Pipe 1/2\" BSP"


def test_a_narrower_export_changes_only_its_columns(world, tmp_path) -> None:
    """A stock-only export wiped category, maker, description, size and look-alike group at the hub (and bins
    and sizes on a device); `hub add-part --stock` wiped the part's details and its bin."""
    hub = world.hub
    hub.import_csv(_write(tmp_path / "full.csv", FULL))
    hub.import_csv(_write(tmp_path / "stock.csv", "part_number,name,stock_site_a\n000123,Dichtung Ø20,9\n"))
    p = hub.store.part("000123")
    assert (p["category"], p["manufacturer"], p["size_mm"], p["look_alike_group"]) == ("seal", "Freudenberg", 20.0,
                                                                                        "orings")
    inv = hub.store._rows("SELECT stock, bin FROM inventory WHERE part_number='000123' AND site='site_a'")
    assert inv == [{"stock": 9, "bin": "A-1"}]
    hub.add_part({"part_number": "A1", "name": "Pump Mk2"}, inventory={"site_a": (7, None)})
    a1 = hub.store.part("A1")
    assert (a1["category"], a1["size_mm"], a1["look_alike_group"]) == ("pump", 50.0, "g1")
    assert hub.store._rows("SELECT stock, bin FROM inventory WHERE part_number='A1'") == [{"stock": 7, "bin": "B-2"}]
    hub.set_stock("A1", "site_a", 3)
    assert hub.store._rows("SELECT stock, bin FROM inventory WHERE part_number='A1'") == [{"stock": 3, "bin": "B-2"}]
    # an empty cell in a column the file HAS still means "not known" (cleared)
    hub.import_csv(_write(tmp_path / "blank.csv", "part_number,name,category\nA1,Pump Mk2,\n"))
    assert hub.store.part("A1")["category"] is None and hub.store.part("A1")["size_mm"] == 50.0
    # the device's own import: the same
    db = CatalogueDB(tmp_path / "dev.db")
    import_catalogue(db, tmp_path / "full.csv")
    import_catalogue(db, _write(tmp_path / "qty.csv", "part_number,name,stock_site_a\n000123,Dichtung Ø20,12\n"))
    p = db.part("000123")
    assert p["size_mm"] == 20.0 and p["category"] == "seal"
    assert [(i["stock"], i["bin"]) for i in p["inventory"]] == [(12, "A-1")]


def test_one_picture_for_two_parts_leaves_each_part_its_image(world, tmp_path, caplog) -> None:
    """Two files with the same bytes (a superseded part number, a placeholder photo): the second part took the
    first one's only image (content-named ids), so the first could no longer be identified."""
    hub = world.hub
    (tmp_path / "imgs").mkdir()
    photo = part_image(41)
    for name in ("a.jpg", "copy_of_a.jpg", "again.jpg"):
        (tmp_path / "imgs" / name).write_bytes(photo)
    parts = _write(tmp_path / "parts.csv", "part_number,name\nQ1,valve\nQ2,valve superseded\n")
    images = _write(tmp_path / "images.csv", "path,part_number,kind\nimgs/a.jpg,Q1,catalogue\n"
                    "imgs/copy_of_a.jpg,Q2,catalogue\n")
    with caplog.at_level(logging.WARNING, logger="sync.hub.hub"):
        out = hub.import_csv(parts, images)
    assert out["images"] == 2 and "listed for more than one part" in caplog.text
    owners = sorted(r["part_number"] for r in hub.store.live_images())
    assert owners.count("Q1") == 1 and owners.count("Q2") == 1
    assert all(hub.thumb_path(r["image_id"]).is_file() for r in hub.store.live_images())
    # the same again later, through add-part for a third part: Q1 and Q2 keep theirs
    hub.add_part({"part_number": "Q3", "name": "valve 3"}, images=[tmp_path / "imgs" / "again.jpg"])
    owners = sorted(r["part_number"] for r in hub.store.live_images())
    assert [owners.count(p) for p in ("Q1", "Q2", "Q3")] == [1, 1, 1]
    # re-importing the same files makes no new rows (the ids are stable)
    n = len(hub.store.live_images())
    hub.import_csv(parts, images)
    assert len(hub.store.live_images()) == n


def test_excel_and_erp_spellings_are_read_and_unread_columns_named(world, tmp_path, caplog) -> None:
    hub = world.hub
    # semicolons (Excel with a decimal comma), header in another case and with spaces, trailing empty rows
    semi = _write(tmp_path / "semi.csv", "Part Number;Name;Category;Stock_site_a;Bin_site_a;Kategorie\n"
                  "S1;Sjökabel;cable;3;K-1;x\n;;;;;\n")
    with caplog.at_level(logging.WARNING, logger="edge_app.runtime.importer"):
        out = hub.import_csv(semi)
    assert out["parts"] == 1 and out["inventory"] == 1
    assert hub.store.part("S1")["category"] == "cable" and hub.store.part("S1")["name"] == "Sjökabel"
    assert "Kategorie are not read" in caplog.text
    # UTF-16 with its BOM, tab separated (Excel "Unicode text")
    u16 = _write(tmp_path / "u16.txt", "part_number\tname\nU1\tDichtung Ø20\n", "utf-16")
    assert hub.import_csv(u16)["parts"] == 1 and hub.store.part("U1")["name"] == "Dichtung Ø20"
    # Windows-1252: refused with what to do
    with pytest.raises(InputError, match="CSV UTF-8"):
        hub.import_csv(_write(tmp_path / "cp.csv", "part_number,name\nW1,Dichtung Ø20\n", "cp1252"))


def test_part_numbers_and_sites_that_differ_only_in_case_are_refused(world, tmp_path, caplog) -> None:
    with pytest.raises(InputError, match=r"ABC-1 differs from abc-1 \(line 2\) only in case"):
        world.hub.import_csv(_write(tmp_path / "dup.csv", "part_number,name\nabc-1,a\nABC-1,b\n"))
    with pytest.raises(InputError, match="differ only in case: SITE_A, site_a"):
        world.hub.import_csv(_write(tmp_path / "sites.csv", "part_number,name,stock_site_a,stock_SITE_A\nP,a,1,2\n"))
    # a site the hub does not know, or one it knows under another case, is said at the hub
    world.hub.import_csv(_write(tmp_path / "base.csv", "part_number,name,stock_site_a\nZ1,a,1\n"))
    with pytest.raises(InputError, match=r"only in case: SITE_A \(the hub has site_a\)"):
        world.hub.import_csv(_write(tmp_path / "upper.csv", "part_number,name,stock_SITE_A\nZ1,a,0\n"))
    with caplog.at_level(logging.WARNING, logger="sync.hub.hub"):
        world.hub.import_csv(_write(tmp_path / "new.csv", "part_number,name,stock_depot_9\nZ1,a,0\n"))
    assert "new site(s) depot_9" in caplog.text


def test_re_importing_the_same_export_writes_and_embeds_nothing_again(world, tmp_path) -> None:
    """A nightly ERP import of an unchanged file re-stamped every part and image (and re-embedded every image),
    so every tablet fetched the whole catalogue again (an audit: 200,000 parts, 19 s per tablet)."""
    hub = world.hub
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(part_image(60 + i))
    parts = _write(tmp_path / "parts.csv", "part_number,name,stock_site_a\nR0,a,1\nR1,b,2\nR2,c,3\n")
    images = _write(tmp_path / "images.csv", "path,part_number,kind\n" + "".join(
        f"imgs/{i}.jpg,R{i},catalogue\n" for i in range(3)))
    first = hub.import_csv(parts, images)
    assert (first["parts_changed"], first["images_changed"]) == (3, 3)
    calls = []
    real = hub.embed_rows
    hub.embed_rows = lambda rows, emb: calls.append(len(rows)) or real(rows, emb)
    from edge_app import imageio

    real_load = imageio.load_image
    imageio.load_image = lambda *a, **k: pytest.fail("a stored picture was decoded again")
    try:
        again = hub.import_csv(parts, images)
    finally:
        imageio.load_image = real_load
    assert (again["parts"], again["parts_changed"], again["images"], again["images_changed"]) == (3, 0, 3, 0)
    assert calls == []  # nothing embedded again
    pkg = hub.store.snapshot("site_a", first["version"])
    assert pkg.parts == [] and pkg.images == [] and len(pkg.inventory) == 3  # only the re-dated stock goes out
    _write(tmp_path / "parts.csv", "part_number,name,stock_site_a\nR0,a,1\nR1,b renamed,2\nR2,c,3\n")
    third = hub.import_csv(parts, images)
    assert third["parts_changed"] == 1 and [p["part_number"] for p in hub.store.snapshot(
        "site_a", again["version"]).parts] == ["R1"]


def test_stock_and_bin_words_in_other_columns_are_not_sites(world, tmp_path, caplog) -> None:
    """A review: "Stock Total" became the stock of a site "Total", "Bin Location" refused the file."""
    with caplog.at_level(logging.WARNING, logger="edge_app.runtime.importer"):
        out = world.hub.import_csv(_write(tmp_path / "erp.csv", "part_number,name,stock_site_a,bin_site_a,"
                                          "Stock Total,Bin Location\nT1,Valve,2,A-1,10,Hall 3\n"))
    assert out["inventory"] == 1 and "Stock Total, Bin Location are not read" in caplog.text
    assert world.hub.known_sites() >= {"site_a"} and "Total" not in world.hub.known_sites()


def test_a_part_deleted_and_added_again_starts_without_its_old_details(world, tmp_path) -> None:
    """A review: only the given fields are written now, so a part number deleted and added again got the deleted
    row's description, size, look-alike group and bin back."""
    hub = world.hub
    hub.import_csv(_write(tmp_path / "full.csv", FULL))
    hub.delete_parts(["A1"])
    hub.add_part({"part_number": "A1", "name": "Sensor"}, inventory={"site_a": (2, None)})
    a1 = hub.store.part("A1")
    assert (a1["category"], a1["size_mm"], a1["look_alike_group"], a1["description"]) == (None, None, None, None)
    assert hub.store._rows("SELECT stock, bin FROM inventory WHERE part_number='A1'") == [{"stock": 2, "bin": None}]
    # and --stock SITE=N: clears a bin on purpose (SITE=N keeps it)
    hub.add_part({"part_number": "000123", "name": "Dichtung Ø20"}, inventory={"site_a": (1, "")})
    assert hub.store._rows("SELECT bin FROM inventory WHERE part_number='000123'") == [{"bin": None}]
    from sync.commands import _parse_stock

    assert _parse_stock(["site_a=3", "site_b=4:", "site_c=5:K-1"]) == {
        "site_a": (3, None), "site_b": (4, ""), "site_c": (5, "K-1")}


def test_without_a_model_a_re_import_does_not_resend_the_images(tmp_path) -> None:
    """A review: with no bundle set, every image counted as "not embedded" and went out again each import."""
    from sync.hub.hub import Hub

    from .helpers import make_key

    key_path, _, _ = make_key(tmp_path / "keys")
    hub = Hub.init(tmp_path / "hub", key_path, url="http://127.0.0.1:1")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "0.jpg").write_bytes(part_image(70))
    parts = _write(tmp_path / "parts.csv", "part_number,name\nN0,a\n")
    images = _write(tmp_path / "images.csv", "path,part_number,kind\nimgs/0.jpg,N0,catalogue\n")
    assert hub.import_csv(parts, images)["images_changed"] == 1
    assert hub.import_csv(parts, images)["images_changed"] == 0


def test_a_part_re_added_at_one_site_keeps_its_details_on_later_updates(world) -> None:
    """Its other site's stock row stayed deleted, so the part counted as revived on every later write and each
    update was written whole: a stock change cleared the bin, a rename cleared category and description (an
    audit of sites, 23rd session)."""
    hub = world.hub
    hub.delete_parts(["P0"])
    hub.add_part({"part_number": "P0", "name": "part 0 again", "category": "bolt", "description": "M6 hex"},
                 inventory={"site_a": (5, "A-BIN-5")})
    hub.set_stock("P0", "site_a", 7)
    hub.add_part({"part_number": "P0", "name": "renamed"})
    p0 = hub.store.part("P0")
    assert (p0["name"], p0["category"], p0["description"]) == ("renamed", "bolt", "M6 hex")
    assert hub.store._rows("SELECT site, stock, bin, deleted FROM inventory WHERE part_number='P0' ORDER BY site") \
        == [{"site": "site_a", "stock": 7, "bin": "A-BIN-5", "deleted": 0},
            {"site": "site_b", "stock": 10, "bin": "B0", "deleted": 1}]  # site_b stays gone until written again
    hub.set_stock("P0", "site_b", 3)  # that row revived: written whole (its old bin does not come back)
    assert hub.store._rows("SELECT stock, bin, deleted FROM inventory WHERE part_number='P0' AND site='site_b'") \
        == [{"stock": 3, "bin": None, "deleted": 0}]


def test_a_site_left_out_of_an_export_is_said_and_can_be_retired(world, tmp_path, caplog) -> None:
    """A site dropped from (or renamed in) the ERP export kept its tablets' stock as last imported for ever, and
    nothing told the admin (an audit of sites, 23rd session)."""
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device
    from sync.transport import InMemoryTransport

    hub = world.hub
    payload = add_device(hub, "tab-b", "site_b")
    enrol(tmp_path / "tab-b", payload)
    tab_b = SyncClient(tmp_path / "tab-b", transport=InMemoryTransport(hub, payload["token"]),
                       smoke_test=lambda b: None)
    tab_b.sync()
    with caplog.at_level(logging.WARNING):
        out = hub.import_csv(_write(tmp_path / "renamed.csv", "part_number,name,stock_site_a,stock_quay_b\n"
                                                              "P1,part 1,4,11\n"))
    assert out["stock_sites_not_in_file"] == ["site_b"]
    assert "no stock column for site(s) site_b, which have tablets" in caplog.text and "retire-site" in caplog.text
    res = hub.retire_site("site_b")
    assert res["stock_rows_removed"] == 3 and res["tablets"] == ["tab-b"]
    tab_b.sync()
    with CatalogueDB(tmp_path / "tab-b" / "catalogue.db") as db:
        assert db.db.conn.execute("SELECT count(*) FROM inventory").fetchone()[0] == 0
    with pytest.raises(InputError, match="no stock rows at site 'site_b'"):
        hub.retire_site("site_b")
    assert hub.import_csv(_write(tmp_path / "parts-only.csv", "part_number,name\nP1,part one\n"))[
        "stock_sites_not_in_file"] == []  # a file without stock columns leaves stock alone: nothing to say


def test_a_german_excel_export_with_windows_paths_is_read(world, tmp_path) -> None:
    """A hub admin's first day (an audit, 23rd session): `13,0` was "not a number" and `photos\\a.jpg` "no such
    image"."""
    hub = world.hub
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(part_image(41))
    parts = _write(tmp_path / "parts.csv", "part_number;name;size_mm;stock_site_a\nNUT-M8;Mutter M8;13,0;4\n")
    images = _write(tmp_path / "images.csv", "path;part_number\nphotos\\a.jpg;NUT-M8\n")
    out = hub.import_csv(parts, images)
    assert out["images"] == 1 and hub.store.part("NUT-M8")["size_mm"] == 13.0
    bad = _write(tmp_path / "bad.csv", "part_number;name;size_mm\nX1;x;13mm\n")
    with pytest.raises(InputError, match=r"size_mm '13mm' is not a number \(a decimal point or comma"):
        hub.import_csv(bad)


def test_stock_and_bin_columns_spelled_with_a_space_are_read_as_a_pair(world, tmp_path, caplog) -> None:
    """`Stock site_a;Bin site_a` (an Excel export's spelling) was "not read" and the import went on with no stock
    (an audit of the admin's first day); `Stock Total` alone stays no site."""
    hub = world.hub
    parts = _write(tmp_path / "parts.csv", "Part Number;Name;Stock site_a;Bin site_a;Stock Total\n"
                                           "NUT-M8;Mutter M8;4;A-7;99\n")
    with caplog.at_level(logging.WARNING):
        out = hub.import_csv(parts)
    assert out["inventory"] == 1
    assert hub.store._rows("SELECT site, stock, bin FROM inventory WHERE part_number='NUT-M8'") == [
        {"site": "site_a", "stock": 4, "bin": "A-7"}]
    assert "Stock Total are not read" in caplog.text

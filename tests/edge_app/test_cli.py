"""``partlens identify`` and ``partlens catalogue`` end to end (in-process)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_app.cli import main

from .jsonschema_mini import validate

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "identify_json_schema.json").read_text())


def _run(capsys, *argv):
    rc = main(list(map(str, argv)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_validator_catches_violations():
    assert validate({"schema": "x"}, SCHEMA)  # wrong const and missing keys
    assert validate({"status": "maybe"}, SCHEMA["properties"]["status"] | {"type": "string"})


def test_identify_json_follows_schema(world, device_db, capsys):
    photos = [p for p in world.field["P0011"][:2]]
    rc, out, _ = _run(capsys, "identify", *photos, "--json", "--bundle", world.bundle, "--db", device_db,
                      "--keyring", world.keyring_path, "--backend", "onnx", "--top", "3")
    assert rc == 0
    doc = json.loads(out)
    assert validate(doc, SCHEMA) == []
    assert doc["status"] == "match" and doc["matches"][0]["part_number"] == "P0011" and doc["views"] == 2
    # a no-confident-match result validates too
    rc, out, _ = _run(capsys, "identify", world.field["P0027"][0], "--json", "--bundle", world.bundle, "--db",
                      device_db, "--keyring", world.keyring_path, "--backend", "onnx", "--in-stock",
                      "--category", "gear")
    doc = json.loads(out)
    assert rc == 0 and validate(doc, SCHEMA) == [] and doc["status"] == "no_confident_match"
    assert doc["filters"] == {"in_stock": True, "category": "gear", "text": None}


def test_identify_text_output_and_errors(world, device_db, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PARTLENS_DEVICE_DIR", str(tmp_path / "home"))
    rc, out, _ = _run(capsys, "identify", world.field["P0013"][0], "--bundle", world.bundle, "--db", device_db,
                      "--keyring", world.keyring_path, "--backend", "onnx")
    assert rc == 0
    assert "MATCH" in out and "P0013" in out and "bin A-13" in out and "hub time" in out
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    rc, _, err = _run(capsys, "identify", bad, "--bundle", world.bundle, "--db", device_db, "--keyring",
                      world.keyring_path, "--backend", "onnx")
    assert rc == 3 and "broken.jpg" in err
    rc, _, err = _run(capsys, "identify", bad, "--db", device_db, "--keyring", world.keyring_path)
    assert rc == 3 and "no model bundle installed" in err  # no bundle in the device folder
    rc, _, err = _run(capsys, "identify", world.field["P0013"][0], "--bundle", world.bundle, "--db", device_db,
                      "--keyring", tmp_path / "missing.json")
    assert rc == 3 and "no such keyring file" in err  # a missing file is bad input (3), like a missing bundle:
    rc, _, err = _run(capsys, "identify", world.field["P0013"][0], "--bundle", tmp_path / "nope", "--db", device_db,
                      "--keyring", world.keyring_path)
    assert rc == 3 and "no such bundle folder" in err


def test_identify_text_names_the_sizes_of_size_only_look_alikes(world, device_db, capsys):
    rc, out, _ = _run(capsys, "identify", world.field["P0018"][0], "--bundle", world.bundle, "--db", device_db,
                      "--keyring", world.keyring_path, "--backend", "onnx", "--top", "3")
    line = next(ln for ln in out.splitlines() if ln.startswith("look-alikes differing only in size"))
    assert rc == 0 and "P0018 8 mm" in line and "P0019 12 mm" in line and "not read" in line


def test_catalogue_import_list_show(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PARTLENS_DEVICE_DIR", str(tmp_path / "home"))
    rc, out, _ = _run(capsys, "catalogue", "import", world.cat.parts_csv, world.cat.images_csv, "--site", "site_a")
    assert rc == 0 and "imported 30 parts" in out
    assert (tmp_path / "home" / "catalogue.db").is_file()  # default data dir
    rc, out, _ = _run(capsys, "catalogue", "list", "--category", "gear", "--in-stock", "--json")
    rows = json.loads(out)
    assert rc == 0 and rows and all(r["category"] == "gear" and int(r["part_number"][1:]) % 3 for r in rows)
    rc, out, _ = _run(capsys, "catalogue", "list", "--text", "number 7")
    assert "P0007" in out and "P0017" not in out
    rc, out, _ = _run(capsys, "catalogue", "list", "--limit", "5", "--offset", "5", "--json")  # the second page
    assert rc == 0 and [r["part_number"] for r in json.loads(out)] == [f"P{i:04d}" for i in range(5, 10)]
    rc, _, err = _run(capsys, "catalogue", "list", "--offset", "-1")
    assert rc == 2 and "offset" in err
    rc, out, _ = _run(capsys, "catalogue", "show", "P0005")
    assert rc == 0 and "Part 5 bolt" in out and "A-05" in out
    rc, _, err = _run(capsys, "catalogue", "show", "NOPE")
    assert rc == 3 and "NOPE" in err
    # as the catalogue stores part numbers (NFC, no surrounding spaces), as `list --text` finds them; JSON names
    # the hub time the stock dates from, as the text does (an audit, 23rd session)
    rc, out, _ = _run(capsys, "catalogue", "show", "  P0005 ", "--json")
    assert rc == 0 and json.loads(out)["part_number"] == "P0005" and "hub_time" in json.loads(out)


def test_catalogue_show_takes_a_decomposed_part_number(tmp_path, capsys):
    import unicodedata

    (tmp_path / "parts.csv").write_text("part_number,name,stock_s1\n\u00c4B-1,\u00c4 ring,3\n", "utf-8")
    db = tmp_path / "c.db"
    assert main(["catalogue", "import", str(tmp_path / "parts.csv"), "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["catalogue", "show", unicodedata.normalize("NFD", "\u00c4B-1"), "--db", str(db)]) == 0
    assert "\u00c4 ring" in capsys.readouterr().out
    assert main(["catalogue", "list", "--text", "x" * 501, "--db", str(db)]) == 2
    assert "at most 500" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for argv in (["identify", "--help"], ["catalogue", "--help"], ["catalogue", "import", "--help"],
                 ["catalogue", "list", "--help"], ["catalogue", "show", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_library_chatter_is_kept_off_the_console_unless_asked(monkeypatch, capsys):
    import logging
    import os

    pytree = logging.getLogger("torch.utils._pytree")
    monkeypatch.setattr(pytree, "level", logging.NOTSET)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert main(["-vv", "bench", "--list"]) == 0  # -vv: left alone
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and pytree.level == logging.NOTSET
    assert main(["bench", "--list"]) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1" and pytree.level == logging.ERROR
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own setting wins
    assert main(["bench", "--list"]) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    capsys.readouterr()


def test_identify_and_catalogue_take_the_device_folder(world, device_db, capsys, tmp_path, monkeypatch):
    """``--data-dir`` is the device folder that ``sync`` and ``app`` use: its catalogue, keyring and the bundle
    its active pointer names; nothing is read from the default device folder."""
    import shutil

    monkeypatch.setenv("PARTLENS_DEVICE_DIR", str(tmp_path / "empty"))
    home = tmp_path / "tablet"
    manifest = json.loads((Path(world.bundle) / "manifest.json").read_text())
    shutil.copytree(world.bundle, home / "bundles" / manifest["bundle_id"])
    shutil.copy(device_db, home / "catalogue.db")
    shutil.copy(world.keyring_path, home / "keyring.json")
    (home / "active.json").write_text(json.dumps({"bundle_id": manifest["bundle_id"], "version": 1}))
    rc, out, err = _run(capsys, "identify", world.field["P0013"][0], "--data-dir", home, "--backend", "onnx")
    assert rc == 0 and "P0013" in out and manifest["bundle_id"] in out, err
    rc, out, _ = _run(capsys, "catalogue", "show", "P0013", "--data-dir", home)
    assert rc == 0 and "P0013" in out
    rc, _, err = _run(capsys, "identify", world.field["P0013"][0], "--backend", "onnx")  # the default folder
    assert rc == 3 and str(tmp_path / "empty") in err


def test_an_output_the_terminal_cannot_encode_is_named_as_such(tmp_path, monkeypatch, capsys):
    """It said "an argument is not valid UTF-8 text" (an audit ran `catalogue show` with PYTHONIOENCODING=ascii)."""
    import io
    import sys

    (tmp_path / "parts.csv").write_text("part_number,name,stock_s1\n\u00d6L-12,\u00d6l ring,3\n", "utf-8")
    db = tmp_path / "c.db"
    assert main(["catalogue", "import", str(tmp_path / "parts.csv"), "--db", str(db)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert main(["catalogue", "show", "\u00d6L-12", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "output's encoding (ascii) cannot show" in err and "not valid UTF-8" not in err
    assert main(["catalogue", "show", "\udcff", "--db", str(db)]) == 2  # undecodable bytes in an argument
    assert "an argument is not valid UTF-8 text" in capsys.readouterr().err


def test_parts_added_after_the_bundle_are_named_then_embedded_on_this_computer(world, device_db, capsys):
    """Found by a README walk-through: a part imported with its own photos after the bundle was built was never
    found, with no word. identify now says how many catalogue images are not searched; `catalogue embed` embeds
    them with the bundle's model (as a hub does for a part it adds) and the part is found without retraining."""
    common = ["--bundle", world.bundle, "--db", device_db, "--keyring", world.keyring_path, "--backend", "onnx"]
    pn = "P0027"  # in the device catalogue with its catalogue images; not in the bundle
    rc, out, err = _run(capsys, "identify", world.field[pn][0], "--json", *common)
    assert rc == 0 and pn not in [m["part_number"] for m in json.loads(out)["matches"]]
    assert "catalogue image(s) of 10 part(s) have no vector" in err and "partlens catalogue embed" in err
    rc, out, _ = _run(capsys, "catalogue", "embed", "--json", *common)
    doc = json.loads(out)
    assert rc == 0 and doc["embedded"] == doc["images_without_vectors_before"] > 0
    assert doc["images_without_vectors_after"] == 0
    rc, out, err = _run(capsys, "identify", world.field[pn][0], "--json", *common)
    assert rc == 0 and json.loads(out)["matches"][0]["part_number"] == pn and "no vector" not in err
    rc, out, _ = _run(capsys, "catalogue", "embed", *common)  # nothing left: nothing done
    assert rc == 0 and out.startswith("embedded 0 catalogue image(s)")

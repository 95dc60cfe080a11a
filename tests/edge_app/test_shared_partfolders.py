"""Part numbers as folder names: safe on every desktop OS, and read back unchanged."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_app.errors import InputError, UsageError
from edge_app.partfolders import part_folder, part_from_folder

NAMES = ["P1", "DIN 934/M8", "6204:2RS", r"a\b", "50%", ".hidden", "ends.", "ends ", 'x*?"<>|', "tab\there",
         "Ø12 Mutter", "plain-name_1.5"]


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_safe(name: str) -> None:
    folder = part_folder(name)
    # read back as the catalogue stores part numbers (stripped: "ends " is the part "ends"; an audit found a bundle
    # with vectors for "trail " that the catalogue knew as "trail")
    assert part_from_folder(folder) == name.strip()
    assert not set(folder) & set('/\\:*?"<>|') and not folder.startswith(".")
    assert not folder.endswith((".", " ")) and all(ord(c) >= 32 for c in folder)


def test_ordinary_names_are_unchanged_and_empty_is_refused() -> None:
    assert part_folder("P1") == "P1" and part_folder("Ø12 Mutter") == "Ø12 Mutter"
    assert part_from_folder("no percent here") == "no percent here"
    with pytest.raises(UsageError):
        part_folder(" ")


def test_readers_decode_folder_names(tmp_path: Path) -> None:
    from PIL import Image

    from export.catalogue import images_from_dir
    from training.data import load_image_folder

    for name in ("DIN 934/M8", "P1"):
        d = tmp_path / "root" / part_folder(name)
        d.mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(d / "a.jpg")
    assert sorted(load_image_folder(tmp_path / "root").labels) == ["DIN 934/M8", "P1"]
    assert sorted(i.part_number for i in images_from_dir(tmp_path / "root")) == ["DIN 934/M8", "P1"]
    # two folders that name one class are refused, not merged silently
    clash = tmp_path / "root" / "P%31"
    clash.mkdir()
    Image.new("RGB", (8, 8)).save(clash / "b.jpg")
    with pytest.raises(InputError, match="name the same class"):
        load_image_folder(tmp_path / "root")

"""Part numbers as folder names and back, for ImageFolder layouts (``root/<part_number>/*.jpg``).

Real part numbers hold characters a folder name cannot (``DIN 934/M8``, ``6204:2RS``): written as
they are, ``/`` would nest folders and the part would come back as ``M8``. Exports therefore
percent-encode the characters that are unsafe in a file name on Linux, macOS or Windows (and
``%`` itself, and a leading ``.``, which hides the folder); readers decode folder names with
:func:`part_from_folder`. A folder name without ``%`` reads as itself, so hand-made folders are
unaffected.
"""
from __future__ import annotations

import unicodedata
from urllib.parse import unquote

from .errors import UsageError

_UNSAFE = set('/\\%:*?"<>|')


def part_folder(part_number: str) -> str:
    """The folder name for ``part_number`` (unsafe characters as ``%XX``; round-trips)."""
    if not part_number or not part_number.strip():
        raise UsageError("an empty part number has no folder name")
    out = []
    for i, ch in enumerate(part_number):
        unsafe = ch in _UNSAFE or ord(ch) < 32 or ord(ch) == 127 or (i == 0 and ch == ".")
        out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")) if unsafe else ch)
    name = "".join(out)
    if name[-1] in " .":  # Windows drops trailing dots and spaces
        name = name[:-1] + f"%{ord(name[-1]):02X}"
    return name


def part_from_folder(name: str) -> str:
    """The part number a folder name stands for (inverse of :func:`part_folder`), in the form the catalogue
    stores part numbers: Unicode NFC and stripped (macOS writes "Ö" in folder names as two code points; a bundle
    built from such folders held vectors for parts the device's catalogue did not know, an audit)."""
    return normal_part_number(unquote(name) if "%" in name else name)


def normal_part_number(text: str) -> str:
    """A part number as the catalogue stores it: Unicode NFC, without surrounding spaces."""
    return unicodedata.normalize("NFC", text).strip()

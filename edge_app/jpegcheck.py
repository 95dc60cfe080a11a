"""Two signs that a JPEG was cut short, which Pillow decodes without a word.

libjpeg fills whatever a file lacks with zero coefficients ("uniform gray for the remainder", libjpeg's own
comment): a photo copied half-way, with or without an end marker after the cut, or a header claiming 8900x8900
over 3 kB of data, decoded into a flat grey picture and was identified as if it were a photo.

- :func:`too_short`: a Huffman-coded JPEG (baseline, extended or progressive; nearly every camera's) spends at
  least one bit on every 8x8 block's DC code, so a file smaller than ``blocks / 8`` bytes cannot be complete.
  This is a hard bound: it never refuses a whole file.
- :func:`grey_tail_rows`: a baseline JPEG cut mid-scan ends in full-width rows of exactly (128, 128, 128). No
  photo of 8,044 checked here (the shared datasets' 6,416 and 1,628 generated ones) ends in even one such row,
  but a whole picture on a #808080 backdrop does (an audit: a render refused at the hub blocked a model change),
  and the pixels cannot tell the two apart: the caller decides (``load_image(strict_tail=...)``).
  A progressive JPEG cut short decodes blurred rather than grey and is not recognised.
"""
from __future__ import annotations

import math
import struct
from typing import BinaryIO

import numpy as np

#: SOF markers of Huffman-coded JPEGs whose DC codes take at least one bit a block: baseline, extended, progressive
_HUFFMAN_SOF = (0xC0, 0xC1, 0xC2)
_ANY_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are not frames
_MAX_HEADER_SEGMENTS = 512


def _frame(fh: BinaryIO, start: int) -> tuple[int, int, int, list[tuple[int, int]]] | None:
    """``(marker, width, height, [(h, v) sampling per component])`` of the first frame header, or None."""
    fh.seek(start)
    if fh.read(2) != b"\xff\xd8":
        return None
    for _ in range(_MAX_HEADER_SEGMENTS):
        b = fh.read(1)
        while b == b"\xff":  # fill bytes before a marker
            b = fh.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM, RSTn: no length
            continue
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        (length,) = struct.unpack(">H", raw)
        if marker in _ANY_SOF:
            body = fh.read(length - 2)
            if len(body) < 6:
                return None
            height, width, n = struct.unpack(">HHB", body[1:6])
            comps = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(n) if len(body) >= 9 + 3 * i]
            return marker, width, height, comps
        if marker in (0xD9, 0xDA) or length < 2:  # EOI or a scan before any frame: malformed, Pillow decides
            return None
        fh.seek(length - 2, 1)
    return None


def too_short(fh: BinaryIO, start: int = 0) -> tuple[int, int] | None:
    """``(file bytes, least bytes a complete file needs)`` when the JPEG at ``start`` in ``fh`` is Huffman-coded
    and too small to hold every block it declares, else None. Leaves ``fh`` at ``start``."""
    try:
        frame = _frame(fh, start)
        size = fh.seek(0, 2) - start
    finally:
        fh.seek(start)
    if frame is None:
        return None
    marker, width, height, comps = frame
    if marker not in _HUFFMAN_SOF or not comps or width == 0 or height == 0:
        return None
    hmax = max(h for h, _ in comps) or 1
    vmax = max(v for _, v in comps) or 1
    mcus = math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
    need = mcus * sum(h * v for h, v in comps) // 8
    return (size, need) if size < need else None


def grey_tail_rows(img) -> int:  # noqa: ANN001 - a loaded Pillow image
    """How many full rows at the bottom of ``img`` (mode RGB or L) are exactly 128 in every channel; 0 at once
    for nearly every image (only its last row is read unless that row is all grey)."""
    w, h = img.size

    def grey(rows: int) -> bool:
        return bool((np.asarray(img.crop((0, h - rows, w, h))) == 128).all())

    if h == 0 or not grey(1):
        return 0
    lo, hi = 1, h  # grey(lo) holds; find the largest such rows count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if grey(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo

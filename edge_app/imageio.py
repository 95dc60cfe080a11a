"""Decoding real phone photos safely: EXIF orientation, odd modes, draft mode, bombs.

Every error names the file. Nothing here imports torch or Kivy.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from .errors import ImageError, InputError

log = logging.getLogger(__name__)

#: A 12 MP phone photo is 12e6 px; 50 MP sensors exist. Anything above this is refused.
DEFAULT_MAX_PIXELS = 80_000_000
#: Files bigger than this are refused before decoding.
DEFAULT_MAX_BYTES = 60 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _open_source(src: str | os.PathLike[str] | bytes | BinaryIO, max_bytes: int) -> tuple[BinaryIO, str]:
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise ImageError("<bytes>", "empty image data (0 bytes)")
        if len(src) > max_bytes:
            raise ImageError("<bytes>", f"image data is {len(src)} bytes, over the {max_bytes} byte limit")
        return io.BytesIO(bytes(src)), "<bytes>"
    if hasattr(src, "read"):
        return src, getattr(src, "name", "<stream>")  # type: ignore[return-value]
    path = Path(src)
    if not path.exists():
        raise ImageError(path, "no such file")
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    if size > max_bytes:
        raise ImageError(path, f"file is {size} bytes, over the {max_bytes} byte limit")
    try:
        return open(path, "rb"), str(path)
    except OSError as exc:  # e.g. no permission to read it
        raise ImageError(path, f"cannot be opened ({exc.strerror or exc})") from None


def to_rgb(img: "Image.Image", background: tuple[int, int, int] = (255, 255, 255)) -> "Image.Image":  # noqa: F821
    """Any Pillow mode -> 8-bit RGB. Alpha is composited over ``background``."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return img.convert("RGB")


def load_image(
    src: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> "Image.Image":  # noqa: F821
    """Decode an image to upright 8-bit RGB.

    ``draft_size`` (width, height) lets JPEGs decode at a reduced scale (DCT scaling), which is
    what keeps a 12 MP photo fast and small in memory. Raises :class:`ImageError` naming the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    fh, name = _open_source(src, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(fh)
            except UnidentifiedImageError:
                raise ImageError(name, "not a recognised image format (corrupt or not an image)") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError(name, f"refused as a decompression bomb: {exc}") from None
            except OSError as exc:
                raise ImageError(name, f"cannot read image: {exc}") from None
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(name, f"invalid dimensions {w}x{h}")
            if w * h > max_pixels:
                raise ImageError(
                    name, f"refused as a decompression bomb: {w}x{h} = {w * h} pixels is over the {max_pixels} limit"
                )
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            try:
                img.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageError(name, f"truncated or corrupt image data: {exc}") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError(name, f"refused as a decompression bomb: {exc}") from None
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as exc:  # a broken EXIF block must not lose the photo
                log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
            return to_rgb(img)
    finally:
        if not isinstance(src, (bytes, bytearray)) and not hasattr(src, "read"):
            fh.close()


def iter_image_files(root: str | os.PathLike[str]) -> list[Path]:
    """All image files under ``root`` (sorted). A missing path or an empty folder is an error."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{root}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_many(
    paths: Iterable[str | os.PathLike[str]], **kwargs: object
) -> tuple[list[tuple[Path, "Image.Image"]], list[tuple[Path, str]]]:  # noqa: F821
    """Decode many images; unreadable ones are skipped and returned with the reason."""
    good: list[tuple[Path, "Image.Image"]] = []  # noqa: F821
    bad: list[tuple[Path, str]] = []
    for p in paths:
        try:
            good.append((Path(p), load_image(p, **kwargs)))  # type: ignore[arg-type]
        except ImageError as exc:
            log.warning("skipping %s", exc)
            bad.append((Path(p), exc.reason))
    return good, bad

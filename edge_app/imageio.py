"""Decoding real phone photos safely: EXIF orientation, odd modes, draft mode, bombs.

Every error names the file. Nothing here imports torch or Kivy.
"""
from __future__ import annotations

import errno
import functools
import io
import logging
import os
import stat
import struct
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from . import jpegcheck
from .errors import ImageError, InputError

log = logging.getLogger(__name__)

#: A 12 MP phone photo is 12e6 px; 50 MP sensors exist. Anything above this is refused.
#: serialises load_image's warnings.catch_warnings (process-wide state, not thread-safe)
_WARNINGS_LOCK = threading.Lock()
DEFAULT_MAX_PIXELS = 80_000_000
#: Files bigger than this are refused before decoding.
DEFAULT_MAX_BYTES = 60 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: the Pillow formats read as photos (what IMAGE_SUFFIXES name; the JPEG opener also gives MPO, a JPEG with a gain
#: map). Nothing else is even parsed: Pillow's other plugins (DDS, PSD, ICO, ...) are attack surface for a file a
#: tablet sends, and a DDS header escaped every decode guard as NotImplementedError (an audit, 21st session)
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
#: the file suffix for each photo format (content, not the name a file came with, decides)
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                 "GIF": ".gif"}


def read_image_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the image file at ``path``, after the checks :func:`load_image` makes before reading (a
    regular file, not empty, at most ``max_bytes``): a link to ``/dev/zero`` or a 1.5 GB file was read whole."""
    fh, name = _open_source(path, max_bytes)
    with fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # it grew since the size check
        raise ImageError(name, f"file is over the {max_bytes} byte limit")
    return data


def image_format(data: bytes) -> str | None:
    """The photo format of ``data`` (a key of :data:`FORMAT_SUFFIX`) from its header, or None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as img:
            return img.format
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse: not a photo format
        return None


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
    try:
        st = path.stat()
    except OSError as exc:  # missing, a dangling link, a symlink loop, no permission on a folder on the way
        raise ImageError(path, "no such file" if exc.errno == errno.ENOENT
                         else f"cannot be opened ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(path, "is not a regular file (a pipe, socket or device), not an image")
    size = st.st_size
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
    if mode.startswith("I;16"):  # 16-bit grey: the high byte, 3 bytes a pixel beside the decoded image
        arr = np.asarray(img)
        return Image.fromarray((arr >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(np.asarray(img), mode), "L").convert("RGB")
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


def _grey_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """32-bit integer or float grey -> uint8 in float32 (4 bytes a pixel): 0..255 as is, 0..65535 as 16-bit,
    floats in 0..1 as unit range, anything else (negative values, other ranges) stretched min..max."""
    a = np.nan_to_num(arr.astype(np.float32, copy=True), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and mode == "F" and hi <= 1.0:
        a *= 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a *= 255.0 / 65535.0
    elif hi > lo:
        a -= lo
        a *= 255.0 / (hi - lo)
    a += 0.5
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _reduce(img: "Image.Image", size: tuple[int, int] | None) -> "Image.Image":  # noqa: F821
    """Shrink by the largest whole factor that keeps ``size`` (width, height) or more, as JPEG draft mode does
    for JPEGs: formats decoded at full size then take little memory downstream. Unchanged when the mode has
    no reduce (palette, 16-bit) or no factor of 2 or more fits."""
    if size is None:
        return img
    w, h = img.size
    factor = min(w // max(1, size[0]), h // max(1, size[1]))
    if factor < 2:
        return img
    try:
        return img.reduce(factor)
    except ValueError:  # this mode has no reduce
        return img


#: what Pillow's format plugins raise on a malformed header besides OSError (a text file that starts like a
#: PPM header gives ValueError, a broken TIFF IFD struct.error, ...)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error,
                  ZeroDivisionError, OverflowError, NotImplementedError)


def load_image(
    src: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    strict_tail: bool = False,
) -> "Image.Image":  # noqa: F821
    """Decode an image to upright 8-bit RGB.

    ``draft_size`` (width, height) lets JPEGs decode at a reduced scale (DCT scaling), which is
    what keeps a 12 MP photo fast and small in memory. Raises :class:`ImageError` naming the file.

    A baseline JPEG whose bottom rows decode as exactly mid-grey may have been cut short (an end marker
    after the cut) or may be a whole picture on a #808080 backdrop: the pixels cannot tell. ``strict_tail``
    refuses it (where the tablet stores a NEW photo: the engineer can copy it again or retake it); otherwise it
    is logged and decoded (a catalogue render on grey refused at the hub blocked a model change, an audit).
    """
    from PIL import Image

    fh, name = _open_source(src, max_bytes)
    try:
        # catch_warnings changes process-wide state: two threads interleaving it left a permanent "always" filter
        # (an audit: 2 runs of 3 with 4 threads); one decode at a time under it
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = _decode(fh, name, draft_size, max_pixels, strict_tail)
            except MemoryError:
                raise ImageError(name, "too large to decode in the memory this device has free") from None
        for w in caught:  # Pillow's "Corrupt EXIF data", "Truncated File Read", ...: the file's own business
            log.debug("%s: %s", name, w.message)
        return img
    finally:
        if not isinstance(src, (bytes, bytearray)) and not hasattr(src, "read"):
            fh.close()


def _decode(fh: BinaryIO, name: str, draft_size: tuple[int, int] | None,
            max_pixels: int, strict_tail: bool = False) -> "Image.Image":  # noqa: F821
    from PIL import Image, UnidentifiedImageError

    try:
        start = fh.tell()
        img = Image.open(fh, formats=PHOTO_FORMATS)
    except UnidentifiedImageError:
        if _is_heif(fh):  # a phone set to "high efficiency": not corrupt, just a format Pillow does not read here
            raise ImageError(name, HEIF_MESSAGE) from None
        raise ImageError(name, f"not a recognised image format (corrupt or not an image; reads "
                               f"{', '.join(PHOTO_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, f"refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(name, f"cannot read image: {type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(name, f"invalid dimensions {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(name, f"refused as a decompression bomb: {w}x{h} = {w * h} pixels is over the "
                               f"{max_pixels} limit")
    # the EXIF orientation before decoding: draft() scales the STORED image, so a sideways photo (5-8) needs the
    # upright size swapped (it decoded at half the asked-for scale, and its crop came out smaller than upright)
    orientation = _orientation(img, name)
    stored = draft_size if draft_size is None or orientation < 5 else (draft_size[1], draft_size[0])
    # MPO: a JPEG carrying a second image (Ultra HDR / HDR gain maps of recent phones): the same draft decoding
    jpeg = img.format in ("JPEG", "MPO")
    if jpeg and (short := jpegcheck.too_short(fh, start)) is not None:
        raise ImageError(name, f"cut short: the file holds {short[0]} bytes, fewer than any complete {w}x{h} JPEG "
                               f"needs ({short[1]}); copy it again or take the photo again")
    if stored is not None and jpeg:
        img.draft("RGB", stored)
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, f"refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(name, f"truncated or corrupt image data: {exc}") from None
    if jpeg and not img.info.get("progressive") and img.mode in ("RGB", "L") and (
            rows := jpegcheck.grey_tail_rows(img)):
        share = 100 * rows / img.size[1]
        what = ("decodes as a flat grey picture (#808080) with nothing in it: its data is missing (a cut copy) or "
                "it is blank" if rows == img.size[1] else
                f"may be cut short: the last {share:.0f}% of its rows decode as flat grey (#808080), as the "
                "missing part of a cut JPEG does")
        if strict_tail:
            raise ImageError(name, what + "; copy it again or take the photo again")
        log.warning("%s %s (or it is a picture on a mid-grey backdrop); used as it is", name, what)
    img = _reduce(img, stored)  # formats decoded whole shrink before anything copies them (a no-op on drafts)
    img = _to_srgb(img, name)  # after the reduce: the colour transform then costs little
    if orientation != 1:  # only a photo that is not upright is copied
        t = Image.Transpose
        img = img.transpose({2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE,
                             6: t.ROTATE_270, 7: t.TRANSVERSE, 8: t.ROTATE_90}[orientation])  # as exif_transpose
    return _reduce(to_rgb(img), draft_size)  # modes with no reduce of their own (palette, 16-bit)


HEIF_MESSAGE = ("HEIC/HEIF/AVIF photos are not supported: set the camera to JPEG (\"most compatible\") or "
                "convert the photo")


#: ICC colour spaces this module converts to sRGB, by Pillow mode
_ICC_SPACES = {"RGB": "RGB", "CMYK": "CMYK"}
_icc_unavailable_logged = False


def _to_srgb(img: "Image.Image", name: str) -> "Image.Image":  # noqa: F821
    """Pixels in sRGB when the file carries another ICC profile (Display P3 from iPhones and recent Android
    cameras, Adobe RGB from DSLRs, a press CMYK profile): read as if sRGB, a P3 catalogue photo at the hub would be
    duller than the tablet's sRGB photo of the same part, and colour is what tells a 220R resistor from a 470R
    one. A profile that cannot be read, or a Pillow without LittleCMS, leaves the pixels as they are."""
    global _icc_unavailable_logged
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in _ICC_SPACES:
        return img
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without LittleCMS
        if not _icc_unavailable_logged:
            log.warning("this Pillow has no ImageCms (LittleCMS): photos with a colour profile are read as sRGB")
            _icc_unavailable_logged = True
        return img
    transform = _srgb_transform(bytes(icc), img.mode)
    if transform is None:
        return img
    try:
        return ImageCms.applyTransform(img, transform)
    except Exception as exc:  # noqa: BLE001 - never lose a photo over its colour profile
        log.warning("%s: colour profile not applied (%s)", name, exc)
        return img


@functools.lru_cache(maxsize=16)
def _srgb_transform(icc: bytes, mode: str) -> object | None:
    """The LittleCMS transform from ``icc`` to sRGB for images of ``mode`` (built once per profile), or None
    when there is nothing to do (already sRGB) or the profile cannot be used."""
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = src.profile.xcolor_space.strip()
        if space != _ICC_SPACES[mode]:
            return None
        if space == "RGB" and "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return None  # what the pixels are read as anyway
        return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), mode, "RGB")
    except Exception as exc:  # noqa: BLE001 - a damaged or exotic profile: the pixels as they are
        log.debug("unusable colour profile (%s)", exc)
        return None


def _is_heif(fh: BinaryIO) -> bool:
    """An ISO-BMFF image (HEIC, HEIF, AVIF): ``ftyp`` box with one of their brands at the start."""
    try:
        fh.seek(0)
        head = fh.read(12)
    except (OSError, ValueError):
        return False
    return head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif",
                                                    b"avis")


def _orientation(img: "Image.Image", name: str) -> int:  # noqa: F821
    """The EXIF orientation 1-8; 1 (upright) when absent or unreadable (a broken EXIF must not lose the photo)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception as exc:  # Pillow raises many kinds on broken EXIF blocks
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


#: folders that file managers and NAS boxes fill with thumbnails of the real photos
JUNK_FOLDERS = ("@eaDir", "__MACOSX", "Thumbs.db")


def header_error(path: str | os.PathLike[str]) -> str | None:
    """Why Pillow cannot read the header of the image file at ``path`` (cheap: nothing is decoded), or None when
    it can. For checks over many files (an import, a training set), not for decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=PHOTO_FORMATS) as img:
            img.size  # noqa: B018 - the header is parsed
    except UnidentifiedImageError as exc:
        try:
            with open(path, "rb") as fh:
                if _is_heif(fh):
                    return HEIF_MESSAGE
        except OSError:
            pass
        return str(exc) or type(exc).__name__
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        return str(exc) or type(exc).__name__
    return None


def is_hidden(rel: str | os.PathLike[str]) -> bool:
    """True for a path (relative to a dataset or photo folder) that no one put there as a photo: a hidden file
    or folder (``.thumbs/``, macOS ``._IMG_1.jpg``) or a NAS/archive thumbnail folder."""
    return any(part.startswith(".") or part in JUNK_FOLDERS for part in Path(rel).parts)


def log_unread_files(root: Path, files: Iterable[Path]) -> None:
    """Say which files under ``root`` are not read as images because of their type (e.g. HEIC from a phone)."""
    from collections import Counter

    other = Counter(p.suffix.lower() or "(no suffix)" for p in files
                    if p.suffix.lower() not in IMAGE_SUFFIXES and not is_hidden(p.relative_to(root)))
    said = (str(root), tuple(sorted(other.items())))
    if other and said not in _UNREAD_SAID:  # once per process (a train run lists its folder three times)
        _UNREAD_SAID.add(said)
        log.warning("%s: %d file(s) not read as images (%s; read: %s)", root, sum(other.values()),
                    ", ".join(f"{n} {suffix}" for suffix, n in other.most_common(5)), " ".join(IMAGE_SUFFIXES))


_UNREAD_SAID: set[tuple[str, tuple[tuple[str, int], ...]]] = set()


def iter_image_files(root: str | os.PathLike[str]) -> list[Path]:
    """All image files under ``root`` (sorted). A missing path or an empty folder is an error."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not is_hidden(p.relative_to(root)))
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

"""Photos on the tablet: each capture is the file as taken (never modified) plus a small JSON record (source,
crop). Written atomically the moment it exists; camera photos taken while Android had stopped the app are adopted
at the next start; files no record owns are pruned. No Kivy imports (the app and the services share it)."""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import os
import time
import uuid as _uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import storage
from .atomic import atomic_write_bytes, atomic_write_json
from .errors import ImageError, InputError, PartlensError, StorageError, UsageError
from .imageio import load_image, read_image_file
from .storage import disk_full_is_storage_error, mb

log = logging.getLogger(__name__)

#: below this much free space an unreadable camera photo is reported as "storage full"
LOW_SPACE_BYTES = 16 * 1024**2
#: the longest side of a capture's screen copy (see CaptureStore.view_path)
VIEW_MAX_SIDE = 1600
CAPTURE_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Capture:
    """One photo of the part as taken (never modified) plus the crop the engineer chose."""

    capture_id: str
    path: str
    source: str  # camera | file
    created_at: str
    crop: tuple[float, float, float, float] | None = None  # (left, top, right, bottom) in 0..1 of the image

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop"] = list(self.crop) if self.crop else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Capture":
        crop = d.get("crop")
        return cls(str(d["capture_id"]), str(d["path"]), str(d.get("source", "file")), str(d.get("created_at", "")),
                   tuple(float(v) for v in crop) if crop else None)  # type: ignore[arg-type]


def validate_crop(crop: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """``None`` or a (left, top, right, bottom) box inside the unit square with a positive area."""
    if crop is None:
        return None
    if len(crop) != 4:
        raise UsageError(f"a crop is (left, top, right, bottom), got {list(crop)}")
    l, t, r, b = (float(v) for v in crop)
    if not (0.0 <= l < r <= 1.0 and 0.0 <= t < b <= 1.0):
        raise UsageError(f"crop {[l, t, r, b]} is not a box inside the image (0 <= left < right <= 1, same for y)")
    return (l, t, r, b)


class CaptureStore:
    """Photos on disk: ``<root>/<id><ext>`` (bytes as taken) and ``<root>/<id>.json`` (source, crop)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new_path(self, suffix: str = ".jpg") -> tuple[str, Path]:
        """An id and a path for the camera to write into directly (Android camera intents)."""
        cid = _uuid.uuid4().hex
        return cid, self.root / f"{cid}{suffix}"

    def camera_path(self, suffix: str = ".jpg") -> tuple[str, Path]:
        """:meth:`new_path` for the camera app, remembered on disk (``<id>.camera``) until :meth:`adopt`: if
        Android stops partlens while the camera is open (it often does, to free memory), the photo it took is
        adopted at the next start (:meth:`recover_camera`) instead of being lost and never deleted."""
        cid, path = self.new_path(suffix)
        atomic_write_json(self.root / f"{cid}.camera", {"path": str(path), "created_at": _now()})
        return cid, path

    def remember_camera_uri(self, capture_id: str, uri: str) -> None:
        """Record where the camera app writes this photo (an Android ``content://`` item), so that
        :meth:`recover_camera` can fetch it if partlens is stopped while the camera is open."""
        marker = self.root / f"{capture_id}.camera"
        try:
            doc = json.loads(marker.read_text())
        except (OSError, ValueError):
            doc = {"path": str(self.root / f"{capture_id}.jpg"), "created_at": _now()}
        atomic_write_json(marker, {**doc, "uri": str(uri)})

    def recover_camera(self, fetch: Callable[[str, Path], bool] | None = None) -> list[Capture]:
        """Photos the camera wrote for a partlens that was stopped before it got them back (see
        :meth:`camera_path`): adopted now, oldest first. ``fetch(uri, path)`` copies a photo the camera wrote
        to a remembered content item (Android) into ``path``. A camera that wrote nothing, or an unreadable
        file, only clears its record."""
        found = []
        for marker in sorted(self.root.glob("*.camera"), key=lambda p: p.stat().st_mtime):
            cid = marker.stem
            uri = None
            try:
                doc = json.loads(marker.read_text())
                path = Path(doc["path"])
                uri = doc.get("uri")
            except (OSError, ValueError, KeyError, TypeError):
                path = self.root / f"{cid}.jpg"
            if self._sidecar(cid).exists():  # adopted already (stopped before the record was cleared)
                marker.unlink(missing_ok=True)
                continue
            if uri and fetch is not None:  # also when the copy was made: the shared item is deleted
                try:
                    fetch(str(uri), path)
                except Exception as exc:  # noqa: BLE001 - a platform error: the record is cleared below
                    log.warning("camera photo %s could not be fetched from %s: %s", cid, uri, exc)
            if path.is_file() and path.stat().st_size:
                try:
                    found.append(self.adopt(cid, path))
                    log.info("recovered camera photo %s taken before the app stopped", cid)
                    continue
                except PartlensError as exc:
                    log.warning("camera photo %s taken before the app stopped is unusable: %s", cid, exc)
            marker.unlink(missing_ok=True)
        return found

    def prune_orphans(self, min_age_s: float = 3600.0, now: float | None = None) -> int:
        """Delete files no capture record or camera record owns, older than ``min_age_s`` (a photo a QR scan
        left, a temp file of a write that was killed); younger ones may still be being written. Returns how many."""
        now = time.time() if now is None else now
        owned = {p.stem for p in self.root.glob("*.json")} | {p.stem for p in self.root.glob("*.camera")}
        removed = 0
        for p in self.root.iterdir():
            if not p.is_file() or p.suffix in (".json", ".camera"):
                continue
            cid = p.name.lstrip(".").split(".")[0]
            if p.name.endswith(".crop.jpg"):
                continue  # upload copies: pruned with their records (prune_captures)
            if (cid in owned and not p.name.startswith(".")) or now - p.stat().st_mtime < min_age_s:
                continue
            p.unlink(missing_ok=True)
            removed += 1
        return removed

    def view_path(self, cap: Capture) -> str:
        """An upright copy of the photo for the screen, at most VIEW_MAX_SIDE px (``<id>.view.jpg``, made once).

        The screen must show what the crop box refers to: :meth:`cropped_image` applies the EXIF orientation
        (phone and tablet cameras store photos sideways with a tag), and Kivy's image loader does not, so the
        engineer would cut one region on screen and the model and the hub would get another. A small copy
        also keeps a 48 MP photo from blocking the screen while it loads. Falls back to the photo itself if
        the copy cannot be made (the crop box is then only right for upright photos)."""
        view = self.root / f"{cap.capture_id}.view.jpg"
        if view.is_file():
            return str(view)
        try:
            self._write_view(cap.capture_id, load_image(cap.path, draft_size=(VIEW_MAX_SIDE, VIEW_MAX_SIDE)))
        except (InputError, StorageError, OSError) as exc:
            log.warning("no screen copy of capture %s (%s); showing the photo itself", cap.capture_id, exc)
            return cap.path
        return str(view)

    def _write_view(self, capture_id: str, img: "Image.Image") -> None:  # noqa: F821
        img = img.copy()
        img.thumbnail((VIEW_MAX_SIDE, VIEW_MAX_SIDE))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        with disk_full_is_storage_error(self.root, "storing the photo's screen copy"):
            atomic_write_bytes(self.root / f"{capture_id}.view.jpg", buf.getvalue(), overwrite=True)

    def _try_view(self, capture_id: str, img: "Image.Image") -> None:  # noqa: F821
        """Write the screen copy from an image already decoded (a failure only costs it; see :meth:`view_path`)."""
        try:
            self._write_view(capture_id, img)
        except (StorageError, OSError) as exc:
            log.warning("no screen copy of capture %s yet (%s)", capture_id, exc)

    def add_bytes(self, data: bytes, *, source: str = "camera", name: str = "<camera>") -> Capture:
        """Validate ``data`` as an image and store it at once (atomic, never overwrites)."""
        try:  # ImageError if empty, corrupt, unsafe
            # strict_tail: a photo copied half-way (grey below the cut) is refused while the engineer can copy it
            # again or retake it
            img = load_image(bytes(data), draft_size=(VIEW_MAX_SIDE, VIEW_MAX_SIDE), strict_tail=True)
        except ImageError as exc:
            raise ImageError(name, exc.reason) from None  # named as the engineer knows it (the file they picked)
        from PIL import Image

        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
        suffix = CAPTURE_SUFFIXES.get(str(fmt), ".img")
        cid, path = self.new_path(suffix)
        with disk_full_is_storage_error(self.root, "storing the photo"):
            atomic_write_bytes(path, data, overwrite=False)
            cap = Capture(cid, str(path), source, _now())
            try:
                self._write_sidecar(cap)
            except BaseException:
                path.unlink(missing_ok=True)  # no photo without its sidecar (it would be pruned unseen)
                raise
        self._try_view(cid, img)
        log.info("stored capture %s from %s (%d bytes)", cid, name, len(data))
        return cap

    def add_file(self, src: str | os.PathLike[str], *, source: str = "file") -> Capture:
        """Copy an image file into the store (validated first; the original is untouched). Decoded once (an
        audit: twice, 4.9 s for a 48 MP PNG); the file's checks (size, type) come before it is read."""
        return self.add_bytes(read_image_file(src), source=source, name=str(src))

    def adopt(self, capture_id: str, path: str | os.PathLike[str], *, source: str = "camera") -> Capture:
        """Register a file the camera wrote into :meth:`new_path` (validated; removed if corrupt)."""
        path = Path(path)
        try:
            img = load_image(path, draft_size=(VIEW_MAX_SIDE, VIEW_MAX_SIDE), strict_tail=True)
        except InputError as exc:
            log.warning("camera wrote an unreadable file %s; keeping it aside", path)
            free = storage.free_bytes(self.root)
            if free < LOW_SPACE_BYTES:  # a camera that ran out of space leaves a cut or empty file
                raise StorageError(f"the photo could not be read and the tablet has only {mb(free)} free: "
                                   "storage is full. Free space on the tablet and take the photo again") from exc
            raise
        cap = Capture(capture_id, str(path), source, _now())
        with disk_full_is_storage_error(self.root, "storing the photo"):
            self._write_sidecar(cap)
        (self.root / f"{capture_id}.camera").unlink(missing_ok=True)
        self._try_view(capture_id, img)
        return cap

    def _sidecar(self, capture_id: str) -> Path:
        return self.root / f"{capture_id}.json"

    def _write_sidecar(self, cap: Capture) -> None:
        atomic_write_json(self._sidecar(cap.capture_id), cap.to_dict())

    def get(self, capture_id: str) -> Capture:
        side = self._sidecar(capture_id)
        try:
            cap = Capture.from_dict(json.loads(side.read_text()))
        except FileNotFoundError:
            raise InputError(f"{side}: no such capture") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{side}: damaged capture record ({exc})") from None
        if not Path(cap.path).is_file():
            raise InputError(f"{cap.path}: capture image is missing")
        return cap

    def set_crop(self, cap: Capture, crop: Sequence[float] | None) -> Capture:
        """The capture with a new crop box, recorded (StorageError on a full disk: the old crop stays; it crashed
        the app, an audit)."""
        new = replace(cap, crop=validate_crop(crop))
        with disk_full_is_storage_error(self.root, "saving the crop"):
            self._write_sidecar(new)
        return new

    def cropped_image(self, cap: Capture, draft_size: tuple[int, int] | None = None) -> "Image.Image":  # noqa: F821
        """The capture as RGB, cut to its crop box.

        ``draft_size`` (width, height): the model needs only this many pixels in the CROP, so a big
        JPEG is decoded at the smallest DCT scale that still gives them (a 12 MP photo is never
        decoded at full size for identification). Without it (uploads) the crop keeps full resolution.
        """
        if not Path(cap.path).is_file():  # deleted behind the app's back (storage cleaner, USB)
            raise InputError(f"a photo of this part ({Path(cap.path).name}) is no longer on the tablet: remove the "
                             "view and take the photo again")
        if draft_size is not None and cap.crop:
            l, t, r, b = cap.crop
            draft_size = (int(math.ceil(draft_size[0] / max(r - l, 1e-3))),
                          int(math.ceil(draft_size[1] / max(b - t, 1e-3))))
        img = load_image(cap.path, draft_size=draft_size)
        if cap.crop:
            w, h = img.size
            l, t, r, b = cap.crop
            box = (int(round(l * w)), int(round(t * h)), max(int(round(r * w)), int(round(l * w)) + 1),
                   max(int(round(b * h)), int(round(t * h)) + 1))
            img = img.crop(box)
        return img

    def export_cropped(self, cap: Capture) -> Path:
        """Write the cropped view as ``<id>.<token>.crop.jpg`` (what is uploaded with a record): a file of its
        own per record, never rewritten. (One shared ``<id>.crop.jpg`` was rewritten when the engineer cut the
        same photo again for another record while the first was half uploaded: the hub then held a photo that
        never completed, or refused every chunk and blocked the outbox behind it.)"""
        img = self.cropped_image(cap)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        with disk_full_is_storage_error(self.root, "storing the photo to upload"):
            return atomic_write_bytes(self.root / f"{cap.capture_id}.{_uuid.uuid4().hex[:12]}.crop.jpg",
                                      buf.getvalue(), overwrite=False)

    def remove(self, capture_id: str, *, keep_crop: bool = False) -> int:
        """Delete one capture's files (image, sidecar and, unless ``keep_crop``, its ``.crop.jpg``); the
        number of files removed."""
        n = 0
        paths = [self._sidecar(capture_id), *(p for p in self.root.glob(f"{capture_id}.*")
                                               if not p.name.endswith((".json", ".crop.jpg")))]
        if not keep_crop:  # every record's copy (``<id>.<token>.crop.jpg``; ``<id>.crop.jpg`` before)
            paths += list(self.root.glob(f"{capture_id}.*crop.jpg"))
        for p in paths:
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n

    def all(self) -> list[Capture]:
        out = []
        for side in sorted(self.root.glob("*.json")):
            try:
                out.append(self.get(side.stem))
            except InputError as exc:
                log.warning("skipping capture: %s", exc)
        return out

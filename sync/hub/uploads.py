"""Receiving device uploads: idempotent records and resumable photo blobs.

A record is stored once per client UUID (a re-sent upload returns the stored record, with
``duplicate: true``). Its blob arrives in chunks: ``PUT .../blob?offset=N`` appends only at the
current size (anything else is answered with the current offset so the client resumes from
there); when the declared size is reached the sha256 must match, else the partial blob is
discarded. Records are ordered by the hub's receipt sequence and stamped with the hub
catalogue version at receipt, never by the device clock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from edge_app.atomic import fsync_dir
from edge_app.errors import BlobDamagedError, InputError, IntegrityError, PartlensError, UsageError
from edge_app import storage
from edge_app.imageio import DEFAULT_MAX_BYTES
from edge_app.storage import mb

from ..transport import MAX_RECORD_PAYLOAD_BYTES
from .hub import Hub
from .store import UPLOAD_KINDS

log = logging.getLogger(__name__)

UUID = re.compile(r"[0-9a-fA-F-]{8,64}")  # used with fullmatch: "$" let a trailing newline through
#: a photo the hub could never approve is refused at upload (it took 64 MiB; approve reads at most 60 MiB)
MAX_BLOB_BYTES = DEFAULT_MAX_BYTES
MAX_PAYLOAD_BYTES = MAX_RECORD_PAYLOAD_BYTES
MAX_BATCH = 500  # records in one POST /v1/uploads/batch
MAX_CREATED_AT = 64  # characters of the device's ISO time stamp
MAX_VERSION = 2**62  # catalogue versions fit SQLite's INTEGER with room to spare
class _UploadLock:
    """A lock that can be weakly referenced: it lives while a request holds or waits for it."""

    __slots__ = ("lock", "__weakref__")

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


_LOCKS_GUARD = threading.Lock()
#: one appender per upload; different uploads go on in parallel (entries vanish when no request uses them)
_UPLOAD_LOCKS: "weakref.WeakValueDictionary[str, _UploadLock]" = weakref.WeakValueDictionary()


def _upload_lock(uuid: str) -> _UploadLock:
    """The lock of one upload's blob (a global one let one tablet's 60 parallel chunks, and every 60 MiB photo's
    final sha256, hold up the other tablets' requests: ~0.6 s each, measured)."""
    with _LOCKS_GUARD:
        lock = _UPLOAD_LOCKS.get(uuid)
        if lock is None:
            lock = _UPLOAD_LOCKS[uuid] = _UploadLock()
        return lock


#: uploads stop (507, the tablet keeps them) while less than this is free on the hub's disk: what is left keeps
#: sync plans, catalogue packages and the admin's own commands working for every tablet
UPLOAD_RESERVE_BYTES = 1024**3
#: bytes of unfinished photos (``.part`` files) one tablet may hold at the hub: a tablet sends its photos one after
#: another, so it has at most one partly sent (<= 60 MiB); more is a tablet opening photos it does not finish
DEVICE_PARTIAL_BYTES = 1024**3
#: a partial photo untouched this long is deleted (its record stays; the tablet re-sends it from the start)
STALE_PARTIAL_S = 7 * 24 * 3600


class UploadSpaceError(PartlensError):
    """The hub will not take more upload data now (answered 507: nothing is lost, the tablet retries later)."""


def prune_stale_partials(hub: Hub, max_age_s: float = STALE_PARTIAL_S, now: float | None = None) -> int:
    """Delete partial photo files (``.part``) untouched for ``max_age_s``; returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for part in (hub.root / "uploads").glob("*.part"):
        try:
            if now - part.stat().st_mtime > max_age_s:
                part.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.warning("deleted %d partial upload(s) untouched for %.0f days (their tablets send them again)", removed,
                    max_age_s / 86400)
    return removed


def _check_upload_space(hub: Hub, incoming: int) -> None:
    free = storage.free_bytes(hub.root)
    if free - incoming >= UPLOAD_RESERVE_BYTES:
        return
    if prune_stale_partials(hub):
        free = storage.free_bytes(hub.root)
        if free - incoming >= UPLOAD_RESERVE_BYTES:
            return
    log.error("uploads refused: %s free on the hub's disk, %s are kept for sync plans and packages", mb(free),
              mb(UPLOAD_RESERVE_BYTES))
    raise UploadSpaceError(f"hub storage low ({mb(free)} free; {mb(UPLOAD_RESERVE_BYTES)} are kept for catalogue "
                           "updates): uploads wait until the hub admin frees space; nothing is lost")


class OffsetMismatch(UsageError):
    """A chunk did not start at the blob's current size."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        super().__init__(f"chunk offset mismatch; the hub has {offset} bytes")


def _conflict(stored: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """A UUID sent again with other content (a tablet bug, or a restored tablet reusing UUIDs): the stored
    record stays (records are immutable), but it is said, not answered as a plain duplicate."""
    fields = ("kind", "payload", "blob_sha256", "blob_size")
    if any(stored.get(f) != row.get(f) for f in fields):
        log.warning("upload %s from %s sent again with other content (%s); the first one is kept", row["uuid"],
                    row["device"], ", ".join(f for f in fields if stored.get(f) != row.get(f)))
        return True
    return False


def _status(row: Mapping[str, Any], hub: Hub, duplicate: bool = False) -> dict[str, Any]:
    return {"uuid": row["uuid"], "seq": row["seq"], "hub_version": row["hub_version"], "kind": row["kind"],
            "status": row["status"], "duplicate": duplicate, "blob_size": row["blob_size"],
            "blob_offset": blob_offset(hub, row), "blob_complete": bool(row["blob_complete"]),
            # the photo the hub expects (from the record's first upload): a tablet whose file changed since knows
            # it can never complete and says so, instead of sending it every night
            "blob_sha256": row["blob_sha256"],
            # when the hub got it, on its clock: a restore names its backup by that clock, so the tablet keeps it
            # to know what to send again (its own clock may be years off)
            "received_at": row["received_at"]}


def partial_path(hub: Hub, uuid: str) -> Path:
    return hub.root / "uploads" / f"{uuid}.part"


def blob_path(hub: Hub, uuid: str) -> Path:
    return hub.root / "uploads" / f"{uuid}.blob"


def blob_offset(hub: Hub, row: Mapping[str, Any]) -> int:
    if row["blob_complete"]:
        return int(row["blob_size"] or 0)
    p = partial_path(hub, row["uuid"])
    return p.stat().st_size if p.exists() else 0


def _record_row(device: Mapping[str, Any], body: Any) -> dict[str, Any]:
    """The uploads row for one outbox record from ``device``; UsageError says why the record is refused."""
    if not isinstance(body, Mapping):
        raise UsageError("an upload record must be a JSON object")
    uuid = body.get("uuid")
    if not isinstance(uuid, str) or not UUID.fullmatch(uuid) or len(uuid.replace("-", "")) < 8:
        raise UsageError(f"upload uuid {str(uuid)[:80]!r} is not a UUID")
    kind = body.get("kind")
    if kind not in UPLOAD_KINDS:
        raise UsageError(f"upload kind must be one of {UPLOAD_KINDS}, got {str(kind)[:40]!r}")
    payload = body.get("payload")
    payload = {} if payload is None else payload
    if not isinstance(payload, dict):
        raise UsageError("upload payload must be a JSON object")
    try:
        text = json.dumps(payload, sort_keys=True, allow_nan=False)
    except ValueError:
        raise UsageError("upload payload holds NaN or Infinity (not JSON)") from None
    if len(text) > MAX_PAYLOAD_BYTES:
        raise UsageError(f"upload payload is over {MAX_PAYLOAD_BYTES} bytes")
    created_at = body.get("created_at")
    if created_at is not None and not (isinstance(created_at, str) and len(created_at) <= MAX_CREATED_AT
                                       and _utf8(created_at)):
        raise UsageError(f"upload created_at must be a time stamp of at most {MAX_CREATED_AT} characters")
    version = body.get("catalogue_version")
    if version is not None and not (type(version) is int and 0 <= version <= MAX_VERSION):
        raise UsageError(f"upload catalogue_version must be a whole number 0..{MAX_VERSION}")
    blob = body.get("blob")
    size = sha = None
    if blob is not None:
        size, sha = (blob.get("size"), blob.get("sha256")) if isinstance(blob, Mapping) else (None, None)
        if type(size) is not int or not isinstance(sha, str):
            raise UsageError("upload blob needs size (a whole number) and sha256")
        if not 0 < size <= MAX_BLOB_BYTES or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise UsageError(f"upload blob size must be 1..{MAX_BLOB_BYTES} with a sha256 hex digest")
    return {"uuid": uuid, "device": device["name"], "site": device["site"], "kind": kind, "payload": text,
            "device_created_at": created_at, "device_catalogue_version": version,
            "blob_sha256": sha, "blob_size": size, "blob_complete": 0 if blob is not None else 1}


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        return False
    return True


def _check_stored_owner(device: Mapping[str, Any], stored: Mapping[str, Any], created: bool) -> None:
    """A UUID another tablet stored (before, or at the same moment: an audit saw a check made BEFORE the write tell
    the loser of a race "duplicate" with the other tablet's record) is refused; nothing was written for it."""
    if not created and stored["device"] != device["name"]:
        raise UsageError(f"upload {stored['uuid']} belongs to another device")


def receive_record(hub: Hub, device: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """Store one outbox record (idempotent by UUID); return its status."""
    row = _record_row(device, body)
    _check_upload_space(hub, len(row["payload"]))
    stored, created = hub.store.add_upload(row)
    _check_stored_owner(device, stored, created)
    if created:
        log.info("upload %s (%s) from %s stored as #%d", row["uuid"], row["kind"], device["name"], stored["seq"])
    out = _status(_finish_if_full(hub, stored), hub, duplicate=not created)
    if not created and _conflict(stored, row):
        out["conflict"] = True
    return out


def receive_records(hub: Hub, device: Mapping[str, Any], bodies: Any) -> list[dict[str, Any]]:
    """Store a batch of outbox records in one transaction; one result per record, in order.

    A record that cannot be stored (bad UUID or kind, payload too big, another device's UUID, a
    UUID twice in one batch) does not fail the batch: its result is ``{"uuid", "refused": reason}``
    and the others are stored. The batch itself must be a list of at most :data:`MAX_BATCH` records.
    """
    if not isinstance(bodies, list):
        raise UsageError("an upload batch must be a JSON list of records")
    if len(bodies) > MAX_BATCH:
        raise UsageError(f"an upload batch holds at most {MAX_BATCH} records, got {len(bodies)}")
    results: list[dict[str, Any] | None] = [None] * len(bodies)
    rows, where, seen = [], [], set()
    for i, body in enumerate(bodies):
        uuid = str(body.get("uuid") or "")[:80] if isinstance(body, Mapping) else ""
        try:
            row = _record_row(device, body)
            if row["uuid"] in seen:
                raise UsageError(f"upload {uuid} appears twice in one batch")
        except UsageError as exc:
            log.warning("upload %r from %s refused: %s", uuid, device["name"], exc)
            results[i] = {"uuid": uuid, "refused": str(exc)}
            continue
        seen.add(row["uuid"])
        rows.append(row)
        where.append(i)
    _check_upload_space(hub, sum(len(r["payload"]) for r in rows))
    for i, row, (stored, created) in zip(where, rows, hub.store.add_uploads(rows)):
        try:
            _check_stored_owner(device, stored, created)
        except UsageError as exc:
            results[i] = {"uuid": row["uuid"], "refused": str(exc)}
            continue
        results[i] = _status(_finish_if_full(hub, stored), hub, duplicate=not created)
        if not created and _conflict(stored, row):
            results[i]["conflict"] = True
    stored_new = sum(1 for r in results if r and "refused" not in r and not r["duplicate"])
    if bodies:
        log.info("upload batch from %s: %d records, %d new, %d refused", device["name"], len(bodies), stored_new,
                 sum(1 for r in results if r and "refused" in r))
    return [r for r in results if r is not None]


def _check_partials(hub: Hub, device: Mapping[str, Any], incoming: int) -> None:
    """Refuse (507: old and new tablets keep the photo and retry at a later sync) a chunk that would take this
    tablet's unfinished photos at the hub over :data:`DEVICE_PARTIAL_BYTES`."""
    held = 0
    for uuid in hub.store.unfinished_uploads(device["name"]):
        try:
            held += partial_path(hub, uuid).stat().st_size
        except FileNotFoundError:
            continue
    if held + incoming > DEVICE_PARTIAL_BYTES:
        log.error("device %s holds %s of unfinished photos at the hub; chunk refused", device["name"], mb(held))
        raise UploadSpaceError(f"this tablet has {mb(held)} of unfinished photos at the hub (at most "
                               f"{mb(DEVICE_PARTIAL_BYTES)}): finish those first; nothing is lost")


def upload_status(hub: Hub, device: Mapping[str, Any], uuid: str) -> dict[str, Any]:
    row = hub.store.upload(uuid)
    if row is None or row["device"] != device["name"]:
        raise InputError(f"no such upload {uuid}")
    return _status(_finish_if_full(hub, row), hub)


def receive_chunk(hub: Hub, device: Mapping[str, Any], uuid: str, offset: int, data: bytes) -> dict[str, Any]:
    """Append ``data`` at ``offset`` of the blob; verify and finish it when complete."""
    with _upload_lock(uuid):
        return _receive_chunk(hub, device, uuid, offset, data)


def _receive_chunk(hub: Hub, device: Mapping[str, Any], uuid: str, offset: int, data: bytes) -> dict[str, Any]:
    row = hub.store.upload(uuid)
    if row is None or row["device"] != device["name"]:
        raise InputError(f"no such upload {uuid}")
    if row["blob_size"] is None:
        raise UsageError(f"upload {uuid} declared no blob")
    if row["blob_complete"]:
        return _status(row, hub, duplicate=True)
    part = partial_path(hub, uuid)
    current = part.stat().st_size if part.exists() else 0
    if offset != current:
        raise OffsetMismatch(current)
    if current + len(data) > row["blob_size"]:
        raise UsageError(f"upload {uuid}: chunk goes past the declared size {row['blob_size']}")
    if not data and current < row["blob_size"]:  # nothing to append or finish: leave no empty .part behind
        return _status(row, hub)
    _check_upload_space(hub, len(data))
    _check_partials(hub, device, len(data))
    part.parent.mkdir(parents=True, exist_ok=True)  # a hub folder restored from a backup may not have it yet
    with open(part, "ab", buffering=0) as fh:  # unbuffered: nothing is left to flush after a failure
        try:
            view = memoryview(data)
            while view:
                view = view[fh.write(view):]
            os.fsync(fh.fileno())
        except OSError:  # e.g. the hub's disk is full: back to the last whole chunk, the tablet resends
            os.ftruncate(fh.fileno(), current)
            raise
    if current + len(data) == row["blob_size"]:
        row = _finish_blob(hub, row)
    return _status(row, hub)


def _finish_blob(hub: Hub, row: Mapping[str, Any]) -> dict[str, Any]:
    """Check a fully received blob against its sha256 and move it into place (a mismatch discards it:
    BlobDamagedError, the tablet sends it again). Call with the upload's lock held."""
    uuid = row["uuid"]
    part = partial_path(hub, uuid)
    h = hashlib.sha256()
    with open(part, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    if h.hexdigest() != row["blob_sha256"]:
        part.unlink()
        log.warning("upload %s from %s: its photo arrived damaged (sha256 does not match); discarded, the tablet "
                    "sends it again", uuid, row.get("device"))
        raise BlobDamagedError(f"upload {uuid}: blob sha256 does not match; discarded, send it again")
    os.replace(part, blob_path(hub, uuid))
    fsync_dir(part.parent)
    hub.store.update_upload(uuid, blob_complete=1)
    return hub.store.upload(uuid) or dict(row)


def _finish_if_full(hub: Hub, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A blob whose last chunk reached the disk but was not finished (the hub was killed in between) is finished
    now. Without this the tablet, told that the hub holds every byte, sends nothing more and the photo never
    completes at the hub."""
    if row["blob_complete"] or row["blob_size"] is None:
        return row
    part = partial_path(hub, row["uuid"])
    try:
        if part.stat().st_size != row["blob_size"]:
            return row
    except FileNotFoundError:
        return row
    with _upload_lock(row["uuid"]):
        fresh = hub.store.upload(row["uuid"]) or row
        if fresh["blob_complete"] or not part.exists() or part.stat().st_size != fresh["blob_size"]:
            return fresh
        try:
            done = _finish_blob(hub, fresh)
        except BlobDamagedError:  # (logged; the tablet is told offset 0 and sends it again)
            return hub.store.upload(row["uuid"]) or fresh
    log.info("upload %s: finished a photo whose last chunk had arrived before the hub stopped", row["uuid"])
    return done

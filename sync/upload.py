"""Device side of uploads: the outbox goes to the hub in batches, photos in resumable chunks.

Upload is idempotent by UUID. A record the hub refuses for good, or that the device cannot send (its photo
is gone, its payload over the hub's limit), is marked refused with the reason and kept, so it cannot block
the records behind it; :func:`refused_uploads` lists them and requeues those that can go.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from edge_app.errors import BlobDamagedError, IntegrityError, SyncError, UsageError
from edge_app.runtime.outbox import Outbox

from .transport import MAX_RECORD_PAYLOAD_BYTES, Transport

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 256 * 1024
UPLOAD_BATCH = 200  # records per POST /v1/uploads/batch (the hub takes up to 500)
UPLOAD_BATCH_BYTES = 1024 * 1024  # JSON payload bytes per batch (a record's payload is at most 64 KiB)


def upload_outbox(transport: Transport, outbox_path: Path, catalogue_version: int) -> tuple[int, int]:
    """Upload pending outbox records -> (uploaded, refused).

    Records go in batches (one request and one hub transaction per :data:`UPLOAD_BATCH` records,
    at most :data:`UPLOAD_BATCH_BYTES` of JSON); each photo then goes in resumable chunks. Upload is
    idempotent by UUID. A record the hub refuses for good, or whose photo file is gone, is marked
    refused in the outbox with the reason (kept, not deleted) so it cannot block the records
    behind it; the count is in :attr:`SyncResult.upload_refused`.
    """
    if not outbox_path.exists():
        return 0, 0
    outbox = Outbox(outbox_path)
    uploaded = refused = 0
    try:
        for batch in _batches(outbox.pending()):
            bodies, blobs = [], {}
            for rec in batch:
                body: dict[str, Any] = {"uuid": rec["uuid"], "kind": rec["kind"], "payload": rec["payload"],
                                        "created_at": rec["created_at"], "catalogue_version": catalogue_version,
                                        "blob": None}
                if len(json.dumps(rec["payload"], sort_keys=True)) > MAX_RECORD_PAYLOAD_BYTES:
                    log.error("upload %s: payload over the hub's %d-byte limit; marked refused", rec["uuid"],
                              MAX_RECORD_PAYLOAD_BYTES)
                    outbox.mark_refused(rec["uuid"], f"payload over the hub's limit of {MAX_RECORD_PAYLOAD_BYTES} "
                                                     "bytes (not sent)")
                    refused += 1
                    continue
                if rec["blob_path"]:
                    blob = Path(rec["blob_path"])
                    try:
                        size, digest = _file_digest(blob)
                    except OSError as exc:
                        log.error("upload %s: its photo cannot be read (%s); marked refused", rec["uuid"], exc)
                        outbox.mark_refused(rec["uuid"], f"photo file unreadable on the device: {exc}")
                        refused += 1
                        continue
                    blobs[rec["uuid"]] = (blob, size, digest)
                    body["blob"] = {"size": size, "sha256": digest}
                bodies.append(body)
            if not bodies:
                continue
            done: list[str] = []
            received: dict[str, Any] = {}  # the hub's receipt times (hubs before 23rd session do not say)
            for body, status in zip(bodies, transport.post_uploads(bodies)):
                uuid = body["uuid"]
                if "refused" in status:
                    log.error("hub refused upload %s (%s): %s; kept on the device, marked refused",
                              uuid, body["kind"], status["refused"])
                    outbox.mark_refused(uuid, str(status["refused"]))
                    refused += 1
                elif uuid in blobs and not status.get("blob_complete"):
                    blob, size, digest = blobs[uuid]
                    expected = status.get("blob_sha256")  # (hubs before it do not say)
                    if expected is not None and (expected != digest or status.get("blob_size") != size):
                        log.error("upload %s: its photo file changed on this device since the hub recorded it; "
                                  "kept on the device, marked refused", uuid)
                        outbox.mark_refused(uuid, "the photo file changed on this device after its first upload "
                                                  "(the hub expects the earlier one); it cannot complete")
                        refused += 1
                        continue
                    try:
                        send_blob(transport, uuid, blob, size, int(status.get("blob_offset") or 0), digest)
                    except BlobDamagedError as exc:  # on the way, twice: pending, sent again at the next sync
                        log.warning("%s; kept, sent again at the next sync", exc)
                        continue
                    except (IntegrityError, UsageError) as exc:  # for good: never blocks the records behind it
                        log.error("upload %s: the hub cannot complete its photo (%s); kept on the device, marked "
                                  "refused", uuid, exc)
                        outbox.mark_refused(uuid, f"the hub could not complete its photo: {exc}")
                        refused += 1
                        continue
                    outbox.mark_uploaded_many([uuid], {uuid: status.get("received_at")})
                    uploaded += 1
                else:
                    done.append(uuid)
                    received[uuid] = status.get("received_at")
            uploaded += len(done)
            outbox.mark_uploaded_many(done, received)
        outbox.forget_uploaded()
    finally:
        outbox.close()
    return uploaded, refused


def send_blob(transport: Transport, uuid: str, path: Path, size: int, offset: int, digest: str) -> None:
    """Send the photo at ``path`` (``size`` bytes, sha256 ``digest`` as declared to the hub) from ``offset`` in
    chunks, resuming where the hub says it stands. Bytes damaged on the way (the hub discards the photo:
    :class:`BlobDamagedError`) are sent again once from the start; a second time, the error goes up (the record
    stays pending for the next sync). If the file itself no longer matches ``digest``, that is for good:
    :class:`IntegrityError`."""
    try:
        _send_chunks(transport, uuid, path, size, offset)
    except BlobDamagedError:
        if _file_digest(path) != (size, digest):
            raise IntegrityError(f"upload {uuid}: the photo file changed on this device while it was sent") from None
        log.warning("upload %s: the photo reached the hub damaged; sending it again", uuid)
        _send_chunks(transport, uuid, path, size, 0)


def _send_chunks(transport: Transport, uuid: str, path: Path, size: int, offset: int) -> None:
    conflicts = 0
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            status = transport.put_chunk(uuid, offset, fh.read(min(UPLOAD_CHUNK, size - offset)))
            if status.get("conflict"):
                conflicts += 1
                if conflicts > 3:
                    raise SyncError(f"upload {uuid}: the hub keeps disagreeing about the offset")
                offset = int(status["blob_offset"])
                continue
            if status.get("blob_complete"):
                return
            offset = int(status["blob_offset"])
    # every byte is at the hub but it has not finished the photo (it was stopped after the last chunk): an empty
    # chunk asks it to check and finish it. Marked uploaded only once the hub says it is complete.
    status = transport.put_chunk(uuid, size, b"")
    if not status.get("blob_complete"):
        raise IntegrityError(f"upload {uuid}: the hub holds {status.get('blob_offset')} of {size} bytes of the photo "
                             "but did not complete it")


def refused_uploads(outbox_path: Path, *, requeue: bool = False) -> list[dict[str, Any]]:
    """Outbox records refused for good (by the hub, or by this device: photo gone, payload over the limit),
    with the reasons; ``requeue``: clear the refusals of those that can go now, so the next sync sends them
    (after the hub was fixed); each row then says ``requeued`` and, if not, ``not_requeued_because``."""
    if not outbox_path.exists():
        return []
    outbox = Outbox(outbox_path)
    try:
        rows = outbox.refused()
        if requeue:
            for r in rows:
                why = _still_refused(r)
                r["requeued"] = why is None
                if why is not None:
                    r["not_requeued_because"] = why
            outbox.requeue_refused([r["uuid"] for r in rows if r["requeued"]])
            log.info("%d refused uploads requeued for the next sync, %d not (their cause is still there)",
                     sum(r["requeued"] for r in rows), sum(not r["requeued"] for r in rows))
        return rows
    finally:
        outbox.close()


def _still_refused(row: Mapping[str, Any]) -> str | None:
    """Why a refused outbox record would be refused again by this device itself (None if it may go): its photo
    is still missing, or its payload is still over the hub's limit. Refusals by the hub are always requeued
    (the admin may have fixed the hub)."""
    if row.get("blob_path") and not Path(row["blob_path"]).is_file():
        return "its photo is no longer on this device"
    if int(row.get("payload_bytes") or 0) > MAX_RECORD_PAYLOAD_BYTES:
        return f"its payload is over the hub's limit of {MAX_RECORD_PAYLOAD_BYTES} bytes"
    return None


def _file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks (a photo is never held whole in memory here)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _batches(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive groups of at most UPLOAD_BATCH records and about UPLOAD_BATCH_BYTES of payload."""
    out: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    size = 0
    for rec in records:
        n = len(json.dumps(rec["payload"]))
        if cur and (len(cur) >= UPLOAD_BATCH or size + n > UPLOAD_BATCH_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(rec)
        size += n
    if cur:
        out.append(cur)
    return out

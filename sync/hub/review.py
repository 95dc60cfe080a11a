"""Reviewing what devices sent: photos, feedback, unknown-part reports.

Nothing a device sends edits the catalogue by itself (device observations are events). A
reviewer approves a photo into the catalogue (it becomes a catalogue image, embedded with the
active bundle, and reaches devices in the next delta), turns an unknown-part report into a
part, or rejects. Approved photos can be exported as a training folder
``root/<part_number>/<image_id>.jpg``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from edge_app.atomic import atomic_copy
from edge_app.errors import InputError, UsageError

from .hub import Hub
from .store import PART_FIELDS
from .uploads import blob_path

log = logging.getLogger(__name__)

STATUSES = ("new", "approved", "rejected", "done")


def list_uploads(hub: Hub, kind: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Uploads in hub receipt order, payload decoded."""
    if status is not None and status not in STATUSES:
        raise UsageError(f"status must be one of {STATUSES}, got {status!r}")
    rows = hub.store.list_uploads(kind, status)
    for r in rows:
        r["payload"] = json.loads(r["payload"])
        r["review"] = json.loads(r["review"]) if r["review"] else None
    return rows


def _get(hub: Hub, uuid: str, kind: str | tuple[str, ...]) -> dict[str, Any]:
    row = hub.store.upload(uuid)
    kinds = (kind,) if isinstance(kind, str) else kind
    if row is None:
        raise InputError(f"no such upload {uuid}")
    if row["kind"] not in kinds:
        raise UsageError(f"upload {uuid} is a {row['kind']}, not a {' or '.join(kinds)}")
    if row["status"] != "new":
        raise UsageError(f"upload {uuid} is already {row['status']}")
    return row


def _blob(hub: Hub, row: Mapping[str, Any]) -> Path:
    if row["blob_size"] is None:
        raise UsageError(f"upload {row['uuid']} has no photo")
    if not row["blob_complete"]:
        raise UsageError(f"upload {row['uuid']}: the photo has not finished uploading")
    return blob_path(hub, row["uuid"])


def approve_photo(hub: Hub, uuid: str, part_number: str | None = None) -> dict[str, Any]:
    """Add an uploaded photo to the catalogue as an image of ``part_number`` (default: the one the device named)."""
    row = _get(hub, uuid, ("photo", "feedback"))
    payload = json.loads(row["payload"])
    pn = part_number or payload.get("part_number")
    if not pn:
        raise UsageError(f"upload {uuid} names no part; pass --part")
    if hub.store.part(pn) is None:
        raise InputError(f"unknown part {pn!r}")
    img = hub.store_image(_blob(hub, row), pn, kind="field", what=f"upload {uuid}")
    version = hub.add_images([img])
    hub.store.update_upload(uuid, status="approved", review=json.dumps(
        {"part_number": pn, "image_id": img["image_id"], "catalogue_version": version}))
    return {"uuid": uuid, "part_number": pn, "image_id": img["image_id"], "catalogue_version": version}


def make_part(hub: Hub, uuid: str, part: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an unknown-part report into a catalogue part (its photo, if any, becomes the part's image)."""
    row = _get(hub, uuid, "unknown_part")
    payload = json.loads(row["payload"])
    fields = {k: v for k, v in payload.items() if k in PART_FIELDS and v not in (None, "")}
    fields.update({k: v for k, v in part.items() if v not in (None, "")})
    if not fields.get("part_number"):
        raise UsageError("the new part needs a part_number")
    if hub.store.part(fields["part_number"]) is not None:
        raise UsageError(f"part {fields['part_number']} already exists; approve the photo into it instead")
    images = [_blob(hub, row)] if row["blob_size"] is not None else []
    version = hub.add_part(fields, images=images)
    hub.store.update_upload(uuid, status="done", review=json.dumps(
        {"part_number": fields["part_number"], "catalogue_version": version}))
    return {"uuid": uuid, "part_number": fields["part_number"], "catalogue_version": version}


def reject(hub: Hub, uuid: str, note: str = "") -> None:
    row = hub.store.upload(uuid)
    if row is None:
        raise InputError(f"no such upload {uuid}")
    hub.store.update_upload(uuid, status="rejected", review=json.dumps({"note": note}))


def export_training(hub: Hub, out_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Copy approved photos to ``out_dir/<part_number>/<image_id>.jpg`` (ImageFolder layout)."""
    out = Path(out_dir)
    n = 0
    parts: set[str] = set()
    for row in list_uploads(hub, status="approved"):
        review = row["review"] or {}
        image = hub.store.image(review.get("image_id", ""))
        if image is None:
            log.warning("approved upload %s: image %s no longer in the catalogue; skipped", row["uuid"],
                        review.get("image_id"))
            continue
        dst = out / image["part_number"] / f"{image['image_id']}.jpg"
        if not dst.exists():
            atomic_copy(hub.image_path(image), dst)
        n += 1
        parts.add(image["part_number"])
    return {"images": n, "parts": len(parts)}

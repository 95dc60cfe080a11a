"""Reviewing what devices sent: photos, feedback, unknown-part reports.

Nothing a device sends edits the catalogue by itself (device observations are events). A
reviewer approves a photo into the catalogue (it becomes a catalogue image, embedded with the
active bundle, and reaches devices in the next delta), turns an unknown-part report into a
part, or rejects. Approved photos can be exported as a training folder
``root/<part_number>/<image_id>.jpg``, and the field photos the hub holds as the folders
``partlens calibrate`` fits the "no confident match" calibration on (:func:`export_calibration`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_app.atomic import atomic_copy
from edge_app.errors import InputError, UsageError
from edge_app.imageio import IMAGE_SUFFIXES
from edge_app.partfolders import part_folder

from .hub import Hub
from .store import PART_FIELDS, Change
from .uploads import blob_path

log = logging.getLogger(__name__)

STATUSES = ("new", "approved", "rejected", "done")


def list_uploads(hub: Hub, kind: str | None = None, status: str | None = None,
                 since: str | None = None, exclude_kind: str | None = None, *, device: str | None = None,
                 after_seq: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Uploads in hub receipt order, payload decoded (``since``: received at or after this ISO UTC time;
    ``exclude_kind``: leave that kind out, e.g. the usage events, one per identification; ``device``: from that
    tablet; ``after_seq`` / ``limit``: one page, the next one after the last row's ``seq``)."""
    if status is not None and status not in STATUSES:
        raise UsageError(f"status must be one of {STATUSES}, got {status!r}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    if after_seq is not None and after_seq < 0:
        raise UsageError(f"after must be 0 or more, got {after_seq}")
    rows = hub.store.list_uploads(kind, status, since, exclude_kind, device=device, after_seq=after_seq,
                                  limit=limit)
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


#: photos approved in one catalogue version (one embedding batch, one transaction) by :func:`approve_photos`
APPROVE_BATCH = 200
#: a photo at least this similar to a photo of another part is flagged even when its own part has no other photo
SAME_PHOTO_SIMILARITY = 0.99


def _approvable(hub: Hub, uuid: str, part_number: str | None) -> tuple[dict[str, Any], str]:
    """The upload ``uuid`` and the part it may be approved into, or the reason it may not."""
    row = _get(hub, uuid, ("photo", "feedback"))
    payload = json.loads(row["payload"])
    named = payload.get("part_number") if isinstance(payload, dict) else None
    if row["kind"] == "feedback" and payload.get("verdict") == "wrong" and not part_number:
        # "not this one": the part it names is the one the photo does NOT show (an audit: approving it filed the
        # photo under the very part the engineer rejected)
        raise UsageError(f"upload {uuid} says the photo is NOT part {named}; pass --part with the part it shows")
    pn = part_number or named
    if not pn:
        raise UsageError(f"upload {uuid} names no part; pass --part")
    if hub.store.part(pn) is None:
        raise InputError(f"unknown part {pn!r}")
    return row, pn


def approve_photo(hub: Hub, uuid: str, part_number: str | None = None) -> dict[str, Any]:
    """Add an uploaded photo to the catalogue as an image of ``part_number`` (default: the one the device named;
    a "not this one" confirmation needs it). ``warnings``: the photo looks more like another part's photos than
    its own part's (approved into the wrong part?)."""
    row, pn = _approvable(hub, uuid, part_number)
    (done,) = _add_approved(hub, [(uuid, hub.store_image(_blob(hub, row), pn, kind="field", what=f"upload {uuid}"),
                                   pn)])
    return done


def approve_photos(hub: Hub, uuids: Sequence[str], part_number: str | None = None) -> dict[str, Any]:
    """:func:`approve_photo` for many uploads, :data:`APPROVE_BATCH` to a catalogue version (2,000 photos were
    2,000 commands and versions, an audit). One that cannot be approved is listed in ``refused`` with the reason
    and the others go on; nothing is approved twice (a repeated UUID, or a re-run after a crash)."""
    from edge_app.errors import ImageError

    approved: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    todo = list(dict.fromkeys(u.strip() for u in uuids if u.strip()))
    for i in range(0, len(todo), APPROVE_BATCH):
        stored = []
        for uuid in todo[i:i + APPROVE_BATCH]:
            try:
                row, pn = _approvable(hub, uuid, part_number)
                stored.append((uuid, hub.store_image(_blob(hub, row), pn, kind="field", what=f"upload {uuid}"), pn))
            except (InputError, UsageError, ImageError) as exc:
                refused.append({"uuid": uuid, "reason": str(exc)})
        if stored:
            approved += _add_approved(hub, stored, warn=False)
    warnings = label_warnings(hub, [(a["uuid"], a["image_id"], a["part_number"]) for a in approved])
    for a in approved:
        a["warnings"] = warnings.get(a["uuid"], [])
    log.info("approved %d uploads, refused %d", len(approved), len(refused))
    return {"approved": approved, "refused": refused}


def _add_approved(hub: Hub, stored: Sequence[tuple[str, dict[str, Any], str]], *,
                  warn: bool = True) -> list[dict[str, Any]]:
    """Add stored images ``(upload uuid, image row, part)`` to the catalogue in one version, each upload's review
    in the same transaction (never a catalogue photo still "new"); with ``warn``, each result's label warnings."""
    def review(ch: Change) -> None:
        for uuid, img, pn in stored:
            ch.update_upload(uuid, status="approved", review=json.dumps(
                {"part_number": pn, "image_id": img["image_id"], "catalogue_version": ch.version}))

    version = hub.add_images([img for _, img, _ in stored], also=review)
    out = [{"uuid": u, "part_number": pn, "image_id": img["image_id"], "catalogue_version": version}
           for u, img, pn in stored]
    if warn:
        warnings = label_warnings(hub, [(a["uuid"], a["image_id"], a["part_number"]) for a in out])
        for a in out:
            a["warnings"] = warnings.get(a["uuid"], [])
    return out


def label_warnings(hub: Hub, approved: Sequence[tuple[str, str, str]]) -> dict[str, list[str]]:
    """For photos just approved (``(uuid, image_id, part)``): the ones the active model finds closer to a photo of
    ANOTHER part than to any other photo of their own part (or nearly the same as another part's photo when their
    part has no other): labelled wrong? Approval checked nothing of the sort (three NUT-M8 photos approved into a
    valve went without a word, an audit). Logged as warnings too."""
    bid = hub.bundle_id
    if bid is None or not approved:
        return {}
    ids, parts, vecs = hub.store.image_embeddings(bid)
    row_of = {image_id: k for k, image_id in enumerate(ids)}
    part_arr = np.asarray(parts, dtype=object)
    # photos approved together never vouch for each other as their part's own (three wrong photos approved in
    # one batch each found the other two "own" and went without a word, a review)
    new = np.zeros(len(ids), dtype=bool)
    new[[row_of[i] for _, i, _ in approved if i in row_of]] = True
    out: dict[str, list[str]] = {}
    for uuid, image_id, pn in approved:
        k = row_of.get(image_id)
        if k is None:
            continue
        sims = vecs @ vecs[k]
        sims[k] = -np.inf
        own = sims[(part_arr == pn) & ~new]
        other = np.where(part_arr != pn, sims, -np.inf)
        j = int(np.argmax(other)) if len(other) else -1
        if j < 0 or not np.isfinite(other[j]):
            continue
        best_own = float(own.max()) if own.size and np.isfinite(own.max()) else None
        if (best_own is None and other[j] >= SAME_PHOTO_SIMILARITY) or (best_own is not None and other[j] > best_own):
            msg = (f"upload {uuid}: the photo approved into {pn} looks more like {parts[j]} (similarity "
                   f"{float(other[j]):.3f}) than " + (f"the other photos of {pn} ({best_own:.3f})" if best_own is not None
                                                     else "anything else") +
                   f"; the wrong part? `partlens hub review unapprove --hub {hub.root} {uuid}`")
            log.warning("%s", msg)
            out.setdefault(uuid, []).append(msg)
    return out


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
    # the report's other views (photo uploads naming it): they are the new part's photos too (only the first
    # became one, the others stayed "new" naming no part, an audit)
    views = [r for r in list_uploads(hub, kind="photo", status="new")
             if isinstance(r["payload"], dict) and r["payload"].get("unknown_part") == uuid
             and r["blob_size"] is not None and r["blob_complete"]]
    images += [blob_path(hub, r["uuid"]) for r in views]

    def review(ch: Change) -> None:  # with the part, in one transaction: a part made, its report never left "new"
        ch.update_upload(uuid, status="done", review=json.dumps(
            {"part_number": fields["part_number"], "catalogue_version": ch.version}))
        for r in views:
            ch.update_upload(r["uuid"], status="approved", review=json.dumps(
                {"part_number": fields["part_number"], "from_report": uuid, "catalogue_version": ch.version}))

    version = hub.add_part(fields, images=images, also=review)
    return {"uuid": uuid, "part_number": fields["part_number"], "catalogue_version": version,
            "images": len(images), "views_approved": [r["uuid"] for r in views]}


def confirm_unknown(hub: Hub, uuid: str, note: str = "") -> dict[str, Any]:
    """Mark an unknown-part report as reviewed: the part is really not in the catalogue (and no part
    is made of it). Its photos stay negatives for :func:`export_calibration` (also with
    ``reviewed_only``)."""
    row = _get(hub, uuid, "unknown_part")
    hub.store.update_upload(uuid, status="approved", review=json.dumps({"confirmed_unknown": True, "note": note}))
    return {"uuid": row["uuid"], "status": "approved"}


def reject(hub: Hub, uuid: str, note: str = "") -> None:
    """Mark a new upload rejected. A reviewed one is refused like every other review action: rejecting an
    approved photo had wiped its review (the catalogue image it became was no longer traceable or exported)."""
    row = hub.store.upload(uuid)
    if row is None:
        raise InputError(f"no such upload {uuid}")
    if row["status"] != "new":
        raise UsageError(f"upload {uuid} is already {row['status']}")
    hub.store.update_upload(uuid, status="rejected", review=json.dumps({"note": note}))


def unapprove(hub: Hub, uuid: str, note: str = "") -> dict[str, Any]:
    """Undo an approved photo (e.g. approved into the wrong part): its catalogue image is removed (tablets drop it,
    with its vector, at their next sync) and the upload is "new" again, to approve into the right part or reject.
    One catalogue version; the review keeps what was undone."""
    row = hub.store.upload(uuid)
    if row is None:
        raise InputError(f"no such upload {uuid}")
    if row["status"] != "approved" or row["kind"] not in ("photo", "feedback"):
        raise UsageError(f"upload {uuid} is a {row['status']} {row['kind']}, not an approved photo: nothing to undo")
    review = json.loads(row["review"]) if isinstance(row["review"], str) else (row["review"] or {})
    image_id = review.get("image_id")
    image = hub.store.image(image_id) if image_id else None
    # the same picture approved from another upload too (one content-named image): it stays for that one (an
    # audit: undoing one of two approvals removed the image the other still stood for)
    shared = [r["uuid"] for r in list_uploads(hub, status="approved") if r["uuid"] != uuid
              and isinstance(r["review"], dict) and r["review"].get("image_id") == image_id] if image else []
    if shared:
        log.warning("upload %s: image %s is also the approved photo of %s; it stays in the catalogue", uuid,
                    image_id, ", ".join(shared))
        image = None

    with hub.store.change() as ch:
        if image is not None:
            ch.delete_images([image_id])
        ch.update_upload(uuid, status="new", review=json.dumps(
            {"undone": review, "note": note, "catalogue_version": ch.version}))
        version = ch.version
    log.info("upload %s: approval undone (image %s removed from part %s)", uuid, image_id, review.get("part_number"))
    return {"uuid": uuid, "image_id": image_id, "was_part": review.get("part_number"), "catalogue_version": version,
            "image_removed": image is not None, "image_kept_for": shared}


def export_training(hub: Hub, out_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Copy approved photos to ``out_dir/<part_number>/<image_id>.jpg`` (ImageFolder layout)."""
    out = Path(out_dir)
    n = 0
    parts: set[str] = set()
    for row in list_uploads(hub, status="approved"):
        if row["kind"] not in ("photo", "feedback"):  # a confirmed unknown-part report is no catalogue photo
            continue
        review = row["review"] or {}
        image = hub.store.image(review.get("image_id", ""))
        if image is None:
            log.warning("approved upload %s: image %s no longer in the catalogue; skipped", row["uuid"],
                        review.get("image_id"))
            continue
        dst = out / part_folder(image["part_number"]) / f"{image['image_id']}.jpg"
        if not dst.exists():
            atomic_copy(hub.image_path(image), dst)
        n += 1
        parts.add(image["part_number"])
    return {"images": n, "parts": len(parts)}


def _suffix(path: Path) -> str:
    return path.suffix.lower() if path.suffix.lower() in IMAGE_SUFFIXES else ".jpg"


def _place(src: Path, dst: Path, link: bool) -> None:
    """Copy ``src`` to ``dst`` atomically, or hard-link it when ``link`` (copy where linking fails, e.g.
    across file systems)."""
    if link:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
            return
        except OSError as exc:
            log.debug("cannot hard-link %s (%s); copying", src, exc)
    atomic_copy(src, dst)


def captures_in_catalogue(hub: Hub) -> set[str]:
    """Capture ids approved into the catalogue (a photo upload, or a confirmation's photo): catalogue images now,
    so never a field photo to fit or score on."""
    return {c for r in list_uploads(hub, status="approved") if isinstance(r["payload"], dict)
            for c in [r["payload"].get("capture_id"), *(r["payload"].get("capture_ids") or [])[:1]]
            if isinstance(c, str)}


def catalogue_digests(hub: Hub) -> set[str]:
    """The sha256 of every live catalogue image: an upload of the very same bytes (a catalogue photo confirmed
    again under a new capture id) is no field photo either (an audit: `evaluate-bundle` scored 20 such photos and
    reported top-1 1.0 where the tablet got 18 of 50)."""
    return {r["sha256"] for r in hub.store.live_images() if r.get("sha256")}


def export_calibration(hub: Hub, out_dir: str | os.PathLike[str], *, reviewed_only: bool = False,
                       link: bool = False, spot_checks_only: bool = False) -> dict[str, Any]:
    """Write what ``partlens calibrate`` needs, from the hub's catalogue and device uploads.

    - ``catalogue/<part>/<image_id>.jpg``: every live catalogue image (what devices search);
    - ``positives/<part>/<uuid>.jpg``: photos engineers confirmed as a catalogue part (feedback with
      ``verdict: correct``) that are NOT catalogue images (not approved into the catalogue, not
      rejected), of parts still in the catalogue;
    - ``negatives/<uuid>.jpg``: photos of unknown-part reports not made into a part and not rejected
      (with ``reviewed_only``: only those a reviewer confirmed, :func:`confirm_unknown`), with their
      extra views: parts the catalogue does not hold.

    ``out_dir`` must be new or empty (a stale photo would change the fit). Uploads whose photo has
    not finished uploading are left out and counted. ``link``: hard-link the hub's files instead of
    copying them (no extra disk for a large catalogue when ``out_dir`` is on the hub's file system;
    copies elsewhere). Linked files ARE the hub's files: never edit them in place. ``spot_checks_only``:
    positives only from spot-check answers (``spot_check: true``; a random sample of identifications, so the
    calibration's confidence matches what tablets see, not what engineers chose to confirm). Returns the counts.
    """
    final = Path(out_dir)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise UsageError(f"{final} exists and is not an empty folder")
    # written beside it and renamed into place at the end: a failure half way (a file name the file system
    # refuses, a full disk) leaves no partial folder that the next run would refuse as not empty
    out = final.with_name(f".{final.name}.exporting-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    try:
        counts = _export_calibration(hub, out, link=link, reviewed_only=reviewed_only,
                                     spot_checks_only=spot_checks_only)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)  # nothing to export still makes the (empty) folder
    if final.exists():
        final.rmdir()
    os.replace(out, final)
    log.info("calibration photos exported to %s: %s", final, counts)
    return counts


def _export_calibration(hub: Hub, out: Path, *, link: bool, reviewed_only: bool,
                        spot_checks_only: bool) -> dict[str, int]:
    counts = {"catalogue_images": 0, "catalogue_parts": 0, "positives": 0, "positive_parts": 0, "negatives": 0,
              "negative_reports": 0, "incomplete_uploads_skipped": 0, "not_spot_checks_skipped": 0}
    images = [r for r in hub.store.live_images() if hub.store.part(r["part_number"]) is not None]
    for image in images:
        src = hub.image_path(image)
        _place(src, out / "catalogue" / part_folder(image["part_number"]) / f"{image['image_id']}{_suffix(src)}", link)
    live = {r["part_number"] for r in images}
    counts.update(catalogue_images=len(images), catalogue_parts=len(live))
    in_catalogue = captures_in_catalogue(hub)
    digests = catalogue_digests(hub)

    def usable(row: Mapping[str, Any]) -> bool:
        if row["blob_size"] is None:
            return False
        if not row["blob_complete"]:
            counts["incomplete_uploads_skipped"] += 1
            return False
        return True

    pos_parts: set[str] = set()
    for row in list_uploads(hub, kind="feedback", status="new"):
        p = row["payload"] if isinstance(row["payload"], dict) else {}
        pn, captures = p.get("part_number"), p.get("capture_ids")
        captures = [c for c in captures if isinstance(c, str)] if isinstance(captures, list) else []
        if (p.get("verdict") != "correct" or not isinstance(pn, str) or pn not in live
                or (captures and captures[0] in in_catalogue) or row["blob_sha256"] in digests or not usable(row)):
            continue  # a device's malformed record is not a labelled photo either
        if spot_checks_only and p.get("spot_check") is not True:
            counts["not_spot_checks_skipped"] += 1
            continue
        _place(blob_path(hub, row["uuid"]), out / "positives" / part_folder(pn) / f"{row['uuid']}.jpg", link)
        counts["positives"] += 1
        pos_parts.add(pn)
    counts["positive_parts"] = len(pos_parts)
    statuses = ("approved",) if reviewed_only else ("new", "approved")
    kept_reports = {r["uuid"]: r for st in statuses for r in list_uploads(hub, kind="unknown_part", status=st)}
    reports: set[str] = set()
    for row in kept_reports.values():
        if usable(row):
            _place(blob_path(hub, row["uuid"]), out / "negatives" / f"{row['uuid']}.jpg", link)
            counts["negatives"] += 1
            reports.add(row["uuid"])
    for row in list_uploads(hub, kind="photo", status="new"):
        report = row["payload"].get("unknown_part") if isinstance(row["payload"], dict) else None
        if isinstance(report, str) and report in kept_reports and usable(row):
            _place(blob_path(hub, row["uuid"]), out / "negatives" / f"{report}-{row['uuid']}.jpg", link)
            counts["negatives"] += 1
            reports.add(report)
    counts["negative_reports"] = len(reports)
    return counts

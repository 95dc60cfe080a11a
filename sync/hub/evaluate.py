"""Score model bundles on the field photos the hub holds, before a new one goes to the tablets.

A bundle's own accuracy figures come from the data it was trained and checked on; the question before
``hub set-bundle`` is how it does on THIS terminal's photos. The hub holds labelled field photos: the
"this is the part" confirmations tablets uploaded with their photo (spot-check answers among them,
flagged ``spot_check``: a random sample; the other confirmations are not, see
:mod:`sync.hub.fieldstats`). :func:`evaluate_bundles` ranks the live catalogue's parts for each photo with
the active bundle and with a candidate bundle (verified, not installed), as a tablet ranks them (max over
a part's image similarities), and reports top-1/top-5 with 95% Wilson intervals, the share the bundle's
calibration accepts and their precision, and a paired comparison: photos only one of the two gets right,
with the exact McNemar test on them. The first photo of each open or confirmed unknown-part report is a part
the catalogue lacks: for those, the share the calibration accepts (it should not) and the AUROC of its
confidence, known against unknown.

Photos approved into the catalogue are left out (they are catalogue images: scoring them would score a
photo against itself), as are rejected uploads, photos still uploading, and photos of parts no longer
in the catalogue; a photo confirmed twice counts once.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_app import spotcheck
from edge_app.errors import InputError, UsageError

from .hub import EMBED_BATCH, Hub
from .review import captures_in_catalogue, catalogue_digests, list_uploads
from .uploads import blob_path

log = logging.getLogger(__name__)


def labelled_field_photos(hub: Hub, *, spot_checks_only: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The confirmed field photos to score -> (photos ``{uuid, part_number, path, spot_check}``, what was left out)."""
    live = {r["part_number"] for r in hub.store.live_images()}
    in_catalogue = captures_in_catalogue(hub)
    digests = catalogue_digests(hub)
    skipped = {"not_a_random_sample": 0, "still_uploading": 0, "part_not_in_catalogue": 0,
               "in_catalogue_or_duplicate": 0}
    photos, seen = [], set()
    for row in list_uploads(hub, kind="feedback", status="new"):  # approved = a catalogue image; rejected = wrong
        p = row["payload"] if isinstance(row["payload"], dict) else {}
        pn, caps = p.get("part_number"), p.get("capture_ids")
        first = caps[0] if isinstance(caps, list) and caps and isinstance(caps[0], str) else row["uuid"]
        if p.get("verdict") != "correct" or not isinstance(pn, str) or row["blob_size"] is None:
            continue  # "not this one", a malformed record, or no photo: nothing to score
        if spot_checks_only and p.get("spot_check") is not True:
            skipped["not_a_random_sample"] += 1
        elif not row["blob_complete"]:
            skipped["still_uploading"] += 1
        elif pn not in live:
            skipped["part_not_in_catalogue"] += 1
        elif first in in_catalogue or first in seen or row["blob_sha256"] in digests:
            skipped["in_catalogue_or_duplicate"] += 1
        else:
            seen.add(first)
            photos.append({"uuid": row["uuid"], "part_number": pn, "path": blob_path(hub, row["uuid"]),
                           "spot_check": p.get("spot_check") is True})
    return photos, skipped


def unknown_part_photos(hub: Hub) -> list[dict[str, Any]]:
    """The first photo of each open or confirmed unknown-part report (not made into a part, not rejected): parts
    the catalogue does not hold, which a good bundle's calibration does not accept."""
    rows = [*list_uploads(hub, kind="unknown_part", status="new"), *list_uploads(hub, kind="unknown_part",
                                                                                 status="approved")]
    return [{"uuid": r["uuid"], "path": blob_path(hub, r["uuid"])} for r in rows
            if r["blob_size"] is not None and r["blob_complete"]]


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: photos only A gets right vs only B (binomial, p = 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(f"{min(1.0, 2 * tail):.3g}")  # 3 significant digits: 6.0e-08, not 0.0 (rounded to 6 places)


def _embed_photos(embedder: Any, paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Photo vectors and which photos decoded (a photo that does not decode is left out and counted, never the
    end of the evaluation)."""
    from edge_app.errors import ImageError
    from edge_app.imageio import load_image

    draft = getattr(embedder, "draft_size", None)
    out, ok = [], []
    for i in range(0, len(paths), EMBED_BATCH):
        if i and i % (20 * EMBED_BATCH) == 0:
            log.info("embedded %d of %d field photos", i, len(paths))
        imgs = []
        for path in paths[i:i + EMBED_BATCH]:
            try:
                imgs.append(load_image(path, draft_size=draft))
                ok.append(True)
            except ImageError as exc:
                log.warning("field photo %s left out: %s", path.name, exc)
                ok.append(False)
        if imgs:
            out.append(np.asarray(embedder(imgs), np.float32))
    vecs = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    mask = np.array(ok, bool)
    full = np.zeros((len(paths), vecs.shape[1]), np.float32)
    full[mask] = vecs
    return full, mask


def _catalogue(hub: Hub, bundle_id: str, embedder: Any | None) -> tuple[np.ndarray, list[str]]:
    """Live catalogue vectors of a bundle and their part numbers: the active bundle's as stored (what tablets
    hold), another bundle's embedded now exactly as ``set-bundle`` would."""
    if embedder is None:
        per_part = hub.store.part_embeddings(bundle_id)
        parts = [pn for pn, v in per_part.items() for _ in range(len(v))]
        return (np.concatenate(list(per_part.values())) if per_part else np.zeros((0, 1), np.float32)), parts
    rows = [r for r in hub.store.live_images() if hub.store.part(r["part_number"]) is not None]
    return hub.embed_rows_cached(rows, embedder), [r["part_number"] for r in rows]


def _score(bundle_id: str, calibration: Mapping[str, Any] | None, cat: np.ndarray, cat_parts: list[str],
           queries: np.ndarray, truth: list[str | None]) -> tuple[dict[str, Any], np.ndarray]:
    """Rank parts for each photo; ``truth`` None marks a photo of a part outside the catalogue. Returns the figures
    and, for the catalogue-part photos, whether the top part was right."""
    from edge_app.runtime import calibration as C
    from export.calibrate import part_scores

    if not cat_parts:
        raise InputError(f"bundle {bundle_id}: no catalogue vectors to search")
    names, scores = part_scores(queries, cat, cat_parts)
    order = np.argsort(-scores, axis=1)
    ranked = [[names[j] for j in row[:spotcheck.TOP_K]] for row in order]
    known = np.array([t is not None for t in truth])
    right = np.array([r[0] == t for r, t in zip(ranked, truth)])
    top5 = np.array([t in r for r, t in zip(ranked, truth)])
    n = int(known.sum())
    out: dict[str, Any] = {"bundle_id": bundle_id, "photos": n,
                           "top1": round(float(right[known].mean()), 4),
                           "top1_ci95": spotcheck.wilson(int(right[known].sum()), n),
                           "top5": round(float(top5[known].mean()), 4),
                           "top5_ci95": spotcheck.wilson(int(top5[known].sum()), n),
                           "unknown_part_photos": int((~known).sum())}
    if calibration:
        cal = C.Calibration.from_dict(calibration, f"bundle {bundle_id} calibration")
        rows = np.arange(len(truth))
        top = scores[rows, order[:, 0]]
        second = scores[rows, order[:, 1]] if scores.shape[1] > 1 else np.full(len(truth), np.nan)
        confidence = cal.confidence(top, second)
        accepted = confidence >= cal.threshold
        ok = accepted & known
        out["accepted"] = round(float(accepted[known].mean()), 4)
        out["precision_when_accepted"] = round(float(right[ok].mean()), 4) if ok.any() else None
        out["precision_when_accepted_ci95"] = spotcheck.wilson(int(right[ok].sum()), int(ok.sum()))
        if (~known).any():  # "no confident match" for parts the catalogue lacks
            out["unknown_accepted"] = round(float(accepted[~known].mean()), 4)
            out["auroc_known_vs_unknown"] = round(float(C.auroc(confidence, known)), 4)
    return out, right[known]


def evaluate_bundles(hub: Hub, candidate: str | os.PathLike[str] | None = None, *,
                     spot_checks_only: bool = False) -> dict[str, Any]:
    """Score the active bundle (and ``candidate``, a bundle folder verified with the hub's keyring but not
    installed) on the hub's labelled field photos; see the module docstring. Nothing on the hub changes."""
    from edge_app.bundle import load_bundle

    active = hub.bundle_id
    if active is None:
        raise UsageError("the hub has no active bundle yet (`partlens hub set-bundle`)")
    photos, skipped = labelled_field_photos(hub, spot_checks_only=spot_checks_only)
    if not photos:
        raise InputError("no labelled field photos on the hub yet: tablets upload them with 'this is the part' "
                         "and spot-check answers" + (" (only spot-check photos were asked for)" if spot_checks_only
                                                     else ""))
    unknown = unknown_part_photos(hub)
    truth: list[str | None] = [*(p["part_number"] for p in photos), *(None for _ in unknown)]
    paths = [*(p["path"] for p in photos), *(u["path"] for u in unknown)]
    # (bundle, embedder for photos, embedder for the catalogue: None = the vectors the hub stores for tablets)
    bundles = [(load_bundle(hub.bundle_dir(active), hub.keyring), hub.embedder(), None)]
    if candidate is not None:
        cand = load_bundle(candidate, hub.keyring)  # IntegrityError for a tampered or foreign bundle
        if cand.bundle_id == active:
            raise UsageError(f"{candidate} is the active bundle {active}")
        emb = hub.embedder_factory(Path(cand.root), hub.keyring)
        bundles.append((cand, emb, emb))
    embedded = [_embed_photos(embedder, paths) for _, embedder, _ in bundles]
    readable = np.logical_and.reduce([ok for _, ok in embedded])  # both bundles score the same photos
    skipped["unreadable"] = int((~readable).sum())
    truth = [t for t, keep in zip(truth, readable) if keep]
    if all(t is None for t in truth):
        raise InputError("none of the labelled field photos on the hub decodes")
    results, rights = [], []
    for (bundle, _, catalogue_embedder), (vecs, _) in zip(bundles, embedded):
        log.info("scoring %d field photos with bundle %s", len(truth), bundle.bundle_id)
        cat, cat_parts = _catalogue(hub, bundle.bundle_id, catalogue_embedder)
        res, right = _score(bundle.bundle_id, bundle.manifest.get("calibration"), cat, cat_parts,
                            vecs[readable], truth)
        res["active"] = bundle.bundle_id == active
        results.append(res)
        rights.append(right)
    out: dict[str, Any] = {"photos": sum(t is not None for t in truth),
                           "unknown_part_photos": sum(t is None for t in truth),
                           "spot_check_photos": sum(p["spot_check"] for p, keep in zip(photos, readable) if keep),
                           "spot_checks_only": spot_checks_only, "left_out": skipped, "bundles": results,
                           "note": "spot-check photos are a random sample of identifications; other confirmations "
                                   "are photos engineers chose to confirm"}
    if len(rights) == 2:
        a, b = rights
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        out["paired"] = {"both_right": int((a & b).sum()), "both_wrong": int((~a & ~b).sum()),
                         "only_active_right": only_a, "only_candidate_right": only_b,
                         "mcnemar_p": mcnemar_p(only_a, only_b)}
    return out

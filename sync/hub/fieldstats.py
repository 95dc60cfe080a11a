"""How the models do in the field, from what tablets sent up.

Three kinds of upload carry it: the ``usage`` event a tablet queues for every identification
(bundle, answer status, top parts, views, latency; no photo), ``feedback`` (the engineer confirmed
a part, with the parts the tablet had ranked) and ``unknown_part`` reports. A confirmation and the
identification it answers share their capture ids, so a confirmation tells whether the tablet's
accepted answer was right. Engineers do not confirm every identification, so the confirmed rates
describe the confirmed cases, not a random sample: read them next to how many there are.

Spot checks are the random sample (:mod:`edge_app.spotcheck`): a tablet picks a share of its
identifications at random before the model answers (its usage event says ``spot_check``) and asks the
engineer which part it was; the answer comes up as a ``spot_check`` usage event. Their rates carry
95% Wilson intervals, and the skipped and unanswered ones are counted (non-response is bias too).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from edge_app import spotcheck
from edge_app.errors import UsageError

from .hub import Hub

log = logging.getLogger(__name__)


#: the longest look back (or age) in days a command takes: 100 years
MAX_DAYS = 36_500


def received_since(days: float, what: str) -> str:
    """The hub receipt time (ISO UTC) ``days`` days ago; ``days`` must be > 0 and at most 100 years."""
    if not 0 < days <= MAX_DAYS:  # also NaN; infinity or a million days overflowed the date arithmetic
        raise UsageError(f"{what} must be > 0 and at most {MAX_DAYS}, got {days}")
    return (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=days)).isoformat(timespec="seconds")


def _rate(hits: int, n: int) -> float | None:
    return round(hits / n, 4) if n else None


def _first_capture(payload: Mapping[str, Any]) -> str | None:
    ids = payload.get("capture_ids") or []
    return str(ids[0]) if ids else None


def _answer_key(feedback: Mapping[str, Any]) -> str | None:
    """Which identification a confirmation answers: its ``identification_id`` (tablets since the 23rd session),
    else its first photo (an older tablet's: the last identification of that photo; a second view that made an
    answer accepted was credited to the first, unaccepted one, an audit)."""
    ident = feedback.get("identification_id")
    if isinstance(ident, str) and ident:
        return f"id:{ident}"
    c = _first_capture(feedback)
    return f"capture:{c}" if c else None


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _well_formed(kind: str, p: Mapping[str, Any]) -> bool:
    """Tablets are trusted to upload, not to be bug-free: a record whose fields have the wrong types is
    left out (and counted) rather than breaking the statistics."""
    if not isinstance(p.get("capture_ids", []), list):
        return False
    if kind == "usage":
        views = p.get("views", 1)
        return (isinstance(p.get("status"), str) and _str_list(p.get("top", []))
                and isinstance(views, int) and not isinstance(views, bool) and views >= 1
                and (p.get("ms") is None or isinstance(p.get("ms"), (int, float))))
    if kind == "feedback":
        return isinstance(p.get("part_number"), str) and _str_list(p.get("candidates", []))
    if kind == "spot_check":
        answer = p.get("answer")
        return (p.get("result") in spotcheck.RESULTS and isinstance(p.get("status"), str)
                and _str_list(p.get("top", [])) and (answer is None or isinstance(answer, str))
                and (answer is None) == (p.get("result") != spotcheck.ANSWERED))
    return True


def _ident_key(rec: Mapping[str, Any]) -> str:
    """The identification a usage event or spot-check answer is about (older tablets: its photos)."""
    return str(rec.get("identification_id") or json.dumps(list(rec.get("capture_ids") or [])))


@dataclass
class _Usage:
    """One bundle's (or one week's) identifications, summed as they stream past: a busy terminal has millions
    of usage events, and holding them all took 3.4 GB at a million (an audit)."""

    n: int = 0
    no_match: int = 0
    multi_view: int = 0
    asked_to_measure: int = 0
    ms: array = field(default_factory=lambda: array("d"))
    #: identifications a spot check was asked for
    asked: set[str] = field(default_factory=set)
    #: answer key (:func:`_answer_key`) -> (status, top part) of the identifications confirmations answer
    by_answer: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def add(self, u: Mapping[str, Any], wanted: set[str] | None = None) -> None:
        self.n += 1
        self.no_match += u.get("status") != "match"
        self.multi_view += int(u.get("views") or 1) > 1
        self.asked_to_measure += bool(u.get("asked_to_measure"))
        if isinstance(u.get("ms"), (int, float)):
            self.ms.append(float(u["ms"]))
        if u.get("spot_check") is True:
            self.asked.add(_ident_key(u))
        if wanted:
            ident, c = u.get("identification_id"), _first_capture(u)
            for key in (f"id:{ident}" if isinstance(ident, str) and ident else None, f"capture:{c}" if c else None):
                if key in wanted:
                    top = u.get("top") or []
                    self.by_answer[key] = (u.get("status"), top[0] if top else None)


def _spot_check_stats(asked_keys: set[str], spots: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Unbiased field accuracy of one bundle from its spot checks (see the module docstring); ``asked_keys``: the
    identifications whose usage event says a spot check was asked."""
    # an answer proves its question was asked even when its identification's usage event is gone (`hub
    # prune-usage` keeps answers, drops events; a `--days` window can cut between them): counted once either way
    asked = len(asked_keys | {_ident_key(s) for s in spots})
    answered = [s for s in spots if s["result"] != spotcheck.SKIPPED]
    skipped = len(spots) - len(answered)
    n = len(answered)
    top1 = sum(s["answer"] is not None and list(s["top"])[:1] == [s["answer"]] for s in answered)
    top5 = sum(s["answer"] is not None and s["answer"] in list(s["top"])[:spotcheck.TOP_K] for s in answered)
    accepted = [s for s in answered if s["status"] == "match"]
    right = sum(s["answer"] is not None and list(s["top"])[:1] == [s["answer"]] for s in accepted)
    return {"asked": asked, "answered": n, "skipped": skipped,
            # picked, but no answer has reached the hub (yet: it comes with a later sync, or the engineer left)
            "unanswered": max(0, asked - n - skipped),
            "top1": _rate(top1, n), "top1_ci95": spotcheck.wilson(top1, n),
            "top5": _rate(top5, n), "top5_ci95": spotcheck.wilson(top5, n),
            "accepted": len(accepted), "precision_when_accepted": _rate(right, len(accepted)),
            "precision_when_accepted_ci95": spotcheck.wilson(right, len(accepted)),
            # next to the bundle's overall rate: a check that the answered sample looks like all identifications
            "no_confident_match": _rate(n - len(accepted), n)}


def _bundle_stats(usage: _Usage, confirmed: list[Mapping[str, Any]],
                  rejected: list[Mapping[str, Any]]) -> dict[str, Any]:
    ms = np.frombuffer(usage.ms, dtype=np.float64) if len(usage.ms) else np.empty(0)
    out: dict[str, Any] = {
        "identifications": usage.n,
        "no_confident_match": _rate(usage.no_match, usage.n),
        "multi_view": _rate(usage.multi_view, usage.n),
        "asked_to_measure": _rate(usage.asked_to_measure, usage.n),
        "median_ms": round(float(np.median(ms)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "confirmed": len(confirmed),
    }
    # a confirmation without the tablet's ranking (sent from the catalogue, or by an older app) judges nothing
    ranked = [f for f in confirmed if f.get("candidates")]
    out["confirmed_without_ranking"] = len(confirmed) - len(ranked)
    top = [list(f["candidates"]) for f in ranked]
    truth = [f.get("part_number") for f in ranked]
    out["confirmed_top1"] = _rate(sum(t[0] == pn for t, pn in zip(top, truth)), len(ranked))
    out["confirmed_top5"] = _rate(sum(pn in t[:5] for t, pn in zip(top, truth)), len(ranked))
    # the identification each confirmation answers (same first capture): was its answer accepted, and right?
    accepted = [(f, usage.by_answer[c]) for f in confirmed
                if (c := _answer_key(f)) in usage.by_answer and usage.by_answer[c][0] == "match"]
    out["confirmed_accepted"] = len(accepted)
    out["precision_when_accepted"] = _rate(
        sum(top1 is not None and top1 == f.get("part_number") for f, (_, top1) in accepted), len(accepted))
    out["rejected_top1"] = sum(bool(f.get("candidates")) and f["candidates"][0] == f.get("part_number")
                               for f in rejected)
    return out


def _validation_top1(hub: Hub, bundle_id: str) -> float | None:
    """The top-1 the bundle's builder recorded (manifest ``accuracy``: ``val_top1`` or ``top1``), if any."""
    row = hub.store.bundle(bundle_id)
    acc = ((row or {}).get("manifest") or {}).get("accuracy") or {}
    v = acc.get("val_top1", acc.get("top1")) if isinstance(acc, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 else None


def _field_vs_validation(hub: Hub, bundle_id: str, spot: Mapping[str, Any]) -> dict[str, Any]:
    """The lab-to-field gap: the bundle's validation top-1 next to its spot-check top-1, and ``below`` when the
    whole 95% interval of the field figure is under the validation one (the model does worse here than where it
    was checked: other lighting, other parts, a catalogue that drifted)."""
    val = _validation_top1(hub, bundle_id)
    ci = spot.get("top1_ci95")
    verdict = None
    if val is not None and ci:
        verdict = "below" if ci[1] < val else "above" if ci[0] > val else "consistent"
    if verdict == "below":
        log.warning("bundle %s: field top-1 from spot checks %s (95%% interval %s-%s) is below its validation "
                    "top-1 %s", bundle_id, spot["top1"], ci[0], ci[1], val)
    return {"validation_top1": val, "field_vs_validation": verdict}


def _missed_parts(confirmed: Iterable[Mapping[str, Any]], limit: int = 10) -> list[dict[str, Any]]:
    """Confirmed parts the tablets most often did not rank first, with what they ranked first instead."""
    per: dict[str, dict[str, Any]] = {}
    for f in confirmed:
        pn, cands = f.get("part_number"), list(f.get("candidates") or [])
        if not cands:  # no ranking to judge
            continue
        row = per.setdefault(pn, {"part_number": pn, "confirmed": 0, "top1_missed": 0, "ranked_first_instead": {}})
        row["confirmed"] += 1
        if cands[0] != pn:
            row["top1_missed"] += 1
            row["ranked_first_instead"][cands[0]] = row["ranked_first_instead"].get(cands[0], 0) + 1
    rows = sorted((r for r in per.values() if r["top1_missed"]), key=lambda r: (-r["top1_missed"], r["part_number"]))
    return rows[:limit]


def _week(stamp: Any) -> str | None:
    """'2026-W49' (ISO week) of an ISO time, or None."""
    try:
        year, week, _ = _dt.datetime.fromisoformat(str(stamp)).isocalendar()
    except ValueError:
        return None
    return f"{year}-W{week:02d}"


#: a tablet's time for an event is believed within this much of the hub's receipt (an event waits in the outbox
#: while the tablet is away from its dock; it is never received before it happened, beyond clock skew)
_PLAUSIBLE_BEFORE = _dt.timedelta(days=180)
_PLAUSIBLE_AFTER = _dt.timedelta(days=1)


def _event_week(created: Any, received: Any) -> str | None:
    """The ISO week of an event on the tablet's clock, or of its receipt when the tablet's time cannot be right
    (after the receipt, or long before it: a tablet that booted in 1970 or ran in 2040 put five of six
    identifications in impossible weeks, an audit, 23rd session)."""
    try:
        c = _dt.datetime.fromisoformat(str(created))
        r = _dt.datetime.fromisoformat(str(received))
        if c.tzinfo is None or r.tzinfo is None or not r - _PLAUSIBLE_BEFORE <= c <= r + _PLAUSIBLE_AFTER:
            return _week(received)
    except ValueError:
        return _week(received)
    return _week(created)


def _weekly(weeks: Mapping[str, _Usage], spots: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One bundle's figures per ISO week of the tablets' clocks: is "no confident match" creeping up (parts
    the catalogue lacks, light, a drifting catalogue), is spot-check top-1 falling?"""
    rows = []
    for w in sorted(set(weeks) | {x["_week"] for x in spots if x.get("_week")}):
        u = weeks.get(w) or _Usage()
        sc = _spot_check_stats(u.asked, [x for x in spots if x.get("_week") == w])
        b = _bundle_stats(u, [], [])
        rows.append({"week": w, "identifications": b["identifications"], "no_confident_match": b["no_confident_match"],
                     "median_ms": b["median_ms"], "spot_checks_answered": sc["answered"], "spot_check_top1": sc["top1"],
                     "spot_check_top1_ci95": sc["top1_ci95"]})
    return rows


def field_stats(hub: Hub, *, bundle_id: str | None = None, site: str | None = None,
                days: float | None = None, weekly: bool = False) -> dict[str, Any]:
    """Per bundle: identifications, "no confident match" rate, latency on the tablets, and from the
    engineers' confirmations top-1/top-5 and precision of accepted answers; the parts most often
    missed (over every bundle kept by the filters); unknown-part reports. ``bundle_id`` / ``site``
    keep only those uploads; ``days`` only what the hub received in the last ``days`` days (a year
    of usage events is millions of rows); ``weekly`` adds each bundle's figures per ISO week (by the
    tablets' clocks, else the hub's receipt time). Uploads with malformed fields are skipped and counted."""
    since = None if days is None else received_since(days, "days")

    def keep(p: Mapping[str, Any], row_site: str, with_bundle: bool = True) -> bool:
        # the site the record names (where it happened), else the device's at receipt: a tablet enrolled in the
        # app sent records naming no site, and `--site` lost them all (an audit, 23rd session)
        where = p.get("site") if isinstance(p.get("site"), str) and p.get("site") else row_site
        return (site is None or where == site) and (
            not with_bundle or bundle_id is None or p.get("bundle_id") == bundle_id)

    malformed = 0

    def payloads(kind: str) -> Iterator[Mapping[str, Any]]:
        """The kept, well-formed payloads of ``kind``, streamed in receipt order (``_week`` added if weekly)."""
        nonlocal malformed
        for text, created, received, row_site in hub.store.iter_upload_payloads(kind, since):
            try:
                p = json.loads(text)
            except ValueError:
                p = None
            shape = "spot_check" if isinstance(p, dict) and p.get("event") == "spot_check" else kind
            if not isinstance(p, dict) or not _well_formed(shape, p):
                malformed += 1
            elif keep(p, row_site, with_bundle=kind != "unknown_part") and (kind != "usage" or p.get("event") in (
                    "identify", "spot_check")):
                yield dict(p, _week=_event_week(created, received)) if weekly else p

    # confirmations and reports are few (a person made each); the usage events (one per identification) are
    # streamed once, keeping sums and what the confirmations need to be joined to their identification
    feedback = list(payloads("feedback"))
    unknown = sum(1 for _ in payloads("unknown_part"))
    wanted = {c for f in feedback if f.get("verdict") == "correct" and (c := _answer_key(f))}
    usage: dict[str, _Usage] = {}
    by_week: dict[str, dict[str, _Usage]] = {}
    spots: list[Mapping[str, Any]] = []
    for p in payloads("usage"):
        if p.get("event") == "spot_check":
            spots.append(p)
            continue
        b = str(p.get("bundle_id"))
        usage.setdefault(b, _Usage()).add(p, wanted)
        if weekly and p.get("_week"):
            by_week.setdefault(b, {}).setdefault(p["_week"], _Usage()).add(p)
    bundles = sorted(set(usage) | {str(p.get("bundle_id")) for p in [*feedback, *spots]})
    per_bundle = []
    for b in bundles:
        conf = [f for f in feedback if str(f.get("bundle_id")) == b and f.get("verdict") == "correct"]
        rej = [f for f in feedback if str(f.get("bundle_id")) == b and f.get("verdict") == "wrong"]
        used = usage.get(b) or _Usage()
        b_spots = [s for s in spots if str(s.get("bundle_id")) == b]
        sc = _spot_check_stats(used.asked, b_spots)
        per_bundle.append({"bundle_id": b, "active": b == hub.bundle_id,
                           # a confirmation joins an identification OF ITS BUNDLE (the same photo identified
                           # again after a bundle change joined the later bundle's event before; an audit)
                           **_bundle_stats(used, conf, rej),
                           "spot_checks": sc,
                           **_field_vs_validation(hub, b, sc)})
        if weekly:
            per_bundle[-1]["weekly"] = _weekly(by_week.get(b, {}), b_spots)
    confirmed = [f for f in feedback if f.get("verdict") == "correct"]
    return {"filters": {"bundle_id": bundle_id, "site": site, "received_since": since}, "bundles": per_bundle,
            "unknown_part_reports": unknown, "missed_parts": _missed_parts(confirmed),
            # the same from spot-check answers naming a part: which parts the tablets miss in a random sample
            "spot_check_missed_parts": _missed_parts([{"part_number": s["answer"], "candidates": s["top"]}
                                                      for s in spots if s["answer"] is not None]),
            "malformed_uploads_skipped": malformed,
            "spot_check_rate": hub.policy()["spot_check_rate"],
            "note": "confirmed_* rates are over the identifications engineers confirmed, not a random sample; "
                    "spot_checks are a random sample (rates with 95% intervals)"}


def prune_usage(hub: Hub, older_than_days: float) -> dict[str, Any]:
    """Delete the usage events the hub received more than ``older_than_days`` days ago (one per
    identification: a busy terminal makes millions a year). Spot-check answers, confirmations, photos and
    unknown-part reports are kept."""
    before = received_since(older_than_days, "older-than-days")
    n = hub.store.delete_uploads("usage", before)
    log.info("deleted %d usage events received before %s", n, before)
    return {"deleted_usage_events": n, "received_before": before}

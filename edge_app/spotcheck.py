"""Spot checks: a random sample of identifications the engineer is asked to label.

Engineers confirm an answer when they care to, so confirmations are not a random sample of what the
tablets see; an accuracy figure from them is biased (usually upwards). A spot check fixes that: for
a fraction of identifications (the hub's ``spot_check_rate``, sent with every sync plan), decided
at random BEFORE the model has answered, the results screen asks "which part did you photograph?".
The answer (a part, "none of these", or "skip") goes to the hub as a small usage event; the hub's
field statistics turn the answered ones into top-1/top-5 and precision-when-accepted with 95%
intervals, and report how many were skipped or left unanswered (non-response is bias too).

No Kivy and nothing heavy here: the hub, the app's services and the sync client share it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError

log = logging.getLogger(__name__)

#: the hub's rate when its admin never set one: about 1 identification in 20
DEFAULT_RATE = 0.05
#: what the engineer answered
ANSWERED, NONE_OF_THESE, SKIPPED = "answered", "none_of_these", "skipped"
RESULTS = (ANSWERED, NONE_OF_THESE, SKIPPED)
#: candidates judged (the results screen shows the top five as answers to pick)
TOP_K = 5


def check_rate(value: Any) -> float:
    """A spot-check rate in [0, 1] as float, or :class:`UsageError` (never clipped silently)."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"spot-check rate must be a number from 0 to 1, got {value!r}") from None
    if isinstance(value, bool) or not (0.0 <= rate <= 1.0) or math.isnan(rate):
        raise UsageError(f"spot-check rate must be from 0 (off) to 1 (every identification), got {value!r}")
    return rate


def policy_from_plan(policy: Any) -> dict[str, float]:
    """The field policy a sync plan carries, checked; :class:`UsageError` when malformed."""
    if not isinstance(policy, Mapping):
        raise UsageError(f"field policy must be an object, got {type(policy).__name__}")
    return {"spot_check_rate": check_rate(policy.get("spot_check_rate"))}


def device_rate(data_dir: str | os.PathLike[str]) -> float:
    """The spot-check rate this tablet follows: the hub's, as of the last sync (``device.json``). A tablet
    that never synced with a hub that sets one (or whose file is unreadable) asks for none."""
    path = Path(data_dir) / "device.json"
    if not path.is_file():
        return 0.0
    try:
        policy = json.loads(path.read_text()).get("policy") or {}
        return check_rate(policy.get("spot_check_rate", 0.0))
    except (ValueError, OSError, AttributeError, UsageError) as exc:
        log.warning("%s: spot-check policy unreadable (%s); no spot checks", path, exc)
        return 0.0


def wilson(hits: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score interval of a proportion (95% by default); ``None`` without observations. Unlike
    the normal approximation it stays inside [0, 1] and is sensible for the small samples spot checks give."""
    if n <= 0:
        return None
    p = hits / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def answer_payload(outcome: Any, part_number: str | None, *, skipped: bool = False,
                   site: str | None = None) -> dict[str, Any]:
    """The ``spot_check`` usage event for the engineer's answer to ``outcome`` (an
    :class:`edge_app.services.IdentifyOutcome` picked for a spot check): ``part_number`` is the part
    photographed, ``None`` for "none of these", or ``skipped``. :class:`UsageError` when there is
    nothing to answer (the caller checks that the part exists in its catalogue)."""
    if not outcome.spot_check:
        raise UsageError("this identification was not picked for a spot check")
    if outcome.spot_check_done:
        raise UsageError("this spot check is already answered")
    if skipped and part_number is not None:
        raise UsageError("a skipped spot check has no answer")
    result = SKIPPED if skipped else NONE_OF_THESE if part_number is None else ANSWERED
    return {"event": "spot_check", "result": result, "answer": part_number, "top": list(outcome.model_top),
            "status": outcome.model_status or "unknown", "bundle_id": outcome.bundle_id,
            "capture_ids": list(outcome.capture_ids), "views": max(1, len(outcome.capture_ids)), "site": site,
            "identification_id": outcome.identification_id}


def answer_uuid(outcome: Any, record: str = "answer") -> str:
    """The outbox UUID of an identification's spot-check ``record`` (the answer, or the "this is the part" that
    goes with it): derived from its ``identification_id``, so an answer given again (the app was stopped after
    queueing it but before saving that) is the same record, and the hub, which keeps one per UUID, counts it once."""
    if not outcome.identification_id:
        return str(uuid.uuid4())  # an outcome saved by an app without identification ids
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"partlens:spot-check:{outcome.identification_id}:{record}"))

"""Identify held-out photos on the device runtime and score what happened."""
from __future__ import annotations

import csv
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Outcome:
    """One query photo and what the device answered."""

    path: str
    truth: str
    ranked: list[str]          # part numbers, best first
    best_images: list[str | None]
    similarities: list[float]
    status: str                # match | no_confident_match
    confidence: float | None
    needs_scale_photo: bool
    ms: float
    after_measurement: str | None = None  # the first part once the asked-for measurement was entered
    needs_detail_photo: bool = False  # same-size look-alikes on top: the app asks for a close-up
    extra_views: list[str] = field(default_factory=list)  # the query's other photos (multi-view queries)

    @property
    def first(self) -> str | None:
        return self.ranked[0] if self.ranked else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_photos(root: Path, parts: Sequence[str]) -> list[tuple[Path, str]]:
    """(path, part number) of the generated field shots of ``parts`` under ``root``."""
    wanted = set(parts)
    with open(root / "images.csv", newline="") as fh:
        return [(root / r["path"], r["part_number"]) for r in csv.DictReader(fh)
                if r["kind"] == "field" and r["part_number"] in wanted]


def wear_kinds(root: Path) -> dict[str, str]:
    """Image path (as ``field_photos`` gives it) -> the wear drawn on it ("grease", "rust+chipped", ...)."""
    with open(root / "images.csv", newline="") as fh:
        return {str(root / r["path"]): r.get("wear") or "" for r in csv.DictReader(fh)}


def wear_effect(clean: Sequence[Outcome], worn: Sequence[Outcome], kinds: dict[str, str]) -> dict[str, Any]:
    """Paired: each worn photo is a clean query photo with wear drawn on (same file name, same part).

    How many the wear turned from right to wrong and back, and top-1 by kind of wear (a photo with two kinds
    counts for both)."""
    by_name = {(Path(o.path).parent.name, Path(o.path).name): o for o in clean}
    pairs = []
    for o in worn:
        c = by_name.get((Path(o.path).parent.name, Path(o.path).name))
        if c is None or c.truth != o.truth:
            raise ValueError(f"worn photo {o.path} has no clean twin among the scored photos")
        pairs.append((c.first == c.truth, o.first == o.truth, kinds.get(o.path, "")))
    per_kind: dict[str, list[bool]] = {}
    for _, ok, kind in pairs:
        for k in filter(None, kind.split("+")):
            per_kind.setdefault(k, []).append(ok)
    return {"pairs": len(pairs),
            "clean_top1": sum(c for c, _, _ in pairs) / len(pairs) if pairs else None,
            "worn_top1": sum(w for _, w, _ in pairs) / len(pairs) if pairs else None,
            "right_to_wrong": sum(c and not w for c, w, _ in pairs),
            "wrong_to_right": sum(w and not c for c, w, _ in pairs),
            "by_kind": {k: {"queries": len(v), "top1": round(sum(v) / len(v), 4)} for k, v in sorted(per_kind.items())}}


def view_pairs(photos: Sequence[tuple[Path, str]]) -> list[tuple[tuple[Path, Path], str]]:
    """Two-photo queries: each part's photos (in path order) paired as 1+2, 3+4, ...; an odd last one is left out.

    The engineer's "take another photo" step: the runtime fuses the two views into one ranking."""
    by_part: dict[str, list[Path]] = {}
    for path, truth in photos:
        by_part.setdefault(truth, []).append(path)
    out = []
    for truth in sorted(by_part):
        paths = sorted(by_part[truth])
        out += [((paths[i], paths[i + 1]), truth) for i in range(0, len(paths) - 1, 2)]
    return out


def _parts_rows(parts_csvs: Sequence[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in parts_csvs:
        with open(path, newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def look_alike_groups(*parts_csvs: Path) -> dict[str, str]:
    """part number -> look-alike group ('' when the part has none)."""
    return {r["part_number"]: r.get("look_alike_group") or "" for r in _parts_rows(parts_csvs)}


#: Simulated caliper reading: the part's catalogue size plus this much noise (standard deviation, mm).
CALIPER_SD_MM = 0.2


def identify_photos(identifier: Any, photos: Sequence[tuple[Path | Sequence[Path], str]], top: int = 5, *,
                    services: Any = None, sizes: dict[str, float] | None = None, seed: int = 0) -> list[Outcome]:
    """Run every query through ``identifier.identify``, timing each call. A query is one photo, or
    several photos of one part (:func:`view_pairs`), fused by the runtime into one ranking.

    With ``services`` and ``sizes``: when the answer asks for a measurement (size-only look-alikes
    on top), simulate the engineer measuring the part with calipers (catalogue size + N(0, 0.2 mm))
    and apply the app's own re-ranking (:func:`edge_app.services.refine_by_size`).
    """
    rng = np.random.default_rng(seed)
    out = []
    for query, truth in photos:
        views = [Path(query)] if isinstance(query, (str, Path)) else [Path(q) for q in query]
        t0 = time.perf_counter()
        res = identifier.identify(views, top=top)
        ms = (time.perf_counter() - t0) * 1000
        after = None
        if services is not None and sizes and res.needs_scale_photo and sizes.get(truth):
            from ..services import refine_by_size

            refined = refine_by_size(services.outcome_from_result(res, []),
                                     float(sizes[truth] + rng.normal(0.0, CALIPER_SD_MM)))
            after = refined.best.part_number if refined.best else None
        out.append(Outcome(str(views[0]), truth, [m.part_number for m in res.matches],
                           [m.best_image_id for m in res.matches], [m.similarity for m in res.matches],
                           res.status, res.confidence, bool(res.needs_scale_photo), ms, after,
                           bool(getattr(res, "needs_detail_photo", False)), [str(v) for v in views[1:]]))
    return out


def part_sizes(*parts_csvs: Path) -> dict[str, float]:
    """part number -> catalogue size in mm (parts without one are left out)."""
    return {r["part_number"]: float(r["size_mm"]) for r in _parts_rows(parts_csvs) if r.get("size_mm")}


def summarize(outcomes: Sequence[Outcome], groups: dict[str, str],
              sizes: dict[str, float] | None = None) -> dict[str, Any]:
    """Top-1 / top-5, "no confident match" rate, precision of accepted answers, latency.

    ``top1_up_to_size`` also counts a same-group look-alike of ANOTHER size ranked first (a photo
    without a scale reference cannot show size; the app then asks for a measurement). With ``sizes``
    (part -> size_mm), a same-group part of the same size (e.g. relays that differ only in their
    label) is still a miss.
    """
    n = len(outcomes)
    if n == 0:
        return {"queries": 0}
    sizes = sizes or {}

    def size_only(truth: str, first: str | None) -> bool:
        if not first or not groups.get(truth) or groups.get(first) != groups.get(truth):
            return False
        return truth not in sizes or first not in sizes or sizes[truth] != sizes[first]

    right = [o.first == o.truth for o in outcomes]
    same_group = [r or size_only(o.truth, o.first) for o, r in zip(outcomes, right)]
    after = [(o.after_measurement if o.after_measurement is not None else o.first) == o.truth for o in outcomes]
    accepted = [o.status == "match" for o in outcomes]
    ms = np.array([o.ms for o in outcomes])
    n_acc = sum(accepted)
    return {
        "queries": n,
        "top1": sum(right) / n,
        "top1_up_to_size": sum(same_group) / n,
        "asked_to_measure": sum(o.needs_scale_photo for o in outcomes) / n,
        "asked_for_closeup": sum(o.needs_detail_photo for o in outcomes) / n,
        "top1_after_measurement": sum(after) / n,
        "top5": sum(o.truth in o.ranked[:5] for o in outcomes) / n,
        "no_confident_match": 1 - n_acc / n,
        "accepted": n_acc / n,
        "precision_when_accepted": (sum(a and r for a, r in zip(accepted, right)) / n_acc) if n_acc else None,
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def look_alike_confusion(outcomes: Sequence[Outcome], groups: dict[str, str]) -> list[dict[str, Any]]:
    """Per look-alike group: how often a photo of one member was answered with another member.

    One row per group with two or more members in ``groups`` and queries: its members, the number
    of queries, and each confused (truth -> answer) pair with its count.
    """
    members: dict[str, set[str]] = defaultdict(set)
    for pn, g in groups.items():
        if g:
            members[g].add(pn)
    rows = []
    for g in sorted(members):
        qs = [o for o in outcomes if o.truth in members[g]]
        if len(members[g]) < 2 or not qs:
            continue
        pairs = Counter((o.truth, o.first) for o in qs if o.first in members[g] and o.first != o.truth)
        confused = sum(pairs.values())
        rows.append({"group": g, "members": sorted(members[g]), "queries": len(qs),
                     "confused_within_group": confused, "rate": confused / len(qs),
                     "pairs": [{"truth": t, "answer": a, "count": c} for (t, a), c in sorted(pairs.items())]})
    return rows

"""An in-memory stand-in for :class:`edge_app.services.DeviceServices`, for UI tests and screenshots.

NOT the device path (``partlens app`` uses DeviceServices). It draws six catalogue parts with
Pillow and ranks them with a toy colour-histogram matcher, so the screens show real, varied data
(confident match, look-alikes, no confident match) without a model bundle. Captures and app
state use the real :class:`CaptureStore` and :class:`StateStore` on disk.
"""
from __future__ import annotations

import datetime as _dt
import uuid as _uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import spotcheck
from ..errors import InputError, SyncError, UsageError
from ..storage import RESERVE_BYTES
from ..services import (CaptureStore, Capture, IdentifyOutcome, Match, StateStore, SyncStatus, confidence_words,
                        detect_look_alikes, refine_by_size)

HUB_TIME = "2026-11-21T22:00:00+00:00"
#: part_number, name, category, manufacturer, size_mm, look-alike group, colour, shape, stock A, bin A, stock B
PARTS = [
    ("BRG-6204-2RS", "Ball bearing 6204 2RS", "bearings", "SKF", 47.0, "bearing-62", (120, 120, 130), "ring", 14,
     "A-03-2", 4),
    ("BRG-6205-2RS", "Ball bearing 6205 2RS", "bearings", "SKF", 52.0, "bearing-62", (118, 122, 132), "ring", 0,
     "A-03-3", 9),
    ("BLT-M12X50", "Hex bolt M12 x 50, 8.8 zinc", "fasteners", "Würth", 50.0, None, (190, 170, 60), "bolt", 240,
     "C-11-1", 80),
    ("FLT-HYD-10U", "Hydraulic return filter 10 um", "filters", "Parker", 110.0, None, (30, 90, 170), "can", 3,
     "F-02-4", 0),
    ("SNS-PRX-M18", "Inductive proximity sensor M18", "sensors", "IFM", 18.0, None, (200, 60, 40), "bolt", 6,
     "E-07-1", 2),
    ("FUS-NH00-32A", "NH00 fuse link 32 A", "electrical", "Siemens", 78.0, None, (40, 140, 70), "box", 25,
     "E-01-5", 12),
]


def draw_part(colour: tuple[int, int, int], shape: str, size: int = 256, seed: int = 0) -> "Image.Image":  # noqa: F821
    """A simple drawing of a part on a light bench (catalogue photo stand-in)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (236, 234, 228))
    d = ImageDraw.Draw(img)
    c = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-10, 10, 3), 0, 255))
    m = size // 6
    if shape == "ring":
        d.ellipse([m, m, size - m, size - m], fill=c)
        d.ellipse([size // 2 - m, size // 2 - m, size // 2 + m, size // 2 + m], fill=(236, 234, 228))
    elif shape == "bolt":
        d.rectangle([size // 2 - m // 2, m, size // 2 + m // 2, size - m], fill=c)
        d.polygon([(size // 2 - m, m), (size // 2 + m, m), (size // 2 + m, 2 * m), (size // 2 - m, 2 * m)], fill=c)
    elif shape == "can":
        d.rounded_rectangle([m, m // 2, size - m, size - m // 2], radius=m, fill=c)
    else:
        d.rectangle([m, 2 * m, size - m, size - 2 * m], fill=c)
        d.rectangle([m - m // 2, size // 2 - m // 3, m, size // 2 + m // 3], fill=(150, 150, 150))
        d.rectangle([size - m, size // 2 - m // 3, size - m // 2, size // 2 + m // 3], fill=(150, 150, 150))
    return img


def colour_signature(img: "Image.Image") -> np.ndarray:  # noqa: F821
    """Mean RGB of the pixels that differ from the bench colour (the toy matcher's "embedding")."""
    a = np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float64)
    fg = a[(np.abs(a - np.array([236, 234, 228])).sum(-1) > 40)]
    return (fg if len(fg) else a.reshape(-1, 3)).mean(axis=0)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.exp(-np.linalg.norm(a - b) / 60.0))


class PreviewServices:
    """Same methods as DeviceServices, backed by drawn parts and in-memory outbox/sync state."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.captures = CaptureStore(self.root / "captures")
        self.state = StateStore(self.root / "app_state.json")
        self.outbox: list[dict[str, Any]] = []
        self.refused = 0  # uploads the (pretend) hub refused: shown on the sync screen when > 0
        self.free_bytes = 3_800 * 1024**2  # the (pretend) tablet's free storage; below RESERVE_BYTES it says LOW
        self.enrolled_hub: str | None = None
        self.sync_running = False  # another (pretend) sync holds the tablet's sync lock
        self.catalogue_version = 41
        self.last_sync: str | None = "2026-11-21T22:05:00+00:00"
        img_dir = self.root / "catalogue"
        img_dir.mkdir(parents=True, exist_ok=True)
        self.parts: dict[str, dict[str, Any]] = {}
        self.signatures: dict[str, np.ndarray] = {}
        for i, (pn, name, cat, maker, size, group, colour, shape, sa, bin_a, sb) in enumerate(PARTS):
            files = []
            for k in range(2):
                p = img_dir / f"{pn}_{k}.png"
                if not p.exists():
                    draw_part(colour, shape, seed=i * 10 + k).save(p)
                files.append(str(p))
            self.parts[pn] = {
                "part_number": pn, "name": name, "category": cat, "manufacturer": maker, "size_mm": size,
                "look_alike_group": group, "description": f"{name} ({maker}).",
                "images": [{"image_id": f"{pn}-{k}", "path": f, "file": f, "kind": "catalogue"}
                           for k, f in enumerate(files)],
                "inventory": [{"site": "Quay A", "stock": sa, "bin": bin_a, "as_of": HUB_TIME},
                              {"site": "Quay B", "stock": sb, "bin": None, "as_of": HUB_TIME}],
                "hub_time": HUB_TIME}
            from PIL import Image

            with Image.open(files[0]) as im:
                self.signatures[pn] = colour_signature(im)

    # identify ----------------------------------------------------------------------------------
    def identify(self, captures: Sequence[Capture]) -> IdentifyOutcome:
        if not captures:
            raise UsageError("take or pick at least one photo first")
        q = np.mean([colour_signature(self.captures.cropped_image(c)) for c in captures], axis=0)
        sims = sorted(((similarity(q, sig), pn) for pn, sig in self.signatures.items()), reverse=True)
        top = sims[0][0]
        matches = []
        for rank, (sim, pn) in enumerate(sims[:5]):
            p = self.parts[pn]
            inv = p["inventory"][0]
            words = confidence_words(sim) if rank == 0 else ("possible" if sim >= 0.35 else "unlikely")
            matches.append(Match(pn, p["name"], sim, words, inv["stock"], inv["bin"], inv["site"], inv["as_of"],
                                 p["size_mm"], p["look_alike_group"], p["images"][0]["file"]))
        confident = top >= 0.6
        return IdentifyOutcome(matches, confident, confident and detect_look_alikes(matches, margin=0.1),
                               HUB_TIME, "preview-bundle", [c.capture_id for c in captures],
                               model_top=[m.part_number for m in matches],
                               model_status="match" if confident else "no_confident_match",
                               identification_id=_uuid.uuid4().hex)

    refine_by_size = staticmethod(refine_by_size)

    # catalogue ---------------------------------------------------------------------------------
    def part(self, part_number: str) -> dict[str, Any]:
        if part_number not in self.parts:
            raise InputError(f"part {part_number} is not in the catalogue on this device")
        return dict(self.parts[part_number])

    def search(self, text: str | None = None, category: str | None = None, in_stock: bool | None = None,
               limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        return self._matching(text, category, in_stock)[offset:offset + limit]

    def count_parts(self, text: str | None = None, category: str | None = None, in_stock: bool | None = None) -> int:
        return len(self._matching(text, category, in_stock))

    def _matching(self, text: str | None, category: str | None, in_stock: bool | None) -> list[dict[str, Any]]:
        out = []
        for p in self.parts.values():
            if text and text.lower() not in (p["part_number"] + " " + p["name"] + " " + p["description"]).lower():
                continue
            if category and p["category"] != category:
                continue
            if in_stock is not None and (sum(r["stock"] for r in p["inventory"]) > 0) != in_stock:
                continue
            out.append(p)
        return out

    def freshen(self, outcome: IdentifyOutcome) -> IdentifyOutcome:
        """The preview's catalogue never changes under a result."""
        return outcome

    def catalogue_texts(self) -> list[str]:
        return [t for p in self.parts.values() for t in (p["name"], p["category"]) if t]

    def categories(self) -> list[str]:
        return sorted({p["category"] for p in self.parts.values()})

    # outbox ------------------------------------------------------------------------------------
    def _queue(self, kind: str, payload: dict[str, Any], blob: str | None) -> str:
        uid = str(_uuid.uuid4())
        self.outbox.append({"uuid": uid, "kind": kind, "payload": payload, "blob_path": blob})
        return uid

    def send_feedback(self, part_number: str, verdict: str, captures: Sequence[Capture],
                      outcome: IdentifyOutcome | None = None) -> str:
        if verdict not in ("correct", "wrong"):
            raise UsageError(f"verdict must be 'correct' or 'wrong', got {verdict!r}")
        uid = self._queue("feedback", {"part_number": part_number, "verdict": verdict,
                                       "capture_ids": [c.capture_id for c in captures]},
                          captures[0].path if captures else None)
        if verdict == "correct" and outcome is not None and outcome.spot_check_pending:
            self.answer_spot_check(outcome, part_number)
        return uid

    def answer_spot_check(self, outcome: IdentifyOutcome, part_number: str | None, *, skipped: bool = False,
                          captures: Sequence[Capture] = ()) -> str:
        payload = spotcheck.answer_payload(outcome, part_number, skipped=skipped, site="Quay A")
        if part_number is not None:
            self.part(part_number)  # InputError for a part not in the catalogue
        uid = spotcheck.answer_uuid(outcome)
        if all(r["uuid"] != uid for r in self.outbox):
            self.outbox.append({"uuid": uid, "kind": "usage", "payload": payload, "blob_path": None})
            if part_number is not None and captures:
                self._queue("feedback", {"part_number": part_number, "verdict": "correct", "spot_check": True,
                                         "capture_ids": [c.capture_id for c in captures]}, captures[0].path)
        outcome.spot_check_done = True
        return uid

    def add_photos(self, part_number: str, captures: Sequence[Capture]) -> list[str]:
        if not captures:
            raise UsageError("no photo to add: take or pick one first")
        return [self._queue("photo", {"part_number": part_number, "capture_id": c.capture_id}, c.path)
                for c in captures]

    def record_unknown(self, captures: Sequence[Capture], note: str = "",
                       outcome: IdentifyOutcome | None = None) -> str:
        if not captures:
            raise UsageError("no photo of the unknown part: take or pick one first")
        return self._queue("unknown_part", {"note": note, "capture_ids": [c.capture_id for c in captures]},
                           captures[0].path)

    def pending_uploads(self) -> int:
        return len(self.outbox)

    # sync --------------------------------------------------------------------------------------
    def sync_status(self) -> SyncStatus:
        return SyncStatus("preview-bundle", 7, self.catalogue_version, self.last_sync, len(self.outbox),
                          self.enrolled_hub is not None, self.enrolled_hub, refused_uploads=self.refused,
                          free_bytes=self.free_bytes, storage_low=self.free_bytes < RESERVE_BYTES,
                          sync_running=self.sync_running)

    def sync_now(self) -> str:
        if self.enrolled_hub is None:
            raise SyncError("not enrolled: enrol with the hub first")
        n = len(self.outbox)
        self.outbox.clear()
        self.catalogue_version += 1
        self.last_sync = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return f"uploaded {n}, catalogue version {self.catalogue_version}"

    def enrol(self, payload: str) -> str:
        text = (payload or "").strip()
        if not text.startswith("partlens-enrol:"):
            raise UsageError("that is not a partlens enrolment code (it starts with 'partlens-enrol:')")
        self.enrolled_hub = text.split(":", 1)[1].split("?")[0] or "hub"
        return self.enrolled_hub

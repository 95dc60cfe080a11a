"""The service facade the tablet app calls (no Kivy here).

The app never touches the runtime directly: it calls :class:`DeviceServices` (the real one, over
``edge_app.runtime`` and ``sync.client``) or any object with the same methods (tests and the
screenshot script inject an in-memory one). Everything here is synchronous; the app runs slow
calls (``identify``, ``sync_now``) on a worker thread.

Also here: :class:`StateStore`, the small JSON the app restores after a pause or a restart. The photos
themselves are :class:`edge_app.captures.CaptureStore` (re-exported here).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid as _uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import spotcheck, storage
from .atomic import atomic_write_json
from .captures import (CAPTURE_SUFFIXES, LOW_SPACE_BYTES, Capture, CaptureStore,  # noqa: F401  (re-exported)
                       validate_crop)
from .errors import InputError, PartlensError, StorageError, SyncError, UsageError
from .storage import RESERVE_BYTES, mb

log = logging.getLogger(__name__)

#: (lower bound of the calibrated confidence, words shown to the engineer), best first.
CONFIDENCE_WORDS: tuple[tuple[float, str], ...] = (
    (0.85, "very likely"), (0.60, "likely"), (0.35, "possible"), (0.0, "unlikely"))
#: Look-alikes: candidates within this fraction of the best score that share a look-alike group.
LOOK_ALIKE_MARGIN = 0.25
#: outbox kinds the engineer queues (usage events upload with them but are not shown as waiting)
ENGINEER_KINDS = ("feedback", "photo", "unknown_part")
#: the sync screen's words for :func:`sync.client.connection_mode`
CONNECTION_WORDS = {"pinned": "encrypted, hub certificate pinned", "system-cas": "encrypted",
                    "plain-http": "NOT encrypted: ask the hub admin for `partlens hub tls-init`, then enrol again"}


def confidence_words(score: float) -> str:
    """A calibrated probability in words (the app never shows a raw number first)."""
    for bound, words in CONFIDENCE_WORDS:
        if score >= bound:
            return words
    return CONFIDENCE_WORDS[-1][1]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def local_time(iso: str | None, tz: _dt.tzinfo | None = None) -> str:
    """An ISO time with a zone (as the tablet records its own events, in UTC) as 'YYYY-MM-DD HH:MM' in the
    tablet's time zone (``tz`` for tests): the engineer reads "last sync" on the local clock. Times the hub
    wrote (stock "as of") are shown as the hub wrote them, labelled hub time, elsewhere."""
    if not iso:
        return "unknown"
    try:
        t = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if t.tzinfo is not None:
        t = t.astimezone(tz)
    return t.strftime("%Y-%m-%d %H:%M")


def stock_text(inventory: Sequence[Mapping[str, Any]], site: str | None = None) -> str:
    """A part's stock in a few words for a list row: at ``site`` (this tablet's) when given, with what the
    other sites hold; a stock the hub did not give (None) is "not known", never 0 or "out of stock"."""
    def count(rows: Sequence[Mapping[str, Any]]) -> int:
        return sum(int(r["stock"]) for r in rows if r.get("stock") is not None)

    if not inventory:
        return "stock unknown"
    if site is None:
        total = count(inventory)
        if total:
            return f"{total} in stock"
        return "stock not known" if any(r.get("stock") is None for r in inventory) else "out of stock"
    here = [r for r in inventory if r.get("site") == site]
    others = count([r for r in inventory if r.get("site") != site])
    elsewhere = f" ({others} at other sites)" if others else ""
    if not here:
        return f"not stocked here{elsewhere}"
    if all(r.get("stock") is None for r in here):
        return f"stock here not known{elsewhere}"
    n = count(here)
    return f"{n} in stock" if n else f"out of stock here{elsewhere}"


def stock_count_text(stock: Any) -> str:
    """One site's stock for Part detail: "3 in stock", "out of stock" or "stock not known" (None)."""
    if stock is None:
        return "stock not known"
    return f"{stock} in stock" if int(stock) else "out of stock"


#: what the app says when a sync (another process) holds the catalogue for writing: not a bug, and it passes
CATALOGUE_BUSY = "A sync is updating the parts catalogue right now; try again in a minute (nothing was lost)."


def error_message(exc: BaseException) -> str:
    """The status-line text for an error of work done off the UI thread: a domain error as it is, a catalogue a
    sync is writing as :data:`CATALOGUE_BUSY`, anything else an unexpected error (its trace logged)."""
    if isinstance(exc, PartlensError):
        return str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        log.warning("catalogue busy: %s", exc)
        return CATALOGUE_BUSY
    log.error("background task failed", exc_info=exc)
    return f"unexpected error: {exc}"


def _latest(*stamps: str | None) -> str | None:
    """The latest of some ISO timestamps (None and unparsable ones ignored; naive ones taken as local). One still
    in the future was written under a wrong clock: any stamp in the past beats it (a tablet corrected from 2040
    showed its 2040 "last sync" over the real one)."""
    best: tuple[bool, _dt.datetime, str] | None = None
    now = _dt.datetime.now().astimezone() + _CLOCK_SKEW
    for s in stamps:
        try:
            t = _dt.datetime.fromisoformat(s) if s else None
        except ValueError:
            continue
        if t is None:
            continue
        t = t.astimezone()  # aware, comparable
        key = (t <= now, t)
        if best is None or key > best[:2]:
            best = (t <= now, t, str(s))
    return None if best is None else best[2]


#: how far ahead of this clock a stamp may be before it counts as written under a wrong clock
_CLOCK_SKEW = _dt.timedelta(minutes=5)


# ---------------------------------------------------------------------------------------- results
@dataclass
class Match:
    """One candidate part as the results screen shows it."""

    part_number: str
    name: str
    score: float
    words: str
    stock: int | None = None
    bin: str | None = None
    site: str | None = None
    as_of: str | None = None
    size_mm: float | None = None
    look_alike_group: str | None = None
    thumbnail: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Match":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass
class IdentifyOutcome:
    """What ``identify`` returns to the app: ranked parts, and whether any is a confident match."""

    matches: list[Match]
    confident: bool
    look_alike: bool = False
    hub_time: str | None = None
    bundle_id: str | None = None
    capture_ids: list[str] = field(default_factory=list)
    measured_mm: float | None = None
    #: same-size look-alikes among the best candidates (a label or marking tells them apart)
    detail_look_alikes: list[str] = field(default_factory=list)
    #: picked at random for a spot check (decided before the model answered) / the engineer has answered it
    spot_check: bool = False
    spot_check_done: bool = False
    #: the model's own ranking and status, kept for the spot check (a measurement may re-rank ``matches``)
    model_top: list[str] = field(default_factory=list)
    model_status: str | None = None
    #: made at identification: joins the usage event and the spot-check answer, and makes answering idempotent
    identification_id: str | None = None
    #: the catalogue version the stock and bins were read at (a sync since: :meth:`DeviceServices.freshen`)
    catalogue_version: int | None = None
    #: parts a sync removed since the identification (left out of ``matches`` by ``freshen``)
    removed_since: list[str] = field(default_factory=list)

    @property
    def spot_check_pending(self) -> bool:
        return self.spot_check and not self.spot_check_done

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IdentifyOutcome":
        return cls(matches=[Match.from_dict(m) for m in d.get("matches", [])], confident=bool(d.get("confident")),
                   look_alike=bool(d.get("look_alike")), hub_time=d.get("hub_time"), bundle_id=d.get("bundle_id"),
                   capture_ids=list(d.get("capture_ids", [])), measured_mm=d.get("measured_mm"),
                   detail_look_alikes=list(d.get("detail_look_alikes", [])),
                   spot_check=bool(d.get("spot_check")), spot_check_done=bool(d.get("spot_check_done")),
                   model_top=list(d.get("model_top", [])), model_status=d.get("model_status"),
                   identification_id=d.get("identification_id"), catalogue_version=d.get("catalogue_version"),
                   removed_since=list(d.get("removed_since", [])))


def detect_look_alikes(matches: Sequence[Match], margin: float = LOOK_ALIKE_MARGIN) -> bool:
    """True when the best candidates share a look-alike group but differ in size (ask for a measurement)."""
    if len(matches) < 2 or not matches[0].look_alike_group:
        return False
    best = matches[0]
    close = [m for m in matches[1:4] if m.score >= best.score - margin and m.look_alike_group == best.look_alike_group]
    return any(m.size_mm is not None and best.size_mm is not None and m.size_mm != best.size_mm for m in close)


def refine_by_size(outcome: IdentifyOutcome, size_mm: float) -> IdentifyOutcome:
    """Re-rank look-alike candidates by how close their catalogue size is to the measured size."""
    if not (0 < size_mm < 10_000):
        raise UsageError(f"a measurement must be between 0 and 10000 mm, got {size_mm}")
    group = outcome.best.look_alike_group if outcome.best else None

    def key(item: tuple[int, Match]) -> tuple[int, float, int]:
        i, m = item
        if group and m.look_alike_group == group and m.size_mm is not None:
            return (0, abs(m.size_mm - size_mm), i)
        return (1, 0.0, i)

    ranked = [m for _, m in sorted(enumerate(outcome.matches), key=key)]
    # The measurement resolves the look-alike question only if the best now fits it (within 10 %).
    best = ranked[0] if ranked else None
    fits = bool(best and best.size_mm and abs(best.size_mm - size_mm) <= 0.1 * size_mm)
    return replace(outcome, matches=ranked, look_alike=not fits, confident=outcome.confident or fits,
                   measured_mm=size_mm)


@dataclass
class SyncStatus:
    bundle_id: str | None
    bundle_version: int | None
    catalogue_version: int | None
    last_sync: str | None
    pending_uploads: int
    enrolled: bool
    hub: str | None = None
    last_error: str | None = None
    #: uploads refused for good, by the hub or by the tablet (photo gone): kept on the tablet
    refused_uploads: int = 0
    #: the latest refusal's reason, in the hub's (or the tablet's) words
    refused_reason: str | None = None
    #: how the tablet talks to the hub: encrypted with the hub's certificate pinned, or not encrypted
    connection: str | None = None
    #: the last nightly background attempt, one line (``sync/background.py``), or None if none ran yet
    nightly: str | None = None
    #: free bytes on the tablet's storage (the data folder), None if unknown
    free_bytes: int | None = None
    #: below the space a sync keeps free for photos: syncs will refuse to download until space is freed
    storage_low: bool = False
    #: the space this device's syncs keep free for photos (the hub may set it at enrolment)
    keep_free_bytes: int = RESERVE_BYTES
    #: a sync (the nightly one or the app's) or an enrolment is running right now
    sync_running: bool = False


# ------------------------------------------------------------------------------------------ state
#: captures younger than this are never pruned (see :meth:`DeviceServices.prune_captures`)
RECENT_CAPTURE_MINUTES = 10


class StateStore:
    """The app's small resumable state (current captures, results, screen) as one JSON file."""

    VERSION = 1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """The saved state, or ``{}``; a damaged file is kept aside (``.bad``), never deleted."""
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("version") != self.VERSION:
                raise ValueError(f"unexpected state version {data.get('version') if isinstance(data, dict) else data!r}")
            return data
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            self.set_aside(str(exc))
            return {}

    def set_aside(self, reason: str) -> None:
        """Move a damaged state file to ``.bad`` (kept for a look, never deleted); the app starts fresh."""
        bad = self.path.with_suffix(self.path.suffix + ".bad")
        log.warning("%s: unreadable app state (%s); moved to %s and starting fresh", self.path, reason, bad)
        try:
            os.replace(self.path, bad)
        except OSError as exc:
            log.warning("could not move %s aside (%s)", self.path, exc)

    def save(self, state: Mapping[str, Any]) -> None:
        atomic_write_json(self.path, {**state, "version": self.VERSION})


# --------------------------------------------------------------------------------- real services
def seed_from_starter(data_dir: Path, starter: Path) -> bool:
    """First start on a device: copy the bundled ``starter_bundle/`` (catalogue, keyring, bundle) in.

    Only when ``data_dir`` has no catalogue yet; returns True if it copied. Copied whole into a staging folder
    first, then moved into place with ``catalogue.db`` last: a start killed while seeding (the copy takes a
    while on a tablet) leaves no catalogue, so the next start seeds again (before, it found a catalogue, perhaps
    half copied, and skipped the keyring or the bundle for good).
    """
    import shutil

    from .atomic import fsync_dir

    if (data_dir / "catalogue.db").exists() or not (starter / "catalogue.db").is_file():
        return False
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob(".seeding-*"):  # left by a start that was killed while copying
        shutil.rmtree(old, ignore_errors=True)
    staging = data_dir / f".seeding-{os.getpid()}"
    shutil.copytree(starter, staging)
    for item in sorted(staging.iterdir(), key=lambda p: p.name == "catalogue.db"):
        dst = data_dir / item.name
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)  # a piece an interrupted seeding had moved already
        os.replace(item, dst)
    fsync_dir(data_dir)
    staging.rmdir()
    log.info("seeded %s from the starter bundle %s", data_dir, starter)
    return True


def set_aside_database(path: Path) -> Path:
    """Move a damaged SQLite file (and its -wal/-shm) to ``<name>.damaged-<UTC time>``: kept, never deleted."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, kept.with_name(kept.name + suffix))
    log.warning("%s is damaged; kept as %s", path, kept)
    return kept


def open_device_services(data_dir: str | os.PathLike[str], *, starter: Path | None = None,
                         **kwargs: Any) -> "DeviceServices":
    """:class:`DeviceServices` for the app's start. A damaged ``catalogue.db`` or ``outbox.db`` (not a database,
    corrupt) must not stop every start: it is set aside (kept) and a new one begins. The catalogue is the hub's
    data: a tablet never enrolled is seeded again from ``starter``; an enrolled one gets it back at its next
    sync. The outbox held the engineer's unsent records: the note says so. ``start_notes`` tells the engineer."""
    from .errors import DamagedDatabaseError

    data_dir = Path(data_dir)
    notes: list[str] = []
    for _ in range(3):  # the catalogue, then the outbox
        try:
            services = DeviceServices(data_dir, **kwargs)
        except DamagedDatabaseError as exc:
            kept = set_aside_database(exc.path)
            if exc.path.name == "catalogue.db":
                reseeded = (starter is not None and not (data_dir / "device.json").exists()
                            and seed_from_starter(data_dir, starter))
                notes.append(f"The parts catalogue on this tablet was damaged (kept as {kept.name}); "
                             + ("it was restored from the copy the app came with." if reseeded else
                                "the next sync with the hub restores it."))
            else:
                notes.append(f"The upload queue on this tablet was damaged (kept as {kept.name}); what it held "
                             "did not reach the hub: tell the hub admin. New feedback and photos queue as usual.")
            continue
        services.start_notes = notes
        return services
    return DeviceServices(data_dir, **kwargs)  # raises what is still wrong


def read_active_pointer(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sync client's active-bundle pointer (``active.json``: bundle_id, version), if any."""
    from .bundle import check_file_name
    from .errors import IntegrityError

    path = Path(data_dir) / "active.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InputError(f"{path}: unreadable bundle pointer ({exc})") from None
    try:  # a bundle id is one folder name under bundles/ ("../../elsewhere" loaded a bundle outside it)
        if not isinstance(doc, dict):
            raise IntegrityError(f"a JSON {type(doc).__name__}, not an object")
        check_file_name(doc.get("bundle_id"), "bundle_id")
    except IntegrityError as exc:
        raise InputError(f"{path}: unreadable bundle pointer ({exc})") from None
    return doc


def active_bundle_dir(data_dir: str | os.PathLike[str], catalogue: Any) -> Path:
    """The bundle the device runs: the catalogue's ``bundle_id`` (whose vectors it holds), else the sync client's
    pointer.

    Never "the newest folder": a newer bundle that failed its smoke test sits beside the
    active one and must not be used.
    """
    data_dir = Path(data_dir)
    # the catalogue database is the commit point: its bundle_id names the model its vectors came from (set only
    # once that bundle is installed and smoke-tested); the pointer can lag it by a moment, or after a kill
    from .bundle import check_file_name
    from .errors import IntegrityError

    held = catalogue.get_meta("bundle_id")
    try:
        held = check_file_name(held, "bundle_id") if held else None
    except IntegrityError:  # never a path out of bundles/
        log.warning("the catalogue names bundle %r, not a folder name: ignored", held)
        held = None
    if held and (data_dir / "bundles" / held / "manifest.json").is_file():
        return data_dir / "bundles" / str(held)
    bundle_id = (read_active_pointer(data_dir) or {}).get("bundle_id") or held
    path = data_dir / "bundles" / str(bundle_id) if bundle_id else None
    if path is None or not path.is_dir():
        raise InputError(f"{data_dir}: no model bundle installed{f' ({bundle_id} is missing)' if bundle_id else ''}"
                         " yet: enrol this tablet and sync with the hub (on a desktop: `--bundle DIR --keyring "
                         "KEYRING.pub.json`)")
    return path


def _readable_image(path: str) -> bool:
    """Whether an image file's header and structure check out (Pillow's verify; no full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception as exc:  # Pillow raises many kinds on a damaged file
        log.warning("%s: damaged image file (%s)", path, exc)
        return False


def _repeat_uuid(kind: str, part_number: str, verdict: str, captures: Sequence[Capture],
                 outcome: IdentifyOutcome | None) -> str:
    """The outbox UUID of an engineer's record, derived from what it says: the same answer about the same
    photos (as cropped) and identification is the same record, so a double tap on "This is the part", "Not
    this one" or "Add my photo" queues it once (and copies the photo once). A new crop or another
    identification is another record."""
    key = json.dumps([kind, part_number, verdict, [[c.capture_id, c.crop] for c in captures],
                      outcome.identification_id if outcome is not None else None], sort_keys=True)
    return str(_uuid.uuid5(_uuid.NAMESPACE_URL, f"partlens:{key}"))


class DeviceServices:
    """The real facade: catalogue, outbox, identifier and sync client under one data folder.

    Layout of ``data_dir``: ``catalogue.db``, ``outbox.db``, ``captures/``, ``app_state.json``, and
    whatever the runtime and sync client keep there (bundles, keyring, enrolment).
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, site: str | None = None,
                 backend: str | None = None, bundle_dir: str | os.PathLike[str] | None = None,
                 keyring: str | os.PathLike[str] | None = None, spot_rng: random.Random | None = None) -> None:
        from .runtime.catalogue import CatalogueDB
        from .runtime.outbox import Outbox

        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalogue = CatalogueDB(self.data_dir / "catalogue.db")
        try:
            self.outbox = Outbox(self.data_dir / "outbox.db")
        except BaseException:
            self.catalogue.close()
            raise
        #: what the app tells the engineer at start (e.g. a damaged database set aside; see open_device_services)
        self.start_notes: list[str] = []
        self.captures = CaptureStore(self.data_dir / "captures")
        self.state = StateStore(self.data_dir / "app_state.json")
        self._site = site  # given (the demo, tests), else the catalogue's, read on each use (see `site`)
        self.backend = backend
        self._bundle_dir = Path(bundle_dir) if bundle_dir else None
        self._keyring = Path(keyring) if keyring else self.data_dir / "keyring.json"
        self._identifier: Any = None
        #: identifiers in use by an identification (id -> count) and the replaced ones to close once unused
        self._leases: dict[int, int] = {}
        self._retired: list[Any] = []
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        #: draws the spot checks (an OS-seeded generator; tests and the demo pass a seeded one)
        self._spot_rng = spot_rng or random.SystemRandom()

    @property
    def site(self) -> str | None:
        """This tablet's site: the one given, else the catalogue's as the last sync set it. Read once at start,
        it stayed None after an enrolment in the app and the old site after a move, until a restart: no stock
        shown, the "in stock" filter empty, records tagged with no or the old site (an audit, 23rd session)."""
        return self._site or self.catalogue.get_meta("site")

    # identify ----------------------------------------------------------------------------------
    def bundle_paths(self) -> tuple[Path, Path]:
        """(bundle folder, keyring file) of the active bundle (see :func:`active_bundle_dir`)."""
        if self._bundle_dir is not None:
            return self._bundle_dir, self._keyring
        return active_bundle_dir(self.data_dir, self.catalogue), self._keyring

    def _get_identifier(self, *, lease: bool = False) -> Any:
        """The identifier of the active bundle (opened on first use); ``lease``: counted as in use, in the same
        locked step (a reload between getting and leasing it closed it under the identification: a review)."""
        with self._lock:
            if self._identifier is not None and self._bundle_dir is None:
                # the nightly sync (another process) may have installed a new bundle since: its vectors replaced
                # this model's in the catalogue, so this model would find nothing ("no confident match" for all)
                held = self.catalogue.get_meta("bundle_id")
                loaded = getattr(self._identifier, "bundle_id", None)
                if held and loaded and held != loaded:
                    log.warning("the catalogue now holds bundle %s (a sync installed it); loading it instead of %s",
                                held, loaded)
                    self._retire_locked(self._identifier)
                    self._identifier = None
            if self._identifier is None:
                from .runtime.identify import BundleChanged, Identifier

                for attempt in range(3):
                    bundle_dir, keyring = self.bundle_paths()
                    try:
                        self._identifier = Identifier.open(bundle_dir, self.catalogue.path, keyring,
                                                           backend=self.backend, site=self.site)
                        break
                    except BundleChanged as exc:  # a sync switched the bundle while this one loaded
                        if attempt == 2 or self._bundle_dir is not None:
                            raise
                        log.warning("%s; opening it", exc)
            if lease:
                self._leases[id(self._identifier)] = self._leases.get(id(self._identifier), 0) + 1
            return self._identifier

    def reload(self) -> None:
        """Forget the loaded model/index (after a sync installed a new bundle or catalogue)."""
        with self._lock:
            ident, self._identifier = self._identifier, None
            self._retire_locked(ident)

    @contextlib.contextmanager
    def _leased_identifier(self) -> Iterator[Any]:
        """The identifier, held for one identification: a reload meanwhile closes it only after that ends (it
        closed the catalogue connection under a running identification; the Java model must not be freed
        under one either)."""
        ident = self._get_identifier(lease=True)
        try:
            yield ident
        finally:
            self._release_identifier(ident)

    def _release_identifier(self, ident: Any) -> None:
        """End one lease of ``ident``; the last lease of a replaced identifier closes it."""
        with self._lock:
            left = self._leases[id(ident)] - 1
            if left:
                self._leases[id(ident)] = left
            else:
                del self._leases[id(ident)]
                if any(r is ident for r in self._retired):
                    self._retired = [r for r in self._retired if r is not ident]
                    self._close_identifier(ident)

    def _retire_locked(self, ident: Any) -> None:
        """Close a replaced identifier now, or when its last identification ends (``_lock`` held)."""
        if ident is None:
            return
        if self._leases.get(id(ident)):
            self._retired.append(ident)
        else:
            self._close_identifier(ident)

    def _close_identifier(self, ident: Any) -> None:
        """Free the model and the identifier's own catalogue connection; a failure is logged, not raised (the
        reload or identification that triggered it has its own answer)."""
        try:
            if hasattr(ident, "close"):
                ident.close(db=getattr(ident, "db", None) is not self.catalogue)
            elif hasattr(ident, "db") and ident.db is not self.catalogue:
                ident.db.close()
        except Exception:  # noqa: BLE001 - freeing must not turn a good answer into an error
            log.warning("closing the replaced model failed", exc_info=True)

    def identify(self, captures: Sequence[Capture]) -> IdentifyOutcome:
        """Identify one part from its views (each cut to its crop)."""
        if not captures:
            raise UsageError("take or pick at least one photo first")
        version = self.catalogue.catalogue_version  # before: a sync landing meanwhile makes freshen re-read
        with self._leased_identifier() as ident:
            draft = getattr(getattr(ident, "spec", None), "draft_size", None)
            images = [self.captures.cropped_image(c, draft_size=draft) for c in captures]
            # drawn before the model answers, one draw per identification: the sample cannot follow the outcome
            rate = spotcheck.device_rate(self.data_dir)
            spot = rate > 0 and self._spot_rng.random() < rate
            t0 = time.perf_counter()
            result = ident.identify(images, site=self.site)
            ms = (time.perf_counter() - t0) * 1000
        outcome = self.outcome_from_result(result, [c.capture_id for c in captures])
        outcome.spot_check = spot
        outcome.identification_id = _uuid.uuid4().hex
        outcome.catalogue_version = version
        if not self._record_usage(result, outcome, ms):
            outcome.spot_check = False  # the hub would see an answer to a question it never knew was asked
        return outcome

    def _record_usage(self, result: Any, outcome: IdentifyOutcome, ms: float) -> bool:
        """Queue a small "identify" usage event (no photo) for the hub's field statistics; False if it could not.

        Telemetry must never cost the engineer the answer on screen: if the outbox cannot take the
        event (a full or broken disk), the identification still returns and the reason is logged."""
        payload = {"event": "identify", "bundle_id": outcome.bundle_id, "status": result.status,
                   "confidence": None if result.confidence is None else round(float(result.confidence), 4),
                   "top": [m.part_number for m in outcome.matches[:5]], "views": int(result.views),
                   "ms": round(ms, 1), "asked_to_measure": outcome.look_alike,
                   "asked_for_closeup": bool(outcome.detail_look_alikes), "capture_ids": outcome.capture_ids,
                   "site": self.site, "spot_check": outcome.spot_check,
                   "identification_id": outcome.identification_id}
        try:
            self.outbox.add("usage", payload)
        except (PartlensError, sqlite3.Error, OSError) as exc:
            log.warning("identification not recorded for the hub's field statistics: %s", exc)
            return False
        return True

    def outcome_from_result(self, result: Any, capture_ids: list[str]) -> IdentifyOutcome:
        """Map the runtime's ``IdentifyResult`` to what the results screen shows."""
        matches: list[Match] = []
        top_sim = result.matches[0].similarity if result.matches else 0.0
        strength = [w for _, w in CONFIDENCE_WORDS]  # strongest first
        for m in result.matches:
            if m.confidence is not None:
                words = confidence_words(m.confidence)
                # the words follow the answer: below the bundle's fitted threshold (0.78-0.90 for the bundles
                # measured) a "No confident match" banner sat over a top card saying "Match: likely" (an audit)
                if result.status != "match" and strength.index(words) < strength.index("possible"):
                    words = "possible"
                elif result.status == "match" and strength.index(words) > strength.index("likely"):
                    words = "likely"
                score = float(m.confidence)
            else:  # the runtime calibrates the top answer only; the others are described relative to it, and
                # never in stronger words than it ("unlikely" best match, "possible" runner-up read backwards)
                words = "possible" if m.similarity >= top_sim - LOOK_ALIKE_MARGIN / 2 else "unlikely"
                if matches:
                    words = strength[max(strength.index(words), strength.index(matches[0].words))]
                score = float(m.similarity)
            matches.append(Match(m.part_number, m.name or m.part_number, score, words, m.stock, m.bin, m.site,
                                 m.stock_as_of, m.size_mm, m.look_alike_group,
                                 self._thumbnail(m.part_number, m.best_image_id)))
        detail = list(result.look_alike["part_numbers"]) if result.needs_detail_photo else []
        return IdentifyOutcome(matches, result.status == "match", bool(result.needs_scale_photo),
                               result.hub_time, result.bundle_id, capture_ids, detail_look_alikes=detail,
                               model_top=[m.part_number for m in matches[:spotcheck.TOP_K]],
                               model_status=str(result.status))

    def freshen(self, outcome: IdentifyOutcome) -> IdentifyOutcome:
        """``outcome`` with its parts' names, stock and bins as the catalogue has them NOW, if a sync changed the
        catalogue since the identification (the results screen showed the old stock and bins, and parts the sync
        had removed, an audit); removed parts leave ``matches`` and are named in ``removed_since``. The ranking is
        the model's, from then: identifying again gives one over the current catalogue."""
        version = self.catalogue.catalogue_version
        if outcome.catalogue_version is None or outcome.catalogue_version == version:
            return outcome
        rows = self.catalogue.parts_by_number([m.part_number for m in outcome.matches], site=self.site)
        kept, gone = [], list(outcome.removed_since)
        for m in outcome.matches:
            row = rows.get(m.part_number)
            if row is None:
                gone.append(m.part_number)
                continue
            inv = next(iter(row.get("inventory") or []), None)
            kept.append(replace(m, name=row.get("name") or m.part_number, size_mm=row.get("size_mm"),
                                look_alike_group=row.get("look_alike_group"),
                                stock=inv.get("stock") if inv else None, bin=inv.get("bin") if inv else None,
                                as_of=inv.get("as_of") if inv else None))
        return replace(outcome, matches=kept, removed_since=gone, catalogue_version=version,
                       hub_time=self.catalogue.get_meta("hub_time"))

    def _thumbnail(self, part_number: str, image_id: str | None) -> str | None:
        images = (self.catalogue.part(part_number) or {}).get("images", [])
        images = sorted(images, key=lambda im: im.get("image_id") != image_id)
        return self._image_path(images)

    def _image_path(self, images: Sequence[Mapping[str, Any]]) -> str | None:
        for im in images:
            p = Path(str(im.get("path") or ""))
            if not p.is_absolute():
                p = self.data_dir / p
            if p.is_file():
                return str(p)
        return None

    refine_by_size = staticmethod(refine_by_size)

    # catalogue ---------------------------------------------------------------------------------
    def part(self, part_number: str) -> dict[str, Any]:
        row = self.catalogue.part(part_number)
        if row is None:
            raise InputError(f"part {part_number} is not in the catalogue on this device")
        damaged = 0
        for im in row.get("images", []):
            im["file"] = self._image_path([im])
            if im["file"] and not _readable_image(im["file"]):
                im["file"], damaged = None, damaged + 1
        row["damaged_images"] = damaged  # shown as a count, not as blank squares
        row["hub_time"] = self.catalogue.get_meta("hub_time")
        return row

    def search(self, text: str | None = None, category: str | None = None, in_stock: bool | None = None,
               limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """A page of the parts matching the filters (``in_stock``: at this tablet's site), each with its stock
        rows at EVERY site (:func:`stock_text` says "none here, 5 at other sites")."""
        rows = self.catalogue.search_parts(text=text or None, category=category or None, in_stock=in_stock,
                                           site=self.site, limit=limit, offset=offset)
        inv = self.catalogue.parts_by_number([r["part_number"] for r in rows])
        for r in rows:
            r["inventory"] = inv.get(r["part_number"], {}).get("inventory", [])
        return rows

    def count_parts(self, text: str | None = None, category: str | None = None, in_stock: bool | None = None) -> int:
        """How many parts :meth:`search` pages through."""
        return self.catalogue.count_parts(text=text or None, category=category or None, in_stock=in_stock,
                                          site=self.site)

    def categories(self) -> list[str]:
        return self.catalogue.categories()

    def catalogue_texts(self) -> list[str]:
        """The catalogue's names, categories and bins (the app picks a font that can draw them)."""
        return self.catalogue.texts()

    # outbox ------------------------------------------------------------------------------------
    def _need_part(self, part_number: str) -> None:
        """Records about a part the hub cannot match to its catalogue are refused here, while the engineer is here."""
        if self.catalogue.part(part_number) is None:
            raise InputError(f"part {part_number} is not in the catalogue on this device")

    def _blob(self, captures: Sequence[Capture], *, required: bool = True) -> str | None:
        """The upload copy of the first view. Not ``required`` (an answer or a verdict, which count without
        their photo): a photo deleted behind the app's back does not stop the record, which goes without it."""
        if not captures:
            return None
        if not required and not Path(captures[0].path).is_file():
            log.warning("the photo of this record is no longer on the tablet; it goes without it")
            return None
        return str(self.captures.export_cropped(captures[0]))

    def send_feedback(self, part_number: str, verdict: str, captures: Sequence[Capture],
                      outcome: IdentifyOutcome | None = None) -> str:
        """Queue "this is the part" (``verdict='correct'``) or "not this one" (``'wrong'``). On a spot-checked
        identification "this is the part" answers the spot check too, in the same transaction."""
        if verdict not in ("correct", "wrong"):
            raise UsageError(f"verdict must be 'correct' or 'wrong', got {verdict!r}")
        self._need_part(part_number)
        if verdict == "correct" and outcome is not None and outcome.spot_check_pending:
            self.answer_spot_check(outcome, part_number, captures=captures, confirmed=True)
            return spotcheck.answer_uuid(outcome, "feedback")
        uid = _repeat_uuid("feedback", part_number, verdict, captures, outcome)
        if self.outbox.has(uid):  # the same answer again (a double tap): one record, one photo copy
            return uid
        return self.outbox.add("feedback", self._feedback(part_number, verdict, captures, outcome),
                               self._blob(captures, required=False), uuid=uid)

    def _feedback(self, part_number: str, verdict: str, captures: Sequence[Capture],
                  outcome: IdentifyOutcome | None) -> dict[str, Any]:
        out = {"part_number": part_number, "verdict": verdict, "capture_ids": [c.capture_id for c in captures],
               "candidates": [m.part_number for m in outcome.matches] if outcome else [],
               "bundle_id": outcome.bundle_id if outcome else self.catalogue.get_meta("bundle_id"),
               "site": self.site}
        if outcome is not None and outcome.identification_id:  # the hub joins the answer to ITS identification
            out["identification_id"] = outcome.identification_id
        return out

    def answer_spot_check(self, outcome: IdentifyOutcome, part_number: str | None, *, skipped: bool = False,
                          captures: Sequence[Capture] = (), confirmed: bool = False) -> str:
        """Queue the engineer's answer to a spot check (see :mod:`edge_app.spotcheck`): the part photographed
        (any catalogue part: a candidate or one found by browsing), ``None`` for "none of these", or
        ``skipped``. With ``captures``, a named part also queues "this is the part" with the photo (one
        transaction with the answer): a labelled field photo drawn at random, for the hub's review and
        ``export-calibration``. Marks the outcome answered (the caller saves it); returns the answer's UUID.
        Answering again is harmless: both records have UUIDs derived from the identification, and the first
        answer stands. ``confirmed``: the answer came as "this is the part", whose feedback is queued also
        without a photo."""
        payload = spotcheck.answer_payload(outcome, part_number, skipped=skipped, site=self.site)
        if part_number is not None:
            self._need_part(part_number)
        uid = spotcheck.answer_uuid(outcome)
        records: list[tuple[str, Mapping[str, Any], Any, str | None]] = [("usage", payload, None, uid)]
        if part_number is not None and (captures or confirmed):
            fb = dict(self._feedback(part_number, "correct", captures, outcome), spot_check=True)
            records.append(("feedback", fb, self._blob(captures, required=False),
                            spotcheck.answer_uuid(outcome, "feedback")))
        self.outbox.add_many(records, skip_existing=True)
        outcome.spot_check_done = True
        return uid

    def add_photos(self, part_number: str, captures: Sequence[Capture]) -> list[str]:
        """Queue each capture as a new reference photo of ``part_number`` (all in one transaction)."""
        if not captures:
            raise UsageError("no photo to add: take or pick one first")
        self._need_part(part_number)
        uids = [_repeat_uuid("photo", part_number, "", [c], None) for c in captures]
        new = [(c, u) for c, u in zip(captures, uids) if not self.outbox.has(u)]  # a double tap adds nothing
        self.outbox.add_many([("photo", {"part_number": part_number, "capture_id": c.capture_id,
                                         "site": self.site}, self.captures.export_cropped(c), u) for c, u in new])
        return uids

    def record_unknown(self, captures: Sequence[Capture], note: str = "",
                       outcome: IdentifyOutcome | None = None) -> str:
        """Queue an unknown part for the hub (first view as the blob, the others as linked photos), in one
        transaction: the hub never gets the report without its other views."""
        if not captures:
            raise UsageError("no photo of the unknown part: take or pick one first")
        uid = _repeat_uuid("unknown_part", "", "", captures, outcome)  # these photos reported once (double tap)
        before = self.outbox.payload(uid)
        if before is not None:  # reported already: a note typed since goes with it while it is still on the tablet
            if note and note != before.get("note") and not self.outbox.update_pending(uid, {"note": note}):
                raise UsageError("this unknown part was already sent to the hub without this note; the note was not "
                                 "added (report it again with a new photo to send a note)")
            return uid
        records: list[tuple[str, Mapping[str, Any], Any, str | None]] = [("unknown_part", {
            "note": note, "capture_ids": [c.capture_id for c in captures], "site": self.site,
            "candidates": [m.part_number for m in outcome.matches] if outcome else []}, self._blob(captures), uid)]
        records += [("photo", {"unknown_part": uid, "capture_id": c.capture_id, "site": self.site},
                     self.captures.export_cropped(c), _repeat_uuid("photo", uid, "", [c], None)) for c in captures[1:]]
        self.outbox.add_many(records)
        return uid

    def pending_uploads(self) -> int:
        """What the engineer queued and the hub has not received yet (feedback, photos, unknown parts);
        the automatic usage events upload with them but are not counted here."""
        return self.outbox.count(kinds=ENGINEER_KINDS)

    def refused_uploads(self) -> int:
        """What the engineer queued that was refused for good (by the hub, or by the tablet when its photo
        is gone): kept on the tablet, with the reason."""
        return len(self._refusals())

    def _refusals(self) -> list[dict[str, Any]]:
        """The engineer's refused records, in refusal order (a stable sort: on a tie, the later record last)."""
        rows = [r for r in self.outbox.refused() if r["kind"] in ENGINEER_KINDS]
        return sorted(rows, key=lambda r: r["refused_at"] or "")

    def prune_captures(self, max_age_days: float = 14.0, now: _dt.datetime | None = None) -> dict[str, int]:
        """Delete old photos the device no longer needs; the app calls it at start.

        A capture is kept while it is younger than ``max_age_days``, on screen (saved app state), or its
        cropped copy still waits in the outbox (an upload must never lose its photo). Uploaded copies of
        old captures go too.
        """
        now = now or _dt.datetime.now(_dt.timezone.utc)
        # never younger than a few minutes: the app may have just stored a photo and not yet saved its state (the
        # nightly sync prunes from another process with max_age_days=0 when storage is low)
        cutoff = min(now - _dt.timedelta(days=max_age_days), now - _dt.timedelta(minutes=RECENT_CAPTURE_MINUTES))
        in_state = {str(d.get("capture_id")) for d in self.state.load().get("captures", []) if isinstance(d, Mapping)}
        # photos of records still to upload, and of records the hub refused (kept: nothing is lost)
        pending = {Path(r["blob_path"]).name.split(".")[0] for r in [*self.outbox.pending(), *self.outbox.refused()]
                   if r["blob_path"]}
        removed = kept = 0
        for side in sorted(self.captures.root.glob("*.json")):
            cid = side.stem
            try:
                created = _dt.datetime.fromisoformat(json.loads(side.read_text())["created_at"])
            except (OSError, ValueError, KeyError, TypeError):
                created = _dt.datetime.fromtimestamp(side.stat().st_mtime, _dt.timezone.utc)
            if created.tzinfo is None:
                created = created.replace(tzinfo=_dt.timezone.utc)
            if created > now + _CLOCK_SKEW:  # taken under a clock set ahead (since put right): it would never age
                created = self._redate_capture(side, now)
                if max_age_days <= 0:  # storage is low: its age is unknown, not "just taken"
                    created = cutoff - _dt.timedelta(seconds=1)
            if created >= cutoff or cid in in_state:
                kept += 1
                continue
            removed += self.captures.remove(cid, keep_crop=cid in pending)
        removed += self.captures.prune_orphans()
        # cropped copies kept for an upload whose capture was pruned earlier: they go once uploaded
        for crop in self.captures.root.glob("*.crop.jpg"):
            cid = crop.name.split(".")[0]
            if cid not in pending and not (self.captures.root / f"{cid}.json").exists():
                crop.unlink(missing_ok=True)
                removed += 1
        log.info("captures: removed %d files of captures older than %g days, kept %d captures",
                 removed, max_age_days, kept)
        return {"removed_files": removed, "kept": kept}

    def _redate_capture(self, side: Path, now: _dt.datetime) -> _dt.datetime:
        """Date a capture stamped in the future (a clock set ahead when it was taken) ``now``, the first time this
        clock sees it, so it ages from here: a tablet that ran in 2040 kept those photos even when storage ran
        out (an audit, 23rd session)."""
        from .atomic import atomic_write_json

        try:
            doc = json.loads(side.read_text())
            log.warning("capture %s is dated %s, ahead of this clock: dated %s from now on", side.stem,
                        doc.get("created_at"), now.isoformat(timespec="seconds"))
            atomic_write_json(side, {**doc, "created_at": now.isoformat(timespec="seconds")}, overwrite=True)
        except (OSError, ValueError, TypeError) as exc:  # unreadable or read-only: it ages from its file time
            log.warning("capture %s could not be re-dated (%s)", side.stem, exc)
        return now

    def free_space_if_low(self) -> dict[str, int] | None:
        """When free space is below what a sync keeps for photos, prune every capture not on screen and not
        waiting to upload (not only those older than 14 days); None when space is not low."""
        free = storage.free_bytes(self.data_dir)
        if free >= self._reserve():
            self._reopen_read_only()
            return None
        log.warning("storage low (%s free): pruning captures already uploaded or not kept", mb(free))
        pruned = self.prune_captures(max_age_days=0)
        self._reopen_read_only()
        return pruned

    def _reserve(self, enrolment: Mapping[str, Any] | None = None) -> int:
        """Bytes this device's syncs leave free for photos (the hub may set it at enrolment); ``enrolment``:
        ``device.json`` when the caller has read it already."""
        from sync.client import reserve_of

        try:
            return reserve_of(enrolment if enrolment is not None
                              else json.loads((self.data_dir / "device.json").read_text()))
        except (OSError, ValueError, TypeError):
            return RESERVE_BYTES

    def _reopen_read_only(self) -> None:
        """Databases opened read-only on a full disk (``storage.connect_wal``) are reopened for writing once
        there is room again."""
        if not (self.catalogue.read_only or self.outbox.read_only):
            return
        if storage.free_bytes(self.data_dir) < storage.OPEN_FULL_BYTES:
            return
        from .runtime.catalogue import CatalogueDB
        from .runtime.outbox import Outbox

        self.reload()
        with self._lock:
            old_cat, old_out = self.catalogue, self.outbox
            self.catalogue = CatalogueDB(old_cat.path)
            self.outbox = Outbox(old_out.path)
        old_cat.close()
        old_out.close()
        log.info("storage: space freed, catalogue and outbox writable again (read-only now: %s)",
                 self.catalogue.read_only or self.outbox.read_only)

    # sync --------------------------------------------------------------------------------------
    def _active(self) -> dict[str, Any] | None:
        return read_active_pointer(self.data_dir)

    def _client(self) -> Any:
        from sync.client import SyncClient  # the device sync client (enrolment must exist)

        return SyncClient(self.data_dir)

    def sync_status(self) -> SyncStatus:
        from sync.client import connection_mode

        device_file = self.data_dir / "device.json"
        hub = connection = None
        enrolment: dict[str, Any] = {}
        if device_file.is_file():  # status only: a partial file still shows what it has; a non-object cannot
            try:
                enrolment = json.loads(device_file.read_text())
            except ValueError as exc:
                raise InputError(f"{device_file}: unreadable enrolment ({exc}); enrol this device again") from None
            if not isinstance(enrolment, dict):  # was an AttributeError below
                raise InputError(f"{device_file}: damaged enrolment; enrol this device again")
            hub = enrolment.get("hub")
            connection = CONNECTION_WORDS[connection_mode(enrolment)]
        active = self._active() or {}
        last = self.data_dir / "last_sync.json"
        last_sync = None
        if last.is_file():
            try:
                last_sync = json.loads(last.read_text()).get("at")
            except (OSError, ValueError, AttributeError) as exc:  # damaged: "unknown", never a crash at start
                log.warning("%s is unreadable (%s); the last sync time is unknown until the next sync", last, exc)
            if last_sync is not None and not isinstance(last_sync, str):
                last_sync = None
        from sync.background import read_arm_failure, read_status
        from sync.lock import sync_running

        bg = read_status(self.data_dir)  # the nightly service's last attempt
        nightly = None
        if bg:
            last_sync = _latest(last_sync, bg.get("last_success"))
            nightly = (f"{bg.get('outcome')} at {local_time(bg.get('at'))} ({bg.get('reason')}); next attempt "
                       f"{local_time(bg.get('next_at'))}, window {bg.get('window')}")
        arm = read_arm_failure(self.data_dir)
        if arm:  # the app could not arm the alarm: say so before anything else
            nightly = (f"OFF: could not schedule nightly sync at {local_time(arm.get('at'))} ({arm.get('reason')}); "
                       f"sync from this screen" + (f". Last attempt: {nightly}" if nightly else ""))
        version = self.catalogue.catalogue_version
        free, reserve = storage.free_bytes(self.data_dir), self._reserve(enrolment)
        refusals = self._refusals()
        return SyncStatus(bundle_id=active.get("bundle_id") or self.catalogue.get_meta("bundle_id"),
                          bundle_version=active.get("version"), catalogue_version=version or None,
                          last_sync=last_sync, pending_uploads=self.pending_uploads(),
                          refused_uploads=len(refusals),
                          refused_reason=str(refusals[-1]["refused_reason"]) if refusals else None,
                          enrolled=hub is not None,
                          hub=hub, last_error=self._sync_error(last_sync),
                          nightly=nightly, connection=connection,
                          free_bytes=free, storage_low=free < reserve, keep_free_bytes=reserve,
                          sync_running=sync_running(self.data_dir))

    def _sync_error(self, last_sync: str | None) -> str | None:
        """Why the last sync failed, as recorded on the device (whichever process ran it: it survives a restart
        and goes when any sync succeeds), else this app's own error if no sync succeeded after it (e.g. the
        record could not be written on a full disk)."""
        from sync.client import read_failure

        doc = read_failure(self.data_dir)
        if doc and last_sync and last_sync != doc["at"] and _latest(last_sync, doc["at"]) == last_sync:
            doc = None  # a sync succeeded after it (a record its success could not delete)
        if doc:
            return f"{doc['error']} (at {local_time(doc['at'])})"
        if self._last_error and not (last_sync and _latest(last_sync, self._last_error_at) == last_sync):
            return self._last_error
        return None

    def sync_now(self) -> str:
        """One full sync (bundle, catalogue package, uploads); returns a one-line summary."""
        try:
            result = self._client().sync()
        except PartlensError as exc:  # a SyncError, or no keyring / a damaged enrolment before the sync began
            from sync.client import read_failure, record_failure
            from sync.lock import SyncBusyError

            if not isinstance(exc, SyncBusyError):  # another sync running is not a failed sync: it says so itself
                self._last_error, self._last_error_at = str(exc), _now()
                recorded = read_failure(self.data_dir)
                if recorded is None or recorded["error"] != str(exc)[:300]:
                    # an error before the client's sync began (no keyring, not enrolled, enrolled again): the
                    # client records only its own, and an older record must not stand for this one
                    record_failure(self.data_dir, exc)
            if isinstance(exc, StorageError):
                self.free_space_if_low()  # the outbox went up first: its photos may go now
            raise
        self._last_error = None
        self.free_space_if_low()
        self.reload()
        return (f"catalogue {result.from_version} -> {result.to_version}, uploaded {result.uploaded}"
                + (f", {result.upload_refused} refused (kept on the tablet)" if result.upload_refused else "")
                + (f", new model {result.bundle_installed}" if result.bundle_installed else ""))

    def enrol(self, payload: str) -> str:
        """Enrol with a hub from the QR/typed enrolment payload (JSON); returns the hub's address."""
        text = (payload or "").strip()
        if not text:
            raise UsageError("paste or scan the enrolment code from the hub first")
        from sync.client import enrol

        enrol(self.data_dir, text)
        return str(json.loads((self.data_dir / "device.json").read_text())["hub"])

    def close(self) -> None:
        self.reload()
        self.catalogue.close()
        self.outbox.close()

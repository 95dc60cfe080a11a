"""Hub storage: the master catalogue, devices and uploads.

:class:`HubStore` is the small interface the rest of the hub codes against;
:class:`SqliteHubStore` implements it on one embedded SQLite file through sqlite-utils.

Versioning: every change runs inside :meth:`HubStore.change`, which bumps the catalogue
version by exactly one and stamps every row it writes with that version. Deletions are
tombstones (``deleted = 1`` with the version of the deletion), so "everything that changed
after version ``v``" is one indexed query per table.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import re
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from edge_app.errors import DamagedDatabaseError, InputError, IntegrityError, UsageError
from edge_app.storage import connect_wal

from ..package import Package as Snapshot

log = logging.getLogger(__name__)

PART_FIELDS = ("part_number", "name", "category", "manufacturer", "description", "size_mm", "look_alike_group")
INVENTORY_FIELDS = ("part_number", "site", "stock", "bin", "as_of")
IMAGE_FIELDS = ("image_id", "part_number", "path", "kind", "sha256", "thumb_sha256")

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS parts (part_number TEXT PRIMARY KEY, name TEXT, category TEXT,
        manufacturer TEXT, description TEXT, size_mm REAL, look_alike_group TEXT,
        version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS inventory (part_number TEXT NOT NULL, site TEXT NOT NULL, stock INTEGER,
        bin TEXT, as_of TEXT, version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (part_number, site))""",
    """CREATE TABLE IF NOT EXISTS images (image_id TEXT PRIMARY KEY, part_number TEXT NOT NULL, path TEXT NOT NULL,
        kind TEXT NOT NULL, sha256 TEXT, version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS embeddings (image_id TEXT PRIMARY KEY, bundle_id TEXT NOT NULL,
        dim INTEGER NOT NULL, vector BLOB NOT NULL, version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bundles (bundle_id TEXT PRIMARY KEY, version INTEGER NOT NULL,
        manifest TEXT NOT NULL, installed_at TEXT NOT NULL, catalogue_version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS devices (name TEXT PRIMARY KEY, site TEXT NOT NULL, token_hash TEXT NOT NULL,
        created_at TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS uploads (uuid TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, device TEXT NOT NULL,
        site TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, device_created_at TEXT,
        device_catalogue_version INTEGER, hub_version INTEGER NOT NULL, received_at TEXT NOT NULL,
        blob_sha256 TEXT, blob_size INTEGER, blob_complete INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'new', review TEXT)""",
    "CREATE INDEX IF NOT EXISTS parts_version ON parts(version)",
    "CREATE INDEX IF NOT EXISTS inventory_version ON inventory(site, version)",
    "CREATE INDEX IF NOT EXISTS images_version ON images(version)",
    "CREATE INDEX IF NOT EXISTS images_part ON images(part_number)",
    "CREATE INDEX IF NOT EXISTS embeddings_version ON embeddings(version)",
    # field-stats reads one kind over a time window (usage events: one per identification)
    "CREATE INDEX IF NOT EXISTS uploads_kind_received ON uploads(kind, received_at)",
    # every photo chunk asks for its device's unfinished photos: without it, a scan of every upload (180 ms at a
    # million rows, an audit; about 2 s per photo per tablet)
    "CREATE INDEX IF NOT EXISTS uploads_device_unfinished ON uploads(device, blob_complete)",
]

UPLOAD_KINDS = ("feedback", "photo", "unknown_part", "usage")


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: how far the hub clock may fall behind its last receipt and still be taken as a small correction (NTP)
RECEIPT_SKEW = _dt.timedelta(days=2)


def _receipt_time(last: str | None) -> str:
    """The receipt time of a new upload: the hub clock, or the last receipt when the clock fell a little behind
    it (seq is the receipt order either way). Not carried further: one upload received while the clock ran years
    ahead pinned every later one to that date (a review, 23rd session). A clock that fell back far (a PC that
    booted in 2000) dates uploads before the hub existed: `prune-usage` leaves those alone, and it is logged."""
    now = utcnow()
    if not last or last <= now:
        return now
    try:
        behind = _dt.datetime.fromisoformat(last) - _dt.datetime.fromisoformat(now)
    except ValueError:
        return now
    if behind <= RECEIPT_SKEW:
        return last
    log.error("the hub clock (%s) is %s behind its last upload receipt (%s): check the hub computer's clock", now,
              behind, last)
    return now


class Change(Protocol):
    """Writes inside one catalogue version bump."""

    version: int

    def upsert_parts(self, rows: Iterable[dict[str, Any]]) -> int: ...
    def delete_parts(self, part_numbers: Iterable[str]) -> int: ...
    def delete_site_stock(self, site: str) -> int: ...
    def upsert_inventory(self, rows: Iterable[dict[str, Any]]) -> int: ...
    def upsert_images(self, rows: Iterable[dict[str, Any]]) -> int: ...
    def delete_images(self, image_ids: Iterable[str]) -> int: ...
    def put_embeddings(self, image_ids: Sequence[str], vectors: np.ndarray, bundle_id: str) -> int: ...
    def clear_embeddings(self) -> None: ...
    def set_meta(self, key: str, value: Any) -> None: ...
    def add_bundle(self, bundle_id: str, version: int, manifest: dict[str, Any]) -> None: ...
    def update_upload(self, uuid: str, **fields: Any) -> None: ...


class HubStore(Protocol):
    """The storage interface of the hub."""

    def version(self) -> int: ...
    def epoch(self) -> int: ...
    def get_meta(self, key: str, default: Any = None) -> Any: ...
    def put_meta(self, key: str, value: Any) -> None: ...
    def set_setting(self, key: str, value: Any) -> None: ...
    def change(self) -> contextlib.AbstractContextManager[Change]: ...
    def snapshot(self, site: str, from_version: int) -> Snapshot: ...
    def part(self, part_number: str) -> dict[str, Any] | None: ...
    def live_rows(self, table: str, key: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    def embedded_ids(self, bundle_id: str, image_ids: Sequence[str]) -> set[str]: ...
    def stock_sites(self) -> set[str]: ...
    def part_numbers(self) -> list[str]: ...
    def image(self, image_id: str) -> dict[str, Any] | None: ...
    def live_images(self) -> list[dict[str, Any]]: ...
    def image_files(self) -> set[str]: ...
    def part_embeddings(self, bundle_id: str) -> dict[str, np.ndarray]: ...
    def image_embeddings(self, bundle_id: str) -> tuple[list[str], list[str], np.ndarray]: ...
    def look_alike_groups(self) -> dict[str, str | None]: ...
    def bundle(self, bundle_id: str) -> dict[str, Any] | None: ...
    def add_device(self, name: str, site: str, token_hash: str, *, expires_at: str | None = None,
                   **settings: Any) -> None: ...
    def reissue_token(self, name: str, site: str, token_hash: str, *, expires_at: str | None = None,
                      **settings: Any) -> None: ...
    def set_device_settings(self, name: str, **settings: Any) -> None: ...
    def device(self, name: str) -> dict[str, Any] | None: ...
    def list_devices(self) -> list[dict[str, Any]]: ...
    def device_seen(self, name: str, catalogue_version: int, bundle_id: str | None, *,
                    via: str | None = None, epoch: int = 0, last_error: str | None = None,
                    settings_stamp: Sequence[int] | None = None) -> None: ...
    def unfinished_uploads(self, name: str) -> list[str]: ...
    def bind_install(self, name: str, install_id: str) -> str: ...
    def revoke_device(self, name: str) -> bool: ...
    def add_upload(self, row: dict[str, Any]) -> tuple[dict[str, Any], bool]: ...
    def add_uploads(self, rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]: ...
    def upload(self, uuid: str) -> dict[str, Any] | None: ...
    def list_uploads(self, kind: str | None = None, status: str | None = None,
                     since: str | None = None, exclude_kind: str | None = None, *, device: str | None = None,
                     after_seq: int | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...
    def count_uploads(self, kind: str | None = None, status: str | None = None, since: str | None = None,
                      exclude_kind: str | None = None, *, device: str | None = None,
                      after_seq: int | None = None) -> int: ...
    def iter_upload_payloads(self, kind: str, since: str | None = None) -> Iterator[tuple[str, Any, Any, str]]: ...
    def delete_uploads(self, kind: str, received_before: str) -> int: ...
    def update_upload(self, uuid: str, **fields: Any) -> None: ...


UPLOAD_REVIEW_FIELDS = frozenset({"status", "review"})


def _check_device_settings(settings: Mapping[str, Any]) -> None:
    unknown = set(settings) - set(DEVICE_SETTINGS)
    if unknown:
        raise UsageError(f"unknown device setting(s) {sorted(unknown)}")


def _upload_filters(kind: str | None, status: str | None, since: str | None, exclude_kind: str | None,
                    device: str | None, after_seq: int | None) -> tuple[str, list[Any]]:
    """The WHERE clause (after ``WHERE 1``) and parameters of an uploads listing."""
    filters = [(c, v) for c, v in (("kind!=?", exclude_kind), ("received_at >= ?", since), ("kind=?", kind),
                                   ("status=?", status), ("device=?", device), ("seq > ?", after_seq))
               if v is not None and v != ""]
    return "".join(f" AND {c}" for c, _ in filters), [v for _, v in filters]


def _chunks(keys: Iterable[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """``keys`` without repeats, in chunks of ``size`` with their ``?,?,...`` placeholders (SQLite's limit on
    bound parameters)."""
    keys = list(dict.fromkeys(keys))
    for i in range(0, len(keys), size):
        chunk = keys[i:i + size]
        yield chunk, ",".join("?" * len(chunk))


def _device_sync_state(db: Any, name: str) -> tuple[Any, Any] | None:
    """(last_sync_at, revoked) of device ``name``, None if there is no such device."""
    return db.conn.execute("SELECT last_sync_at, revoked FROM devices WHERE name=?", (name,)).fetchone()


def _bump_settings_serial(db: Any) -> None:
    """Count a change of what tablets follow (a hub setting, a device's settings): the signed settings in sync
    plans carry it, and a tablet refuses a count lower than one it already took (an old plan replayed)."""
    row = db.conn.execute("SELECT value FROM meta WHERE key='settings_serial'").fetchone()
    db.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('settings_serial', ?)",
                    (json.dumps(int(json.loads(row[0])) + 1 if row else 1),))


class _SqliteChange:
    def __init__(self, db: Any, version: int) -> None:
        self.db = db
        self.version = version

    def _stamp(self, rows: Iterable[dict[str, Any]], fields: Sequence[str],
               revived: Callable[[dict[str, Any]], bool] = lambda r: False) -> list[dict[str, Any]]:
        """The rows with this version, live; only the ``fields`` a row HAS are written (a field it lacks keeps its
        stored value, or NULL for a new row): a stock-only import or `add-part --stock` wiped every other field
        of the parts it touched before (an audit). A row that brings a DELETED one back (``revived``) is written
        whole: the deleted part's old details and bin do not come back with its number (a review)."""
        out = []
        for r in rows:
            row = {k: r.get(k) for k in fields} if revived(r) else {k: r[k] for k in fields if k in r}
            row["version"] = self.version
            row["deleted"] = 0
            out.append(row)
        return out

    def _deleted_parts(self, part_numbers: Iterable[str]) -> set[str]:
        """Which of these part numbers have a deleted part row (a row written now revives it: written whole)."""
        out: set[str] = set()
        for chunk, marks in _chunks(part_numbers):
            out |= {r[0] for r in self.db.conn.execute(
                f"SELECT part_number FROM parts WHERE deleted=1 AND part_number IN ({marks})", chunk)}
        return out

    def _deleted_stock(self, part_numbers: Iterable[str]) -> set[tuple[str, str]]:
        """The (part, site) stock rows of these parts that are deleted (one written now is revived: whole). Per
        row: a part with one deleted stock row (re-added at one site only) had every later update of it written
        whole, wiping the bin and the part's other fields (an audit, 23rd session)."""
        out: set[tuple[str, str]] = set()
        for chunk, marks in _chunks(part_numbers):
            out |= {(r[0], r[1]) for r in self.db.conn.execute(
                f"SELECT part_number, site FROM inventory WHERE deleted=1 AND part_number IN ({marks})", chunk)}
        return out

    def _upsert(self, table: str, rows: list[dict[str, Any]], pk: str | tuple[str, ...]) -> None:
        """``upsert_all`` per set of columns (it fills the columns of a batch a row lacks with NULL)."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(tuple(sorted(r)), []).append(r)
        for group in groups.values():
            self.db[table].upsert_all(group, pk=pk)

    def upsert_parts(self, rows: Iterable[dict[str, Any]]) -> int:
        rows = list(rows)
        gone = self._deleted_parts(r.get("part_number") for r in rows)
        rows = self._stamp(rows, PART_FIELDS, lambda r: r.get("part_number") in gone)
        for r in rows:
            if not r.get("part_number"):
                raise InputError("a part row has no part_number")
        self._upsert("parts", rows, "part_number")
        return len(rows)

    def delete_parts(self, part_numbers: Iterable[str]) -> int:
        pns = list(part_numbers)
        c = self.db.conn
        for pn in pns:
            c.execute("UPDATE parts SET deleted=1, version=? WHERE part_number=?", (self.version, pn))
            c.execute("UPDATE inventory SET deleted=1, version=? WHERE part_number=?", (self.version, pn))
            ids = [r[0] for r in c.execute("SELECT image_id FROM images WHERE part_number=? AND deleted=0", (pn,))]
            self.delete_images(ids)
        return len(pns)

    def delete_site_stock(self, site: str) -> int:
        """Mark every live stock row of ``site`` deleted (tablets of that site drop them at their next sync)."""
        return int(self.db.conn.execute("UPDATE inventory SET deleted=1, version=? WHERE site=? AND deleted=0",
                                        (self.version, site)).rowcount)

    def upsert_inventory(self, rows: Iterable[dict[str, Any]]) -> int:
        rows = list(rows)
        gone = self._deleted_stock(r.get("part_number") for r in rows)
        rows = self._stamp(rows, INVENTORY_FIELDS, lambda r: (r.get("part_number"), r.get("site")) in gone)
        self._upsert("inventory", rows, ("part_number", "site"))
        return len(rows)

    def upsert_images(self, rows: Iterable[dict[str, Any]]) -> int:
        rows = self._stamp(rows, IMAGE_FIELDS)
        self._upsert("images", rows, "image_id")
        return len(rows)

    def delete_images(self, image_ids: Iterable[str]) -> int:
        ids = list(image_ids)
        c = self.db.conn
        for iid in ids:
            c.execute("UPDATE images SET deleted=1, version=? WHERE image_id=?", (self.version, iid))
            c.execute("DELETE FROM embeddings WHERE image_id=?", (iid,))
        return len(ids)

    def put_embeddings(self, image_ids: Sequence[str], vectors: np.ndarray, bundle_id: str) -> int:
        vecs = np.asarray(vectors, dtype=np.float16)
        if vecs.ndim != 2 or vecs.shape[0] != len(image_ids):
            raise UsageError(f"embeddings must be (N, D) for {len(image_ids)} images, got {vecs.shape}")
        dim = int(vecs.shape[1])
        self.db.conn.executemany(
            "INSERT OR REPLACE INTO embeddings (image_id, bundle_id, dim, vector, version) VALUES (?,?,?,?,?)",
            [(iid, bundle_id, dim, vecs[i].tobytes(), self.version) for i, iid in enumerate(image_ids)])
        return len(image_ids)

    def clear_embeddings(self) -> None:
        self.db.conn.execute("DELETE FROM embeddings")

    def set_meta(self, key: str, value: Any) -> None:
        self.db.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def update_upload(self, uuid: str, **fields: Any) -> None:
        """Review an upload in the same transaction as the catalogue change it caused (an approved photo, a part
        made from an unknown-part report): both commit, or neither."""
        bad = set(fields) - UPLOAD_REVIEW_FIELDS
        if bad:
            raise ValueError(f"not an upload review field: {sorted(bad)}")
        cur = self.db.conn.execute(f"UPDATE uploads SET {', '.join(f'{k}=?' for k in fields)} WHERE uuid=?",
                                   [*fields.values(), uuid])
        if cur.rowcount != 1:
            raise InputError(f"no such upload {uuid}")

    def add_bundle(self, bundle_id: str, version: int, manifest: dict[str, Any]) -> None:
        """Record a bundle made active in this change (its row commits with the change, or not at all)."""
        self.db.conn.execute("INSERT OR REPLACE INTO bundles VALUES (?,?,?,?,?)",
                             (bundle_id, int(version), json.dumps(manifest), utcnow(), self.version))


#: per-device settings kept at the hub and sent to the tablet with every sync plan
DEVICE_SETTINGS = ("keep_free_mb", "sync_window")

#: Versioned schema changes after :data:`SCHEMA` (``meta.schema_version``), applied in order, once, in the
#: store's first transaction; a hub folder made by an older version is brought up to date when opened.
#: the tables and indexes SCHEMA creates (opening checks they exist before skipping the set-up transaction)
_SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", " ".join(SCHEMA)))

MIGRATIONS: list[tuple[int, list[str]]] = [
    # 1: what each device last reported when it asked for a sync plan (fleet view in `hub devices`)
    (1, ["ALTER TABLE devices ADD COLUMN last_sync_at TEXT",
         "ALTER TABLE devices ADD COLUMN last_catalogue_version INTEGER",
         "ALTER TABLE devices ADD COLUMN last_bundle_id TEXT"]),
    # 2: how it came (http / https): during a move to HTTPS, which tablets still talk plain HTTP
    (2, ["ALTER TABLE devices ADD COLUMN last_via TEXT"]),
    # 3: the thumbnail's sha256, carried in the signed packages: a tablet stores only the thumbnail the hub meant
    (3, ["ALTER TABLE images ADD COLUMN thumb_sha256 TEXT"]),
    # 4: the catalogue lineage a device reported (after `hub restore`, versions of another lineage mean nothing)
    (4, ["ALTER TABLE devices ADD COLUMN last_catalogue_epoch INTEGER"]),
    # 5: per-tablet settings the hub can change after enrolment (sent with every sync plan); NULL = not set
    (5, ["ALTER TABLE devices ADD COLUMN keep_free_mb REAL", "ALTER TABLE devices ADD COLUMN sync_window TEXT"]),
    # 6: why the device's previous sync failed, as it reports with its next plan request (NULL: it succeeded)
    (6, ["ALTER TABLE devices ADD COLUMN last_error TEXT"]),
    # 7: the app install an enrolment code is bound to at first use, and when another install tried it
    (7, ["ALTER TABLE devices ADD COLUMN install_id TEXT",
         "ALTER TABLE devices ADD COLUMN install_conflict_at TEXT"]),
    # 8: until when an enrolment code works while no tablet has used it; codes enrolled before and still unused
    # expire a week after the hub's update (a leaked unused code used to work forever)
    (8, ["ALTER TABLE devices ADD COLUMN enrol_expires_at TEXT",
         "UPDATE devices SET enrol_expires_at = strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '+7 days') "
         "WHERE revoked = 0 AND install_id IS NULL AND last_sync_at IS NULL"]),
    # 9: the [epoch, serial] of the signed settings a device says it follows: whether it knows a certificate's
    # next pin, which its last sync TIME could not tell under a hub clock set wrong (an audit, 23rd session)
    (9, ["ALTER TABLE devices ADD COLUMN last_settings_stamp TEXT"]),
]


class SqliteHubStore:
    """:class:`HubStore` on one SQLite file (WAL; one connection per thread)."""

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise InputError(f"{self.path}: no hub database here (run `partlens hub init` first)")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        try:
            db = self._db()
            if self._set_up(db):  # read-only commands must not wait for a writer (e.g. a long import)
                return
            self._setup(db)
        except sqlite3.OperationalError:
            raise  # locked or busy: the CLI says so (exit 10)
        except sqlite3.DatabaseError as exc:  # not a database, or corrupt
            raise DamagedDatabaseError(self.path, f"{exc}; restore it with `partlens hub restore`") from None

    def _set_up(self, db: Any) -> bool:
        """Whether the schema is in place and current (then opening needs no write transaction)."""
        try:
            row = db.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            has_id = db.conn.execute("SELECT 1 FROM meta WHERE key='hub_id'").fetchone() is not None
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False
            raise
        if not (has_id and row is not None and int(json.loads(row[0])) >= MIGRATIONS[-1][0]):
            return False
        present = {r[0] for r in db.conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        return _SCHEMA_NAMES <= present  # a table or index added to SCHEMA since: set up again

    def _setup(self, db: Any) -> None:
        with self._tx(db):
            for stmt in SCHEMA:
                db.conn.execute(stmt)
            db.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('catalogue_version', '0')")
            # which hub a tablet's catalogue came from (kept by backup and restore: the same hub)
            db.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('hub_id', ?)",
                            (json.dumps(uuid.uuid4().hex[:16]),))  # 64 bits: an identity, not a secret
            row = db.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            current = int(json.loads(row[0])) if row else 0
            for version, stmts in MIGRATIONS:
                if version > current:
                    for stmt in stmts:
                        db.conn.execute(stmt)
                    db.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                                    (json.dumps(version),))
                    log.info("hub database %s migrated to schema %d", self.path, version)

    # -- plumbing ---------------------------------------------------------------------------
    def _db(self) -> Any:
        import sqlite_utils

        db = getattr(self._local, "db", None)
        if db is None:
            # a full disk is a clear StorageError (SQLite cannot even create its -shm file there)
            conn, _ = connect_wal(self.path, 30.0, read_only_fallback=False, disk="the hub's disk")
            conn.execute("PRAGMA synchronous=FULL")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self, db: Any, mode: str = "IMMEDIATE") -> Iterator[Any]:
        db.conn.execute(f"BEGIN {mode}")
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:  # SQLite already rolled back after e.g. a full disk: keep that error
                db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._db().conn.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    # -- catalogue --------------------------------------------------------------------------
    def version(self) -> int:
        return int(self.get_meta("catalogue_version", 0))

    def epoch(self) -> int:
        """The catalogue lineage: 0 until the hub is restored from a backup (``hub restore`` starts a newer one)."""
        return int(self.get_meta("catalogue_epoch", 0))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db().conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put_meta(self, key: str, value: Any) -> None:
        """A note of the hub's own in ``meta`` (not catalogue content, not a setting tablets follow)."""
        db = self._db()
        with self._write_lock, self._tx(db):
            db.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def set_setting(self, key: str, value: Any) -> None:
        """A hub setting kept in ``meta`` that is not catalogue content (no version bump, no package)."""
        db = self._db()
        with self._write_lock, self._tx(db):
            db.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
            _bump_settings_serial(db)

    @contextlib.contextmanager
    def change(self) -> Iterator[_SqliteChange]:
        """One catalogue version bump; every write inside is stamped with the new version."""
        db = self._db()
        with self._write_lock, self._tx(db):
            new = int(json.loads(db.conn.execute(
                "SELECT value FROM meta WHERE key='catalogue_version'").fetchone()[0])) + 1
            ch = _SqliteChange(db, new)
            yield ch
            ch.set_meta("catalogue_version", new)
            ch.set_meta("changed_at", utcnow())
        log.info("hub catalogue is now at version %d", new)

    def snapshot(self, site: str, from_version: int) -> Snapshot:
        """Rows changed after ``from_version`` (all live rows when it is 0), read in one transaction."""
        db = self._db()
        full = from_version <= 0
        with self._tx(db, "DEFERRED"):
            to = self.version()
            bundle_id = self.get_meta("bundle_id")
            hub_time = self.get_meta("changed_at")
            epoch = self.epoch()
            p = () if full else (from_version,)
            cols_p = ", ".join(PART_FIELDS)
            parts = self._rows(f"SELECT {cols_p} FROM parts WHERE deleted=0 AND {'1' if full else 'version>?'}"
                               " ORDER BY part_number", p)
            inv = self._rows(f"SELECT {', '.join(INVENTORY_FIELDS)} FROM inventory WHERE site=? AND deleted=0 AND "
                             f"{'1' if full else 'version>?'} ORDER BY part_number", (site, *p))
            imgs = self._rows(f"SELECT {', '.join(IMAGE_FIELDS)} FROM images WHERE deleted=0 AND "
                              f"{'1' if full else 'version>?'} ORDER BY image_id", p)
            del_parts: list[str] = []
            del_imgs: list[str] = []
            del_inv: list[str] = []
            if not full:
                del_parts = [r["part_number"] for r in self._rows(
                    "SELECT part_number FROM parts WHERE deleted=1 AND version>? ORDER BY part_number", p)]
                del_imgs = [r["image_id"] for r in self._rows(
                    "SELECT image_id FROM images WHERE deleted=1 AND version>? ORDER BY image_id", p)]
                del_inv = [r["part_number"] for r in self._rows(
                    "SELECT part_number FROM inventory WHERE site=? AND deleted=1 AND version>?", (site, from_version))]
            emb_rows = db.conn.execute(
                f"SELECT e.image_id, e.dim, e.vector FROM embeddings e JOIN images i ON i.image_id=e.image_id "
                f"WHERE i.deleted=0 AND e.bundle_id=? AND {'1' if full else 'e.version>?'} ORDER BY e.image_id",
                (bundle_id, *p)).fetchall()
        ids = [r[0] for r in emb_rows]
        if emb_rows:
            dim = int(emb_rows[0][1])
            vecs = np.frombuffer(b"".join(r[2] for r in emb_rows), dtype=np.float16).reshape(len(ids), dim)
        else:
            vecs = np.zeros((0, 0), dtype=np.float16)
        return Snapshot(from_version=max(from_version, 0), to_version=to, site=site, bundle_id=bundle_id, full=full,
                        parts=parts, inventory=inv, images=imgs, deleted_parts=del_parts, deleted_images=del_imgs,
                        deleted_inventory=del_inv, embedding_ids=ids, embeddings=vecs, hub_time=hub_time, epoch=epoch)

    def part(self, part_number: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM parts WHERE part_number=? AND deleted=0", (part_number,))
        return rows[0] if rows else None

    def image(self, image_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM images WHERE image_id=? AND deleted=0", (image_id,))
        return rows[0] if rows else None

    def live_images(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM images WHERE deleted=0 ORDER BY image_id")

    def image_files(self) -> set[str]:
        """Every file name an image row (deleted ones too) refers to: ``images/<path>`` and ``thumbs/<id>.jpg``."""
        rows = self._db().conn.execute("SELECT image_id, path FROM images").fetchall()
        return {f"images/{path}" for _, path in rows} | {f"thumbs/{image_id}.jpg" for image_id, _ in rows}

    def part_embeddings(self, bundle_id: str) -> dict[str, np.ndarray]:
        """Each live part's catalogue-photo embeddings under ``bundle_id`` (float32, (N, D))."""
        rows = self._db().conn.execute(
            "SELECT i.part_number, e.dim, e.vector FROM embeddings e JOIN images i ON i.image_id=e.image_id "
            "JOIN parts p ON p.part_number=i.part_number "
            "WHERE i.deleted=0 AND p.deleted=0 AND e.bundle_id=? ORDER BY i.part_number, e.image_id",
            (bundle_id,)).fetchall()
        out: dict[str, list[np.ndarray]] = {}
        for pn, dim, blob in rows:
            out.setdefault(pn, []).append(np.frombuffer(blob, dtype=np.float16).astype(np.float32).reshape(int(dim)))
        return {pn: np.stack(v) for pn, v in out.items()}

    def image_embeddings(self, bundle_id: str) -> tuple[list[str], list[str], np.ndarray]:
        """(image ids, their part numbers, their embeddings (N, D) float32) of every live image under ``bundle_id``."""
        rows = self._db().conn.execute(
            "SELECT i.image_id, i.part_number, e.dim, e.vector FROM embeddings e JOIN images i ON "
            "i.image_id=e.image_id JOIN parts p ON p.part_number=i.part_number "
            "WHERE i.deleted=0 AND p.deleted=0 AND e.bundle_id=? ORDER BY i.image_id", (bundle_id,)).fetchall()
        if not rows:
            return [], [], np.zeros((0, 0), np.float32)
        vecs = np.stack([np.frombuffer(blob, dtype=np.float16).astype(np.float32).reshape(int(dim))
                         for _, _, dim, blob in rows])
        return [r[0] for r in rows], [r[1] for r in rows], vecs

    def look_alike_groups(self) -> dict[str, str | None]:
        """Each live part's ``look_alike_group`` (None when it has none)."""
        return {r["part_number"]: r["look_alike_group"] for r in self._rows(
            "SELECT part_number, look_alike_group FROM parts WHERE deleted=0")}

    def live_rows(self, table: str, key: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The live rows of ``table`` (parts, images) whose ``key`` column is one of ``keys``, by key."""
        if table not in ("parts", "images") or key not in ("part_number", "image_id"):
            raise UsageError(f"no live rows of {table}.{key}")
        out: dict[str, dict[str, Any]] = {}
        for chunk, marks in _chunks(keys):
            for r in self._rows(f"SELECT * FROM {table} WHERE deleted=0 AND {key} IN ({marks})", chunk):
                out[r[key]] = r
        return out

    def embedded_ids(self, bundle_id: str, image_ids: Sequence[str]) -> set[str]:
        """Which of ``image_ids`` have a vector of ``bundle_id``."""
        out: set[str] = set()
        for chunk, marks in _chunks(image_ids):
            out |= {r[0] for r in self._db().conn.execute(
                f"SELECT image_id FROM embeddings WHERE bundle_id=? AND image_id IN ({marks})", [bundle_id, *chunk])}
        return out

    def stock_sites(self) -> set[str]:
        """The sites the live stock rows name."""
        return {r[0] for r in self._db().conn.execute("SELECT DISTINCT site FROM inventory WHERE deleted=0")}

    def part_numbers(self) -> list[str]:
        """The live (not deleted) part numbers."""
        return [r[0] for r in self._db().conn.execute("SELECT part_number FROM parts WHERE deleted=0 "
                                                      "ORDER BY part_number")]

    def counts(self) -> dict[str, Any]:
        c = self._db().conn
        active = self.get_meta("bundle_id")
        return {t: c.execute(f"SELECT count(*) FROM {t} WHERE deleted=0").fetchone()[0]
                for t in ("parts", "inventory", "images")} | {
            # the active bundle's only: vectors of another model are never sent to tablets
            "embeddings": c.execute("SELECT count(*) FROM embeddings WHERE bundle_id IS ?", (active,)).fetchone()[0],
            # what waits for a person (`hub review list --status new`); usage events are for field-stats
            "uploads_to_review": dict(c.execute(
                "SELECT kind, count(*) FROM uploads WHERE status='new' AND kind!='usage' GROUP BY kind "
                "ORDER BY kind").fetchall())}

    # -- bundles ----------------------------------------------------------------------------
    def bundle(self, bundle_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM bundles WHERE bundle_id=?", (bundle_id,))
        if not rows:
            return None
        rows[0]["manifest"] = json.loads(rows[0]["manifest"])
        return rows[0]

    # -- devices ----------------------------------------------------------------------------
    def add_device(self, name: str, site: str, token_hash: str, *, expires_at: str | None = None,
                   **settings: Any) -> None:
        """A new device row, with its ``keep_free_mb`` / ``sync_window`` if set, in one transaction; its enrolment
        code stops working at ``expires_at`` (ISO 8601 UTC) unless a tablet used it before."""
        _check_device_settings(settings)
        settings = {**settings, "enrol_expires_at": expires_at}
        db = self._db()
        with self._write_lock, self._tx(db):
            row = _device_sync_state(db, name)
            if row:
                hint = (" It has never synced: if its enrolment payload was lost, `hub add-device NAME --reissue` "
                        "gives it a new token (the old one stops working)." if row[0] is None and not row[1]
                        else "")
                raise UsageError(f"device {name!r} already exists (pick another name).{hint}")
            cols = ["name", "site", "token_hash", "created_at", *settings]
            db.conn.execute(f"INSERT INTO devices ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            (name, site, token_hash, utcnow(), *settings.values()))

    def reissue_token(self, name: str, site: str, token_hash: str, *, expires_at: str | None = None,
                      **settings: Any) -> None:
        """A new token for a device that never synced and is not revoked (its enrolment payload was lost before
        anyone saw it, or its code expired unused); the old token stops working. Its site, settings and the new
        code's expiry are set as given."""
        _check_device_settings(settings)
        db = self._db()
        with self._write_lock, self._tx(db):
            row = _device_sync_state(db, name)
            if row is None:
                raise InputError(f"no device {name!r} to reissue a token for (enrol it without --reissue)")
            if row[1]:
                raise UsageError(f"device {name!r} is revoked; enrol the tablet under another name")
            if row[0] is not None:
                raise UsageError(f"device {name!r} has synced with this hub (its token is in use); revoke it and "
                                 "enrol the tablet under another name")
            sets = {"site": site, "token_hash": token_hash, "created_at": utcnow(), "install_id": None,
                    "install_conflict_at": None, "enrol_expires_at": expires_at, **settings}
            db.conn.execute(f"UPDATE devices SET {', '.join(f'{k}=?' for k in sets)} WHERE name=?",
                            (*sets.values(), name))
            _bump_settings_serial(db)

    def set_device_settings(self, name: str, **settings: Any) -> None:
        """Store a device's ``keep_free_mb`` / ``sync_window`` (None clears one: the tablet keeps its own)."""
        _check_device_settings(settings)
        db = self._db()
        with self._write_lock, self._tx(db):
            if not db.conn.execute("SELECT 1 FROM devices WHERE name=?", (name,)).fetchone():
                raise UsageError(f"no device {name!r} (see `partlens hub devices`)")
            for key, value in settings.items():
                db.conn.execute(f"UPDATE devices SET {key}=? WHERE name=?", (value, name))
            _bump_settings_serial(db)

    def device(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM devices WHERE name=?", (name,))
        return rows[0] if rows else None

    def list_devices(self) -> list[dict[str, Any]]:
        """Every enrolled device (never the token hash), with what it last reported when it asked for a sync."""
        return self._rows("SELECT name, site, created_at, revoked, last_sync_at, last_catalogue_version, "
                          "last_bundle_id, last_via, last_catalogue_epoch, keep_free_mb, sync_window, last_error, "
                          "install_conflict_at, enrol_expires_at, install_id IS NOT NULL AS install_bound, "
                          "last_settings_stamp "
                          "FROM devices ORDER BY name")

    def bind_install(self, name: str, install_id: str) -> str:
        """Bind device ``name``'s enrolment to the app install ``install_id`` at its first use: ``"bound"``,
        ``"same"`` (already bound to it) or ``"other"`` (bound to another install: the same enrolment code in use on
        a second tablet; the time is recorded for ``hub devices``)."""
        db = self._db()
        row = db.conn.execute("SELECT install_id FROM devices WHERE name=?", (name,)).fetchone()
        if row is not None and row[0] == install_id:
            return "same"  # the usual request: no write
        with self._write_lock, self._tx(db):
            row = db.conn.execute("SELECT install_id FROM devices WHERE name=?", (name,)).fetchone()
            if row is None:
                raise InputError(f"no device {name!r}")
            if row[0] is None:
                db.conn.execute("UPDATE devices SET install_id=? WHERE name=?", (install_id, name))
                return "bound"
            if row[0] == install_id:
                return "same"
            db.conn.execute("UPDATE devices SET install_conflict_at=? WHERE name=?", (utcnow(), name))
            return "other"

    def device_seen(self, name: str, catalogue_version: int, bundle_id: str | None, *,
                    via: str | None = None, epoch: int = 0, last_error: str | None = None,
                    settings_stamp: Sequence[int] | None = None) -> None:
        """Record that ``name`` asked for a sync plan, holding this catalogue version (of lineage ``epoch``) and
        bundle, over ``via``, why its previous sync failed (``last_error``; None: it did not) and the stamp of
        the signed settings it follows (``settings_stamp``, [epoch, serial]; None: it did not say)."""
        db = self._db()
        stamp = json.dumps([int(x) for x in settings_stamp]) if settings_stamp else None
        with self._write_lock, self._tx(db):
            db.conn.execute("UPDATE devices SET last_sync_at=?, last_catalogue_version=?, last_bundle_id=?, "
                            "last_via=?, last_catalogue_epoch=?, last_error=?, last_settings_stamp=? WHERE name=?",
                            (_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
                             int(catalogue_version), bundle_id, via, int(epoch), last_error, stamp, name))

    def unfinished_uploads(self, name: str) -> list[str]:
        """UUIDs of device ``name``'s uploads whose photo has not arrived whole yet."""
        return [r[0] for r in self._db().conn.execute(
            "SELECT uuid FROM uploads WHERE device=? AND blob_complete=0 AND blob_size IS NOT NULL", (name,))]

    def revoke_device(self, name: str) -> bool:
        """Refuse the device's token from now on (e.g. a lost tablet). False if it was already revoked."""
        db = self._db()
        with self._write_lock, self._tx(db):
            row = db.conn.execute("SELECT revoked FROM devices WHERE name=?", (name,)).fetchone()
            if row is None:
                raise UsageError(f"no device named {name!r}")
            if row[0]:
                return False
            db.conn.execute("UPDATE devices SET revoked=1 WHERE name=?", (name,))
        return True

    # -- uploads ----------------------------------------------------------------------------
    def add_upload(self, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store an upload once by its client UUID; return (stored row, created)."""
        return self.add_uploads([row])[0]

    def add_uploads(self, rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
        """Store uploads once each by client UUID, all in ONE transaction (one fsync for a batch), in the
        given order; return (stored row, created) per row."""
        db = self._db()
        created: list[bool] = []
        with self._write_lock, self._tx(db):
            seq, last = db.conn.execute("SELECT seq, received_at FROM uploads ORDER BY seq DESC LIMIT 1").fetchone() \
                or (0, "")
            version, now = self.version(), _receipt_time(last)
            for row in rows:
                if db.conn.execute("SELECT 1 FROM uploads WHERE uuid=?", (row["uuid"],)).fetchone():
                    created.append(False)
                    continue
                seq += 1
                full = dict(row, seq=seq, hub_version=version, received_at=now)
                cols = list(full)
                db.conn.execute(f"INSERT INTO uploads ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                [full[c] for c in cols])
                created.append(True)
        out = []
        for row, new in zip(rows, created):
            stored = self.upload(row["uuid"])
            if stored is None:  # cannot happen after the commit above; never hand back a made-up row
                raise IntegrityError(f"upload {row['uuid']} is missing right after it was stored")
            out.append((stored, new))
        return out

    def upload(self, uuid: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM uploads WHERE uuid=?", (uuid,))
        return rows[0] if rows else None

    def list_uploads(self, kind: str | None = None, status: str | None = None,
                     since: str | None = None, exclude_kind: str | None = None, *, device: str | None = None,
                     after_seq: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Uploads in receipt order; ``since``: only those received at or after this ISO UTC time; ``after_seq``
        and ``limit``: one page (the next page starts after the last row's ``seq``)."""
        where, params = _upload_filters(kind, status, since, exclude_kind, device, after_seq)
        sql = f"SELECT * FROM uploads WHERE 1{where} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._rows(sql, params)

    def count_uploads(self, kind: str | None = None, status: str | None = None, since: str | None = None,
                      exclude_kind: str | None = None, *, device: str | None = None,
                      after_seq: int | None = None) -> int:
        """How many uploads :meth:`list_uploads` would list without a limit."""
        where, params = _upload_filters(kind, status, since, exclude_kind, device, after_seq)
        return int(self._db().conn.execute(f"SELECT count(*) FROM uploads WHERE 1{where}", params).fetchone()[0])

    def iter_upload_payloads(self, kind: str, since: str | None = None) -> Iterator[tuple[str, Any, Any, str]]:
        """(payload JSON, device_created_at, received_at, site of the device at receipt) of every ``kind`` upload
        in receipt order (``since``: received at or after this ISO UTC time), streamed from one read: never all
        rows in memory at once."""
        where, params = _upload_filters(kind, None, since, None, None, None)
        yield from self._db().conn.execute(
            f"SELECT payload, device_created_at, received_at, site FROM uploads WHERE 1{where} ORDER BY seq", params)

    def delete_uploads(self, kind: str, received_before: str, batch: int = 5000) -> int:
        """Delete ``kind`` uploads received before this ISO UTC time (records only: such kinds carry no blob), in
        transactions of ``batch`` rows: tablets syncing meanwhile wait for one batch, not the whole deletion (an
        audit: 900,000 rows in one transaction held the hub's writes for 15 s, near the 30-s busy timeout)."""
        db = self._db()
        # spot checks are usage events too, but few and the only unbiased accuracy sample: kept
        event = "coalesce(CASE WHEN json_valid(payload) THEN json_extract(payload, '$.event') END, '')"
        total = 0
        while True:
            with self._write_lock, self._tx(db):
                # a receipt dated before any tablet was enrolled is a hub clock that fell back, not an old event
                cur = db.conn.execute(
                    "DELETE FROM uploads WHERE rowid IN (SELECT rowid FROM uploads WHERE kind=? AND received_at < ? "
                    "AND received_at >= coalesce((SELECT min(created_at) FROM devices), '') "
                    f"AND blob_size IS NULL AND {event} != 'spot_check' LIMIT ?)", (kind, received_before, batch))
                n = int(cur.rowcount)
            total += n
            if n < batch:
                return total

    def update_upload(self, uuid: str, **fields: Any) -> None:
        db = self._db()
        with self._write_lock, self._tx(db):
            sets = ", ".join(f"{k}=?" for k in fields)
            db.conn.execute(f"UPDATE uploads SET {sets} WHERE uuid=?", [*fields.values(), uuid])

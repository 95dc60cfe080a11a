"""The upload outbox (``outbox.db``), per ``docs/device_db.md``.

A separate SQLite file so the catalogue can be replaced by a sync without touching what the
engineer has recorded. Every record gets a client-made UUID, so re-uploading after a lost
acknowledgement is idempotent on the hub.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import uuid as _uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import DamagedDatabaseError, InputError, StorageError, UsageError
from ..storage import commit_or_rollback, connect_wal, disk_full_is_storage_error

log = logging.getLogger(__name__)

#: the largest record payload the hub takes (``sync.transport`` uses this value)
MAX_PAYLOAD_BYTES = 64 * 1024
KINDS = ("feedback", "photo", "unknown_part", "usage")
#: schema migrations applied by :meth:`Outbox._migrate`
MIGRATIONS = (1, 2)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


#: uploaded records are kept this long (and the latest UPLOADED_KEEP_LAST always): a hub restored from a backup
#: gets again what this tablet sent after it
UPLOADED_KEEP_DAYS = 90.0
UPLOADED_KEEP_LAST = 2000


def _utc_stamp(value: Any) -> str | None:
    """``value`` (an ISO time with an offset, e.g. from the hub) as this outbox's UTC text, or None."""
    try:
        t = _dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    if t is None or t.tzinfo is None:
        return None
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


class Outbox:
    """Records waiting for upload: ``add``, ``pending``, ``mark_uploaded``, ``mark_refused``.

    A record the hub refuses for good (e.g. its payload is over the hub's limit) is marked refused
    with the reason and kept: it no longer blocks the records behind it, and nothing is deleted.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn, self.read_only = connect_wal(self.path, 5.0)
            self._conn.execute("PRAGMA synchronous=FULL")
            if self.read_only:  # opened on a full disk (see connect_wal): pending records still upload
                done = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations")}
                if not set(MIGRATIONS) <= done:
                    raise StorageError(f"{self.path}: storage full and the outbox needs a schema update; free "
                                       "space on the tablet and restart the app")
            else:
                self._migrate()
        except sqlite3.OperationalError as exc:
            raise InputError(f"{self.path}: not a usable outbox database ({exc})") from None
        except sqlite3.DatabaseError as exc:  # not a database, or corrupt
            raise DamagedDatabaseError(self.path, str(exc)) from None
        self._lock = threading.RLock()

    def _migrate(self) -> None:
        """Versioned migrations (:data:`MIGRATIONS` lists them), in one transaction."""
        with self._tx():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
            if not self._conn.execute("SELECT 1 FROM schema_migrations WHERE version = 1").fetchone():
                self._conn.execute(
                    "CREATE TABLE outbox (uuid TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL, "
                    "blob_path TEXT, created_at TEXT NOT NULL, uploaded_at TEXT)")
                self._conn.execute("CREATE INDEX outbox_pending ON outbox(uploaded_at, created_at)")
                self._conn.execute("INSERT INTO schema_migrations VALUES (1, ?)", (_now(),))
            if not self._conn.execute("SELECT 1 FROM schema_migrations WHERE version = 2").fetchone():
                # a record the hub will never store is kept, marked refused with the hub's reason
                self._conn.execute("ALTER TABLE outbox ADD COLUMN refused_at TEXT")
                self._conn.execute("ALTER TABLE outbox ADD COLUMN refused_reason TEXT")
                self._conn.execute("INSERT INTO schema_migrations VALUES (2, ?)", (_now(),))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """The one write helper: BEGIN IMMEDIATE ... COMMIT, rolled back on any error; a full disk becomes a
        :class:`~edge_app.errors.StorageError` (the record is not stored, nothing else changes)."""
        if self.read_only:
            raise StorageError(f"{self.path}: storage full, the outbox was opened read-only; free space on the "
                               "tablet and restart the app")
        with disk_full_is_storage_error(self.path.parent, "recording in the outbox"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                commit_or_rollback(self._conn)

    def close(self) -> None:
        self._conn.close()

    def add(self, kind: str, payload: Mapping[str, Any], blob_path: str | os.PathLike[str] | None = None,
            *, uuid: str | None = None) -> str:
        """Queue a record; returns its UUID (client-made unless given)."""
        return self.add_many([(kind, payload, blob_path, uuid)])[0]

    def add_many(self, records: Sequence[tuple[str, Mapping[str, Any], str | os.PathLike[str] | None, str | None]],
                 *, skip_existing: bool = False) -> list[str]:
        """Queue several records (kind, payload, blob path or None, UUID or None) in ONE transaction: all or none
        (an unknown-part report and its photos, a confirmation and the spot-check answer it gives). With
        ``skip_existing`` a record whose UUID is queued already is left as it is (answering again after the app
        was stopped before it saved the first answer); otherwise that is an error. Returns the UUIDs."""
        rows = []
        for kind, payload, blob_path, uuid in records:
            if kind not in KINDS:
                raise UsageError(f"outbox kind must be one of {KINDS}, got {kind!r}")
            if blob_path is not None and not Path(blob_path).is_file():
                raise InputError(f"{blob_path}: outbox blob does not exist")
            try:
                text = json.dumps(dict(payload), sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:  # NaN would make the hub refuse every batch it is in
                raise InputError(f"outbox {kind} payload is not JSON-serialisable ({exc})") from None
            if len(text) > MAX_PAYLOAD_BYTES:  # the hub would refuse it: say so now, while the engineer is here
                raise UsageError(f"this {kind.replace('_', ' ')} is too long for the hub ({len(text)} bytes, "
                                 f"at most {MAX_PAYLOAD_BYTES}): shorten the note")
            rows.append((uuid or str(_uuid.uuid4()), kind, text, None if blob_path is None else str(blob_path), _now()))
        verb = "INSERT OR IGNORE" if skip_existing else "INSERT"
        with self._lock, self._tx() as conn:
            conn.executemany(f"{verb} INTO outbox(uuid, kind, payload, blob_path, created_at) VALUES (?, ?, ?, ?, ?)",
                             rows)
        return [r[0] for r in rows]

    def has(self, uuid: str) -> bool:
        """Whether a record with this UUID is in the outbox (pending, uploaded or refused)."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM outbox WHERE uuid=?", (uuid,)).fetchone() is not None

    def payload(self, uuid: str) -> dict[str, Any] | None:
        """The payload of a record (pending, uploaded or refused); None if there is no such record."""
        with self._lock:
            row = self._conn.execute("SELECT payload FROM outbox WHERE uuid=?", (uuid,)).fetchone()
        return None if row is None else json.loads(row[0])

    def update_pending(self, uuid: str, changes: Mapping[str, Any]) -> bool:
        """Merge ``changes`` into the payload of a record that has not left the tablet (not uploaded nor
        refused); False when it has (or does not exist): what the hub has is never changed behind its back."""
        with self._lock, self._tx() as conn:
            row = conn.execute("SELECT payload FROM outbox WHERE uuid=? AND uploaded_at IS NULL AND refused_at IS NULL",
                               (uuid,)).fetchone()
            if row is None:
                return False
            text = json.dumps({**json.loads(row[0]), **dict(changes)}, sort_keys=True, allow_nan=False)
            if len(text) > MAX_PAYLOAD_BYTES:
                raise UsageError(f"this record is too long for the hub ({len(text)} bytes, at most "
                                 f"{MAX_PAYLOAD_BYTES}): shorten the note")
            conn.execute("UPDATE outbox SET payload=? WHERE uuid=?", (text, uuid))
        return True

    def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Records not yet uploaded nor refused, oldest first (payload decoded)."""
        sql = ("SELECT uuid, kind, payload, blob_path, created_at FROM outbox WHERE uploaded_at IS NULL "
               "AND refused_at IS NULL ORDER BY created_at, rowid")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return [{"uuid": u, "kind": k, "payload": json.loads(p), "blob_path": b, "created_at": c}
                for u, k, p, b, c in rows]

    def mark_uploaded(self, uuid: str) -> bool:
        """Mark one record uploaded; False if it was unknown or already marked."""
        return bool(self.mark_uploaded_many([uuid]))

    def mark_uploaded_many(self, uuids: Sequence[str], received: Mapping[str, Any] | None = None) -> int:
        """Mark records uploaded in one transaction; returns how many were pending. ``received``: the hub's
        receipt time of each (its clock, which a hub restore names its backup by: comparing the tablet's own
        clock with it lost a slow tablet's uploads for good, an audit, 23rd session); this clock otherwise."""
        now = _now()
        with self._lock, self._tx() as conn:
            return sum(conn.execute("UPDATE outbox SET uploaded_at = ? WHERE uuid = ? AND uploaded_at IS NULL",
                                    (_utc_stamp((received or {}).get(u)) or now, u)).rowcount for u in uuids)

    def forget_uploaded(self, older_than_days: float = UPLOADED_KEEP_DAYS, keep_last: int = UPLOADED_KEEP_LAST) -> int:
        """Delete records uploaded more than ``older_than_days`` ago, except the ``keep_last`` latest (a hub
        restored from a backup gets what came after it again from these); returns how many. Every usage event
        stayed for the tablet's life before (about 5 MB a year at 50 identifications a day, an audit)."""
        cutoff = (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=older_than_days)).isoformat(
            timespec="milliseconds")
        with self._lock, self._tx() as conn:
            return conn.execute(
                "DELETE FROM outbox WHERE uploaded_at IS NOT NULL AND uploaded_at < ? AND rowid NOT IN "
                "(SELECT rowid FROM outbox WHERE uploaded_at IS NOT NULL ORDER BY rowid DESC LIMIT ?)",
                (cutoff, int(keep_last))).rowcount

    def mark_refused(self, uuid: str, reason: str) -> bool:
        """Keep a record the hub will not store out of ``pending``, with the reason; False if not pending."""
        with self._lock, self._tx() as conn:
            n = conn.execute("UPDATE outbox SET refused_at = ?, refused_reason = ? WHERE uuid = ? "
                             "AND uploaded_at IS NULL AND refused_at IS NULL", (_now(), reason[:1000], uuid)).rowcount
        return bool(n)

    def refused(self) -> list[dict[str, Any]]:
        """Records the hub refused, oldest first, with ``refused_at`` and ``refused_reason``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT uuid, kind, blob_path, created_at, refused_at, refused_reason, length(payload) FROM outbox "
                "WHERE refused_at IS NOT NULL ORDER BY created_at, rowid").fetchall()
        return [dict(zip(("uuid", "kind", "blob_path", "created_at", "refused_at", "refused_reason",
                          "payload_bytes"), r)) for r in rows]

    def requeue_refused(self, uuids: Sequence[str] | None = None) -> int:
        """Send refused records again at the next sync (all, or only ``uuids``), e.g. after the hub was
        fixed; returns how many were requeued. Their refusal reasons are cleared."""
        sql = "UPDATE outbox SET refused_at = NULL, refused_reason = NULL WHERE refused_at IS NOT NULL"
        with self._lock, self._tx() as conn:
            if uuids is None:
                return conn.execute(sql).rowcount
            return sum(conn.execute(sql + " AND uuid = ?", (u,)).rowcount for u in uuids)

    def requeue_uploaded_since(self, since: str) -> tuple[int, int]:
        """Send again, at the next upload, records uploaded at or after ``since`` (ISO time): the hub that
        received them was restored from an older backup. A confirmation or unknown-part report whose photo the
        tablet has since pruned goes again without it (what the engineer said still counts); a record that IS
        a photo and lost it stays as it was. Returns (requeued, left out for a missing photo)."""
        with self._lock:
            rows = self._conn.execute("SELECT uuid, kind, blob_path FROM outbox WHERE uploaded_at IS NOT NULL AND "
                                      "uploaded_at >= ?", (since,)).fetchall()
        whole = [u for u, _k, b in rows if b is None or Path(b).is_file()]
        no_photo = [u for u, k, b in rows
                    if b is not None and not Path(b).is_file() and k in ("feedback", "unknown_part")]
        with self._lock, self._tx() as conn:
            conn.executemany("UPDATE outbox SET uploaded_at = NULL WHERE uuid = ?", [(u,) for u in whole])
            conn.executemany("UPDATE outbox SET uploaded_at = NULL, blob_path = NULL WHERE uuid = ?",
                             [(u,) for u in no_photo])
        return len(whole) + len(no_photo), len(rows) - len(whole) - len(no_photo)

    def count(self, pending_only: bool = True, kinds: Sequence[str] | None = None) -> int:
        """Records (not yet uploaded nor refused, with ``pending_only``), of ``kinds`` only when given."""
        where, params = ["uploaded_at IS NULL AND refused_at IS NULL"] if pending_only else [], []
        if kinds is not None:
            where.append(f"kind IN ({','.join('?' * len(kinds))})" if kinds else "0")
            params = list(kinds)
        sql = "SELECT count(*) FROM outbox" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            return int(self._conn.execute(sql, params).fetchone()[0])

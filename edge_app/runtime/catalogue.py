"""The device catalogue database (``catalogue.db``), per ``docs/device_db.md``.

SQLite through sqlite-utils, WAL journal, ``busy_timeout=5000``, ``synchronous=FULL``,
versioned migrations. Every write goes through :meth:`CatalogueDB.transaction` (one helper,
``BEGIN IMMEDIATE`` ... ``COMMIT``/``ROLLBACK``) so a sync delta commits atomically. Reads that
need several statements use :meth:`CatalogueDB.read` (a short deferred read transaction), so
they see one consistent snapshot while a writer works in WAL mode.

Embeddings are the source of truth for the vector index: float32 little-endian blobs, one per
image, with an integer ``label`` (the hnswlib id). A label is never reused: writing a vector
always gives a new label, so label -> vector is immutable and the index can be maintained
incrementally by comparing label sets.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import DamagedDatabaseError, InputError, StorageError, UsageError
from ..storage import commit_or_rollback, connect_wal

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
#: the longest text a parts filter takes (a 50,000-character one ended in SQLite's "LIKE or GLOB pattern too
#: complex" and a traceback, an audit)
MAX_FILTER_TEXT = 500
PART_COLUMNS = ("part_number", "name", "category", "manufacturer", "description", "size_mm", "look_alike_group",
                "version")
INVENTORY_COLUMNS = ("part_number", "site", "stock", "bin", "as_of")
IMAGE_COLUMNS = ("image_id", "part_number", "path", "kind", "version", "thumb_sha256")
#: meta key holding the last embedding label handed out (labels are never reused).
LABEL_SEQ_KEY = "embedding_label_seq"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ';'-separated DDL inside the open transaction (executescript would COMMIT it)."""
    for stmt in script.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _migration_1(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE parts (
            part_number TEXT PRIMARY KEY, name TEXT, category TEXT, manufacturer TEXT, description TEXT,
            size_mm REAL, look_alike_group TEXT, version INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE inventory (
            part_number TEXT NOT NULL, site TEXT NOT NULL, stock INTEGER, bin TEXT, as_of TEXT,
            PRIMARY KEY (part_number, site));
        CREATE TABLE images (
            image_id TEXT PRIMARY KEY, part_number TEXT NOT NULL, path TEXT, kind TEXT,
            version INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX images_part ON images(part_number);
        CREATE TABLE embeddings (
            image_id TEXT PRIMARY KEY, label INTEGER NOT NULL UNIQUE, bundle_id TEXT NOT NULL,
            dim INTEGER NOT NULL, vector BLOB NOT NULL);
        CREATE INDEX embeddings_bundle ON embeddings(bundle_id);
        CREATE INDEX parts_category ON parts(category);
        """
    )


def _migration_2(conn: sqlite3.Connection) -> None:
    # the thumbnail's sha256 from the hub's signed package: a fetched thumbnail must match it
    conn.execute("ALTER TABLE images ADD COLUMN thumb_sha256 TEXT")


#: Ordered migrations. Append only; never edit a released one.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = ((1, _migration_1), (2, _migration_2))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _rows(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], what: str, key: Sequence[str]) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        unknown = set(row) - set(columns)
        if unknown:
            raise InputError(f"{what} row {i}: unknown column(s) {sorted(unknown)}; expected {list(columns)}")
        missing = [k for k in key if row.get(k) in (None, "")]
        if missing:
            raise InputError(f"{what} row {i}: missing {missing}")
        out.append(dict(row))
    return out


def _sql_value(v: Any) -> Any:
    """Like sqlite-utils: containers are stored as JSON text, everything else as given."""
    return json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else v


def _upsert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]], pk: Sequence[str]) -> None:
    """Insert or update ``rows`` with one ``executemany`` (sqlite-utils ``upsert_all`` semantics).

    Columns are the union of the rows' keys; a row lacking one of them writes NULL there, as
    ``upsert_all`` does. Column names were validated against the table's columns by ``_rows``.
    """
    cols = sorted({k for r in rows for k in r})
    non_pk = [c for c in cols if c not in pk]
    sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
           f"ON CONFLICT({', '.join(pk)}) " +
           (f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in non_pk)}" if non_pk else "DO NOTHING"))
    conn.executemany(sql, ([_sql_value(r.get(c)) for c in cols] for r in rows))


def fold_text(text: Any) -> str:
    """Text as search compares it: Unicode-normalised (NFKC) and case-folded, so "ölpumpe" finds "ÖLPUMPE" and
    "strasse" finds "Straße" (SQLite's own lower() and LIKE fold ASCII letters only). None is ''."""
    if text is None:
        return ""
    # casefold() turns the Turkish dotted capital I into "i" plus a combining dot: "istanbul" did not find
    # "İstanbul pompa" (an audit, 23rd session); the dot goes on both sides of the comparison
    return unicodedata.normalize("NFKC", str(text)).casefold().replace("\u0307", "")


class CatalogueDB:
    """The device catalogue: parts, inventory per site, images, embeddings, meta."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import sqlite_utils

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the driver opens no implicit transactions; we open them explicitly.
        try:
            conn, self.read_only = connect_wal(self.path, BUSY_TIMEOUT_MS / 1000)
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.create_function("pl_fold", 1, fold_text, deterministic=True)
        except sqlite3.OperationalError as exc:
            raise InputError(f"{self.path}: not a usable SQLite database ({exc})") from None
        except sqlite3.DatabaseError as exc:  # not a database, or corrupt
            raise DamagedDatabaseError(self.path, str(exc)) from None
        if str(mode).lower() != "wal" and not self.read_only:
            log.warning("%s: journal_mode is %s, not WAL", self.path, mode)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._tx_depth = 0
        self._migrate()

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> "CatalogueDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """The one write helper: ``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` on any error.

        Yields the sqlite_utils ``Database``. Nested calls join the outer transaction.
        """
        with self._lock:
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self.db
                finally:
                    self._tx_depth -= 1
                return
            if self.read_only:
                raise StorageError(f"{self.path}: storage full, the catalogue was opened read-only; free space on "
                                   "the tablet and restart the app")
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            try:
                yield self.db
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                commit_or_rollback(conn)
            finally:
                self._tx_depth = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A short read transaction: a consistent snapshot for several SELECTs."""
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:
                yield self.db
                return
            conn.execute("BEGIN")
            try:
                yield self.db
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _require_tx(self, what: str) -> None:
        if not self._tx_depth:
            raise RuntimeError(f"CatalogueDB.{what} must be called inside CatalogueDB.transaction()")

    def _migrate(self) -> None:
        conn = self.db.conn
        if self.read_only:  # opened on a full disk: usable only if no migration is due
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            if not {v for v, _fn in MIGRATIONS} <= done:
                raise StorageError(f"{self.path}: storage full and the catalogue needs a schema update; free "
                                   "space on the tablet and restart the app")
            return
        try:  # the common case, read without the write lock: a sync may be writing right now (WAL readers go on)
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            if {v for v, _fn in MIGRATIONS} <= done and max(done) <= SCHEMA_VERSION:
                return
        except sqlite3.OperationalError:
            pass  # a new database: no table yet
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, applied_at TEXT)")
                done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                newer = [v for v in done if v > SCHEMA_VERSION]
                if newer:
                    raise InputError(f"{self.path}: database schema version {max(newer)} is newer than this "
                                     f"app supports ({SCHEMA_VERSION}); update the app")
                for version, fn in MIGRATIONS:
                    if version not in done:
                        log.info("%s: applying migration %d", self.path, version)
                        fn(conn)
                        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, _now()))
                commit_or_rollback(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return int(self.db.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0)

    # --------------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: object) -> None:
        self._require_tx("set_meta")
        self.db.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(value)))

    def set_meta_if_free(self, key: str, value: object) -> bool:
        """Set a bookkeeping ``meta`` value only if no other process writes now (no wait for its lock); False if
        it did not. A reader (identify) wrote the index stamp through the waiting write path and failed with
        "database is busy" after 5 s while a sync held the write lock (an audit, 23rd session)."""
        if self.read_only:
            return False
        with self._lock:
            if self._tx_depth:
                self.set_meta(key, value)
                return True
            conn = self.db.conn
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                with self.transaction():
                    self.set_meta(key, value)
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                log.debug("meta %s not written now (%s)", key, exc)
                return False
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    @property
    def catalogue_version(self) -> int:
        return int(self.get_meta("catalogue_version", "0") or 0)

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when ANOTHER connection (a sync in another process) commits."""
        with self._lock:
            return int(self.db.conn.execute("PRAGMA data_version").fetchone()[0])

    @property
    def catalogue_epoch(self) -> int:
        """The hub's catalogue lineage the rows came from (0 until the hub was restored from a backup)."""
        return int(self.get_meta("catalogue_epoch", "0") or 0)

    # ------------------------------------------------------------------- writes
    def upsert_parts(self, rows: Iterable[Mapping[str, Any]]) -> int:
        self._require_tx("upsert_parts")
        rows = _rows(rows, PART_COLUMNS, "parts", ("part_number",))
        for r in rows:
            r.setdefault("version", 0)
            if "size_mm" not in r:  # not given: the stored size stays (a stock-only import wiped it, an audit)
                continue
            if r.get("size_mm") in ("", None):
                r["size_mm"] = None
            else:
                try:
                    r["size_mm"] = float(r["size_mm"])
                except (TypeError, ValueError):
                    raise InputError(f"part {r['part_number']}: size_mm {r['size_mm']!r} is not a number") from None
        if rows:
            _upsert(self.db.conn, "parts", rows, ("part_number",))
        return len(rows)

    def delete_parts(self, part_numbers: Iterable[str]) -> int:
        """Delete parts with their inventory, images and embeddings."""
        self._require_tx("delete_parts")
        conn = self.db.conn
        keys = [(str(pn),) for pn in dict.fromkeys(part_numbers)]
        conn.executemany("DELETE FROM embeddings WHERE image_id IN (SELECT image_id FROM images WHERE part_number=?)",
                         keys)
        conn.executemany("DELETE FROM images WHERE part_number = ?", keys)
        conn.executemany("DELETE FROM inventory WHERE part_number = ?", keys)
        before = conn.total_changes
        conn.executemany("DELETE FROM parts WHERE part_number = ?", keys)
        return conn.total_changes - before

    def upsert_inventory(self, rows: Iterable[Mapping[str, Any]]) -> int:
        self._require_tx("upsert_inventory")
        rows = _rows(rows, INVENTORY_COLUMNS, "inventory", ("part_number", "site"))
        for r in rows:
            if r.get("stock") not in (None, ""):
                try:
                    r["stock"] = int(r["stock"])
                except (TypeError, ValueError):
                    raise InputError(f"inventory {r['part_number']}@{r['site']}: stock {r['stock']!r} "
                                     "is not an integer") from None
            else:
                r["stock"] = None
        if rows:
            _upsert(self.db.conn, "inventory", rows, ("part_number", "site"))
        return len(rows)

    def upsert_images(self, rows: Iterable[Mapping[str, Any]]) -> int:
        self._require_tx("upsert_images")
        rows = _rows(rows, IMAGE_COLUMNS, "images", ("image_id", "part_number"))
        for r in rows:
            r.setdefault("version", 0)
        if rows:
            _upsert(self.db.conn, "images", rows, ("image_id",))
        return len(rows)

    def delete_images(self, image_ids: Iterable[str]) -> int:
        self._require_tx("delete_images")
        conn = self.db.conn
        keys = [(str(iid),) for iid in dict.fromkeys(image_ids)]
        conn.executemany("DELETE FROM embeddings WHERE image_id = ?", keys)
        before = conn.total_changes
        conn.executemany("DELETE FROM images WHERE image_id = ?", keys)
        return conn.total_changes - before

    def upsert_embeddings(self, image_ids: Sequence[str], vectors: np.ndarray, bundle_id: str) -> np.ndarray:
        """Store one float32 vector per image; return the new integer labels (never reused)."""
        self._require_tx("upsert_embeddings")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(image_ids):
            raise InputError(f"embeddings: expected ({len(image_ids)}, D) vectors, got shape {vectors.shape}")
        if not np.all(np.isfinite(vectors)):
            raise InputError("embeddings: vectors contain NaN or infinity")
        if not bundle_id:
            raise UsageError("embeddings need a bundle_id")
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        conn = self.db.conn
        seq = int(self.get_meta(LABEL_SEQ_KEY, None) or -1)
        row = conn.execute("SELECT max(label) FROM embeddings").fetchone()
        seq = max(seq, -1 if row[0] is None else int(row[0]))
        labels = np.arange(seq + 1, seq + 1 + len(image_ids), dtype=np.int64)
        dim = int(vectors.shape[1])
        conn.executemany(
            "INSERT INTO embeddings(image_id, label, bundle_id, dim, vector) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(image_id) DO UPDATE SET label=excluded.label, bundle_id=excluded.bundle_id, "
            "dim=excluded.dim, vector=excluded.vector",
            ((str(iid), int(lab), bundle_id, dim, vectors[i].tobytes()) for i, (iid, lab) in
             enumerate(zip(image_ids, labels))))
        if len(labels):
            self.set_meta(LABEL_SEQ_KEY, int(labels[-1]))
        return labels

    def delete_embeddings(self, bundle_id: str | None = None) -> int:
        """Drop stored embeddings (all, or those not of ``bundle_id`` when given)."""
        self._require_tx("delete_embeddings")
        if bundle_id is None:
            return self.db.conn.execute("DELETE FROM embeddings").rowcount
        return self.db.conn.execute("DELETE FROM embeddings WHERE bundle_id != ?", (bundle_id,)).rowcount

    # -------------------------------------------------------------------- reads
    def all_embeddings(self, bundle_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64 (N,), vectors float32 (N,D)) of every image's embedding for ``bundle_id``."""
        with self.read():
            rows = self.db.conn.execute(
                "SELECT label, dim, vector FROM embeddings WHERE bundle_id = ? ORDER BY label", (bundle_id,)
            ).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        dims = {r[1] for r in rows}
        if len(dims) != 1:
            raise InputError(f"{self.path}: embeddings of bundle {bundle_id} have mixed dimensions {sorted(dims)}")
        dim = dims.pop()
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return labels, vectors.astype(np.float32, copy=False)

    def embedding_labels(self, bundle_id: str) -> dict[int, tuple[str, str]]:
        """label -> (image_id, part_number) for ``bundle_id``."""
        rows = self.db.conn.execute(
            "SELECT e.label, e.image_id, i.part_number FROM embeddings e JOIN images i USING (image_id) "
            "WHERE e.bundle_id = ?", (bundle_id,)).fetchall()
        return {int(r[0]): (r[1], r[2]) for r in rows}

    def count(self, table: str) -> int:
        if table not in ("parts", "inventory", "images", "embeddings", "meta"):
            raise UsageError(f"unknown table {table!r}")
        return int(self.db.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def part(self, part_number: str) -> dict[str, Any] | None:
        """One part with ``inventory`` (per site) and ``images``; ``None`` when unknown."""
        with self.read():
            conn = self.db.conn
            cur = conn.execute("SELECT * FROM parts WHERE part_number = ?", (part_number,))
            row = cur.fetchone()
            if row is None:
                return None
            part = dict(zip([d[0] for d in cur.description], row))
            cur = conn.execute("SELECT site, stock, bin, as_of FROM inventory WHERE part_number = ? ORDER BY site",
                               (part_number,))
            part["inventory"] = [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
            cur = conn.execute("SELECT image_id, path, kind, version FROM images WHERE part_number = ? "
                               "ORDER BY image_id", (part_number,))
            part["images"] = [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
        return part

    def parts_by_number(self, part_numbers: Iterable[str], site: str | None = None) -> dict[str, dict[str, Any]]:
        """Many parts at once (one snapshot), each with its ``inventory`` rows (only ``site`` if given)."""
        pns = list(dict.fromkeys(part_numbers))
        out: dict[str, dict[str, Any]] = {}
        if not pns:
            return out
        marks = ",".join("?" * len(pns))
        with self.read():
            conn = self.db.conn
            cur = conn.execute(f"SELECT * FROM parts WHERE part_number IN ({marks})", pns)
            cols = [d[0] for d in cur.description]
            for r in cur.fetchall():
                d = dict(zip(cols, r))
                d["inventory"] = []
                out[d["part_number"]] = d
            sql = f"SELECT part_number, site, stock, bin, as_of FROM inventory WHERE part_number IN ({marks})"
            args: list[Any] = list(pns)
            if site is not None:
                sql += " AND site = ?"
                args.append(site)
            for pn, s, stock, bin_, as_of in conn.execute(sql + " ORDER BY site", args):
                if pn in out:
                    out[pn]["inventory"].append({"site": s, "stock": stock, "bin": bin_, "as_of": as_of})
        return out

    @staticmethod
    def _part_filter(text: str | None, category: str | None, in_stock: bool | None,
                     site: str | None) -> tuple[str, list[Any]]:
        """The WHERE clause (with its arguments) of :meth:`search_parts` and :meth:`count_parts`."""
        where: list[str] = []
        args: list[Any] = []
        if text and len(text) > MAX_FILTER_TEXT:  # SQLite refuses long LIKE patterns with a raw error
            raise UsageError(f"search text is {len(text)} characters; at most {MAX_FILTER_TEXT}")
        if text:  # % and _ are the engineer's text, not wildcards; case folded beyond ASCII (Ölpumpe, Ø12)
            esc = fold_text(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{esc}%"
            where.append("(pl_fold(p.part_number) LIKE ? ESCAPE '\\' OR pl_fold(p.name) LIKE ? ESCAPE '\\' "
                         "OR pl_fold(p.description) LIKE ? ESCAPE '\\')")
            args += [like, like, like]
        if category:
            where.append("p.category = ?")
            args.append(category)
        if in_stock is not None:
            sub = "SELECT 1 FROM inventory v WHERE v.part_number = p.part_number AND v.stock > 0"
            if site is not None:
                sub += " AND v.site = ?"
                args.append(site)
            where.append(("EXISTS" if in_stock else "NOT EXISTS") + f" ({sub})")
        return (" WHERE " + " AND ".join(where)) if where else "", args

    def search_parts(self, text: str | None = None, category: str | None = None, in_stock: bool | None = None,
                     site: str | None = None, limit: int | None = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Parts matching every given filter (text: case-insensitive substring of number/name/description), in
        part-number order, ``limit`` of them from ``offset`` (a page; :meth:`count_parts` gives the total).

        ``in_stock=True`` needs stock > 0 at ``site`` (or at any site when ``site`` is None);
        ``in_stock=False`` is the complement.
        """
        where, args = self._part_filter(text, category, in_stock, site)
        sql = "SELECT p.* FROM parts p" + where + " ORDER BY p.part_number"
        if limit is not None:
            if not 1 <= limit <= 10**9:
                raise UsageError(f"limit must be 1..{10**9}, got {limit}")
            sql += f" LIMIT {int(limit)}"
        if offset:
            if not 0 <= offset <= 10**9:
                raise UsageError(f"offset must be 0..{10**9}, got {offset}")
            sql += ("" if limit is not None else " LIMIT -1") + f" OFFSET {int(offset)}"
        with self.read():
            cur = self.db.conn.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def count_parts(self, text: str | None = None, category: str | None = None, in_stock: bool | None = None,
                    site: str | None = None) -> int:
        """How many parts :meth:`search_parts` would list with no limit."""
        where, args = self._part_filter(text, category, in_stock, site)
        with self.read():
            return int(self.db.conn.execute("SELECT COUNT(*) FROM parts p" + where, args).fetchone()[0])

    def sites(self) -> list[str]:
        """Sites that have stock rows in this catalogue."""
        with self.read():
            return [r[0] for r in self.db.conn.execute("SELECT DISTINCT site FROM inventory ORDER BY site")]

    def texts(self) -> list[str]:
        """Every name, category and bin the app shows (to choose a font that has their characters)."""
        with self.read():
            conn = self.db.conn
            return [r[0] for r in conn.execute("SELECT name FROM parts UNION SELECT category FROM parts UNION "
                                               "SELECT bin FROM inventory") if r[0]]

    def categories(self) -> list[str]:
        return [r[0] for r in self.db.conn.execute(
            "SELECT DISTINCT category FROM parts WHERE category IS NOT NULL ORDER BY category")]

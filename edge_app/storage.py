"""Free space on the device: checks before big writes, and one clear error when the disk is full.

A tablet whose storage is full must keep what it has (catalogue, model, photos, outbox) and say so in
words, not crash with ``OSError: [Errno 28]``. A sync must also leave room for the engineer's next
photos: it refuses to use the last :data:`RESERVE_BYTES` (the app cannot identify a part it cannot
store a photo of).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Iterator

from .errors import StorageError

log = logging.getLogger(__name__)

#: space a sync leaves free for photos: about 25 twelve-megapixel JPEGs
RESERVE_BYTES = 100 * 1024**2
#: the most storage (MB) a hub may ask a tablet to keep free for photos (enrolment, ``sync run --keep-free-mb``)
MAX_KEEP_FREE_MB = 100_000

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes free for this process on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def mb(n: float) -> str:
    """``n`` bytes in words a field engineer reads: '12.3 MB' ('512 kB' below a megabyte, '3.7 GB' from a
    gigabyte)."""
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.1f} GB"
    return f"{n / 1024**2:.1f} MB" if abs(n) >= 1024**2 else f"{n / 1024:.0f} kB"


def is_disk_full(exc: BaseException) -> bool:
    """Is ``exc`` a write that failed for lack of space (ENOSPC/EDQUOT, SQLite's "database or disk is full")?"""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == _SQLITE_FULL if code is not None else "database or disk is full" in str(exc)
    return False


def check_space(path: str | os.PathLike[str], need: int, what: str, *, reserve: int = RESERVE_BYTES,
                error: type[StorageError] = StorageError) -> None:
    """Raise ``error`` (nothing written yet) unless ``need`` bytes fit on ``path``'s file system with
    ``reserve`` bytes still free afterwards."""
    free = free_bytes(path)
    if free - int(need) < int(reserve):
        raise error(f"not enough storage for {what}: it needs about {mb(need)} and {mb(reserve)} must stay free "
                    f"for photos, but only {mb(free)} is free. Nothing was changed; free space on the tablet "
                    "(delete other apps' files; photos already uploaded are pruned) and try again")
    log.debug("%s: needs %s, %s free, %s reserve", what, mb(need), mb(free), mb(reserve))


@contextlib.contextmanager
def disk_full_is_storage_error(path: str | os.PathLike[str], what: str,
                               error: type[StorageError] = StorageError) -> Iterator[None]:
    """Turn a disk-full failure inside the block into ``error`` with the free space in words.

    Every write partlens makes is atomic or transactional, so the failed write left nothing behind; the
    message says so. Any other exception passes unchanged."""
    try:
        yield
    except StorageError as exc:  # e.g. a database opened read-only on a full disk: same words, caller's type
        if isinstance(exc, error):
            raise
        raise error(str(exc)) from exc
    except (OSError, sqlite3.Error) as exc:
        if not is_disk_full(exc):
            raise
        try:
            free = mb(free_bytes(path))
        except OSError:
            free = "unknown"
        # (a sync may fail after its catalogue commit, e.g. writing the index: the commit stays and the next
        # open or sync finishes the rest; "undone" alone was wrong there, an audit found)
        raise error(f"storage full while {what} ({free} free): nothing was lost (the failed write was undone; "
                    "anything already saved stays consistent and the next try finishes it). Free space on the "
                    "tablet and try again") from exc


def commit_or_rollback(conn: sqlite3.Connection) -> None:
    """COMMIT; if that fails (e.g. SQLITE_FULL while writing the WAL), ROLLBACK explicitly, as SQLite advises
    (it may or may not have rolled back by itself), so nothing half-done stays and the connection is usable."""
    try:
        conn.execute("COMMIT")
    except sqlite3.Error:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("ROLLBACK after a failed COMMIT failed too (%s)", exc)
        raise


#: below this much free space, a failed open of a WAL database is taken as the full-disk case below
OPEN_FULL_BYTES = 1024**2


def connect_wal(path: str | os.PathLike[str], timeout_s: float, *, read_only_fallback: bool = True,
                disk: str = "the tablet's storage") -> tuple[sqlite3.Connection, bool]:
    """Open the SQLite database ``path`` in WAL mode -> ``(connection, read_only)``.

    On a full disk SQLite cannot reopen a cleanly closed WAL database at all: it must create the
    32 kB ``-shm`` file first, and fails with "disk I/O error" (reads included). Then, with
    ``read_only_fallback`` and no WAL content pending (no ``-wal`` file, or an empty one: the database file
    is complete), the database is opened read-only and immutable, so the app can still show parts and
    identify; writes raise until it is reopened with space free. Otherwise a full disk is a
    :class:`StorageError` naming ``disk``; any other failure is raised unchanged."""
    path = Path(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        return conn, False
    except sqlite3.OperationalError as exc:
        conn.close()
        free = free_bytes(path.parent)
        if not path.is_file() or free >= OPEN_FULL_BYTES:
            raise
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:  # its last changes are only in the WAL: no safe read-only view
            raise StorageError(f"{path}: {disk} is full ({mb(free)} free) and the database has changes SQLite "
                               "must recover first; free space (nothing is lost: they are in its -wal file) and "
                               "start again") from exc
        if not read_only_fallback:
            raise StorageError(f"{path}: {disk} is full ({mb(free)} free), SQLite cannot open the database; free "
                               "space and start again (nothing was changed)") from exc
    log.warning("%s: %s is full (%s free), opening the database read-only until space is freed", path, disk,
                mb(free))
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True, isolation_level=None,
                           check_same_thread=False)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn, True

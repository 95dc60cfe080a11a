"""One sync or enrolment of a tablet's data folder at a time, across processes (the app and the nightly sync).

``fcntl.flock`` on ``<data_dir>/.sync.lock``: released by the kernel when the holder exits or is killed, so a
crashed sync never leaves the folder locked. Where ``fcntl`` does not exist (Windows desktops) there is no lock.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from edge_app.errors import SyncError

log = logging.getLogger(__name__)

LOCK_NAME = ".sync.lock"


class SyncBusyError(SyncError):
    """Another sync (or an enrolment) of this tablet is running."""


@contextlib.contextmanager
def device_lock(root: str | os.PathLike[str], what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the tablet's sync lock for ``what``; wait up to ``wait_s`` seconds for it, then :class:`SyncBusyError`."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/Android
        yield
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SyncBusyError(f"{what}: another sync of this tablet is running (the nightly sync or the "
                                        "app's); try again when it has finished") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def sync_running(root: str | os.PathLike[str]) -> bool:
    """True while a sync or an enrolment holds this tablet's lock (any process, this one included).

    A probe: it takes the lock for an instant when it is free, so call it for status, not before a sync
    (:func:`device_lock` is what serialises them).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/Android
        return False
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False  # no sync ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's lock
    return False

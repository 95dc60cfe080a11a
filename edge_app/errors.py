"""Domain errors. The CLI turns them into a one-line message and an exit code."""
from __future__ import annotations

import os
from pathlib import Path


class PartlensError(Exception):
    """Base class for every error a user can cause and fix."""

    exit_code = 1


class UsageError(PartlensError):
    """A bad option or argument."""

    exit_code = 2


class InputError(PartlensError):
    """A missing path, an empty folder, or a bad input file."""

    exit_code = 3


class DamagedDatabaseError(InputError):
    """A SQLite file that is not a database or is corrupt (not one that is merely locked or on a full disk)."""

    def __init__(self, path: "os.PathLike[str] | str", detail: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: damaged database ({detail})")


class ImageError(InputError):
    """An image that cannot be decoded or is unsafe to decode."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IntegrityError(PartlensError):
    """A bad signature, a wrong hash, an unknown key or schema, a truncated file."""

    exit_code = 4


class GateError(PartlensError):
    """An export failed its parity gate."""

    exit_code = 5


class SyncError(PartlensError):
    """A sync step failed; the device stays on its previous state."""

    exit_code = 6


class BlobDamagedError(SyncError):
    """A photo's bytes reached the hub damaged (their sha256 did not match the record's) and the hub discarded
    them: a fault on the way, not of the photo, so the tablet sends it again (it is not refused for good)."""


class AuthError(SyncError):
    """The hub refused the token."""

    exit_code = 7


class StorageError(PartlensError):
    """The device's storage is full, or a write would leave no room for the engineer's photos.

    Raised before anything is written, or after a failed write was undone: nothing is lost."""

    exit_code = 8


class SyncStorageError(StorageError, SyncError):
    """A sync refused or stopped for lack of storage; the device stays on its previous state.

    Both a :class:`StorageError` (exit code 8) and a :class:`SyncError` (what sync callers handle)."""


class TrainingError(PartlensError):
    """Training cannot go on: the loss or the weights became NaN or infinite. Nothing bad was saved: the
    run folder keeps its last good checkpoint."""

    exit_code = 9


class BusyError(PartlensError):
    """Another process holds the database for writing (e.g. a sync applying a large package); nothing changed:
    try again."""

    exit_code = 10

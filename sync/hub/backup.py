"""``partlens hub backup OUT``: a consistent copy of a hub folder, taken while the hub serves.

The database is copied with SQLite's online backup API (a consistent snapshot even while devices sync
and upload), then the files it refers to: catalogue images and thumbnails (content-addressed, only ever
added), bundles, finished upload photos, the keyring, the token secret and the TLS certificate and key
(secrets keep mode 0600). Cached packages are left out (the hub rebuilds them on demand). The signing key
lives outside the hub folder (``hub.json`` names it) and is NOT copied: back it up on its own.
``backup.json`` is written last: a folder without it is an interrupted backup, not a usable one.

To restore, put the backup folder where the hub folder was (or point ``--hub`` at it). Tablets keep their
tokens and pins. A tablet that synced past the backup's catalogue version refuses to go back and must be
enrolled again (``hub devices`` and the backup's ``backup.json`` tell which).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from edge_app.atomic import atomic_write_json
from edge_app.errors import UsageError

from .hub import Hub

log = logging.getLogger(__name__)

FILES = ("hub.json", "keyring.json")
SECRETS = ("secret.bin",)
TREES = ("images", "thumbs", "bundles", "uploads", "tls")


def backup_hub(hub: Hub, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy ``hub`` into the new or empty folder ``out_dir``; returns what was copied (also in backup.json)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty folder")
    if out.resolve().is_relative_to(hub.root.resolve()):
        raise UsageError(f"{out} is inside the hub folder {hub.root}; back up to another place (ideally a disk)")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "hub.db.partial"
    src = sqlite3.connect(str(hub.root / "hub.db"), timeout=30)
    dst = sqlite3.connect(str(partial))
    try:
        src.backup(dst)  # consistent while the hub writes (WAL readers see one snapshot)
        dst.execute("PRAGMA journal_mode=DELETE")
        ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
        version = int(dst.execute("SELECT value FROM meta WHERE key='catalogue_version'").fetchone()[0])
    finally:
        dst.close()
        src.close()
    if ok != "ok":
        raise UsageError(f"the database copy fails SQLite's integrity check ({ok}); nothing was kept")
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, out / "hub.db")
    copied = {"files": 0, "bytes": 0}
    for name in (*FILES, *SECRETS):
        if (hub.root / name).is_file():
            shutil.copy2(hub.root / name, out / name)
            if name in SECRETS:
                os.chmod(out / name, 0o600)
            copied["files"] += 1
            copied["bytes"] += (out / name).stat().st_size
    for tree in TREES:
        for path in sorted((hub.root / tree).rglob("*")) if (hub.root / tree).is_dir() else []:
            if not path.is_file() or path.name.endswith((".part", ".partial", ".tmp")) or path.name.startswith("."):
                continue  # an upload still arriving, or a write in progress
            dest = out / path.relative_to(hub.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            copied["files"] += 1
            copied["bytes"] += path.stat().st_size
    if (out / "tls" / "key.pem").is_file():
        os.chmod(out / "tls" / "key.pem", 0o600)
    info = {"hub": str(hub.root), "taken_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "catalogue_version": version, **copied,
            "signing_key_not_included": hub.config.get("key_path"),
            "restore": "put this folder where the hub folder was; tablets that synced past catalogue version "
                       f"{version} must be enrolled again"}
    atomic_write_json(out / "backup.json", info)
    log.info("hub %s backed up to %s: catalogue version %d, %d files, %.1f MB; the signing key %s is not "
             "included", hub.root, out, version, copied["files"], copied["bytes"] / 1e6, hub.config.get("key_path"))
    return info

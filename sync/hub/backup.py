"""``partlens hub backup OUT``: a consistent copy of a hub folder, taken while the hub serves.

The database is copied with SQLite's online backup API (a consistent snapshot even while devices sync
and upload), then the files it refers to: catalogue images and thumbnails (content-addressed, only ever
added), bundles, finished upload photos, the keyring, the token secret and the TLS certificate and key
(secrets keep mode 0600). Cached packages are left out (the hub rebuilds them on demand). The signing key
lives outside the hub folder (``hub.json`` names it) and is NOT copied: back it up on its own.
``backup.json`` is written last: a folder without it is an interrupted backup, not a usable one.

``partlens hub restore BACKUP HUB_DIR`` makes a hub folder from a backup (checked first: complete, database
intact, the catalogue images present with their recorded sha256; thumbnails missing or changed are remade
from those images) and starts a new catalogue *lineage* (``catalogue_epoch``): tablets keep
their tokens and pins, and at their next sync each gets a full snapshot of the restored catalogue, even one
that had synced past the backup (its version numbers mean other contents now), and sends again what it
uploaded since the backup was taken (the restored hub never received it). Nothing to do on the tablets;
only those enrolled after the backup must be enrolled again.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_app.atomic import atomic_write_json, fsync_dir
from edge_app.errors import InputError, UsageError
from edge_app.signing import SigningKey

from ..package import sha256_file
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
    try:
        os.chmod(out, 0o700)  # a copy of the hub folder: as private as the hub folder
    except OSError as exc:  # a file system without modes (a FAT backup disk): said, not fatal
        log.warning("could not make %s private (%s): keep the backup disk where only the admin reaches it", out, exc)
    partial = out / "hub.db.partial"
    # a change recorded from now on may not be in the copy: it stays listed (below)
    snapshot_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
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
            _copy(hub.root / name, out / name, secret=name in SECRETS)
            copied["files"] += 1
            copied["bytes"] += (out / name).stat().st_size
    for tree in TREES:
        for path in sorted((hub.root / tree).rglob("*")) if (hub.root / tree).is_dir() else []:
            if not path.is_file() or path.name.endswith((".part", ".partial", ".tmp")) or path.name.startswith("."):
                continue  # an upload still arriving, or a write in progress
            dest = out / path.relative_to(hub.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _copy(path, dest, secret=path.name == "key.pem")  # the TLS keys (current and next)
            copied["files"] += 1
            copied["bytes"] += path.stat().st_size
    info = {"hub": str(hub.root), "taken_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "catalogue_version": version, **copied,
            "signing_key_not_included": hub.config.get("key_path"),
            "restore": f"partlens hub restore {out} --hub NEW_HUB_DIR (tablets follow by themselves)"}
    atomic_write_json(out / "backup.json", info)
    from .hub import CHANGES_SINCE_BACKUP, LAST_BACKUP_AT

    hub.store.put_meta(LAST_BACKUP_AT, info["taken_at"])  # (in the live hub: what a restore would undo starts now)
    hub.store.put_meta(CHANGES_SINCE_BACKUP, [c for c in hub.store.get_meta(CHANGES_SINCE_BACKUP, []) or []
                                              if str(c.get("at", "")) >= snapshot_at])
    log.info("hub %s backed up to %s: catalogue version %d, %d files, %.1f MB; the signing key %s is not "
             "included", hub.root, out, version, copied["files"], copied["bytes"] / 1e6, hub.config.get("key_path"))
    return info


def _read_object(path: Path, message: str) -> dict[str, Any]:
    """A backup's JSON object file; else InputError ``message`` + the reason + ``)``."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{message}: {exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{message}: {path.name} is not an object)")
    return doc


def _check_images(src: Path, images: list[tuple[str, str | None]]) -> None:
    """Every catalogue image the backup's database names is in the backup with its recorded sha256: a restored
    hub missing them fails at the next set-bundle or sync, when the backup may be gone."""
    bad = []
    for rel, digest in images:
        path = src / "images" / rel
        if not path.is_file():
            bad.append(f"{rel} missing")
        elif digest and sha256_file(path) != digest:
            bad.append(f"{rel} changed")
        if len(bad) >= 5:
            break
    if bad:
        raise InputError(f"{src}: not a usable hub backup: catalogue image(s) {', '.join(bad)}; use another backup")


def restore_hub(backup_dir: str | os.PathLike[str], target: str | os.PathLike[str], *,
                key_path: str | os.PathLike[str] | None = None, above_lineage: int = 0) -> dict[str, Any]:
    """Make the hub folder ``target`` (new, or an empty folder) from the backup ``backup_dir``.

    Checked before anything is written: ``backup.json`` (a complete backup), SQLite's integrity check, and the
    package-signing key (``key_path``, else the one ``hub.json`` names) matching the hub's key id. The copy is
    made beside ``target`` and renamed into place, so an interrupted restore leaves no half hub. The restored
    database starts a new catalogue lineage (see the module docstring), above ``above_lineage`` and above those
    earlier restores of this backup started (noted in the backup folder: a second restore under a clock set
    back got an OLDER lineage than the first, and every tablet that had followed the first refused the hub)."""
    src, dst = Path(backup_dir), Path(target)
    info = _read_object(src / "backup.json", f"{src}: not a complete hub backup (backup.json missing or unreadable")
    if not (src / "hub.db").is_file() or not (src / "hub.json").is_file():
        raise InputError(f"{src}: not a complete hub backup (hub.db or hub.json missing)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"{dst} exists and is not an empty folder; restore into a new folder")
    if dst.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dst.resolve()):
        raise UsageError(f"{dst} and the backup {src} must not be inside each other")
    config = _read_object(src / "hub.json", f"{src}: not a usable hub backup (hub.json unreadable")
    key_file = Path(key_path or config.get("key_path") or "")
    try:
        key = SigningKey.load(key_file)
    except Exception as exc:  # noqa: BLE001 - any failure to read the key means the same thing here
        raise UsageError(f"the package-signing key {key_file} cannot be read ({exc}); backups do not hold it: "
                         "copy it back, or pass --key PATH") from None
    if config.get("key_id") and key.key_id != config["key_id"]:
        raise UsageError(f"{key_file} is key {key.key_id}, the hub signs with {config['key_id']}; pass the right "
                         "--key (tablets trust only that one)")
    check = sqlite3.connect(f"{(src / 'hub.db').absolute().as_uri()}?mode=ro", uri=True)
    try:
        ok = check.execute("PRAGMA integrity_check").fetchone()[0]
        images = check.execute("SELECT path, sha256 FROM images").fetchall() if ok == "ok" else []
    except sqlite3.DatabaseError as exc:  # not a database at all, or no images table
        raise InputError(f"{src / 'hub.db'}: not a usable hub database ({exc}); use another backup") from None
    finally:
        check.close()
    if ok != "ok":
        raise InputError(f"{src / 'hub.db'}: fails SQLite's integrity check ({ok}); use another backup")
    _check_images(src, images)
    work = dst.parent / f".{dst.name}.restoring"
    if work.exists():
        shutil.rmtree(work)  # an interrupted restore of ours (the name is only ever made here)
    try:
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("backup.json"))
        for tree in TREES:  # a backup holds files, not empty folders; the hub expects its folders
            (work / tree).mkdir(exist_ok=True)
        from .store import SqliteHubStore

        restored = SqliteHubStore(work / "hub.db")  # a backup of an older hub: its schema migrated before it is read
        try:  # the restored hub IS that backup: nothing of it is undone by restoring it again
            from .hub import CHANGES_SINCE_BACKUP, LAST_BACKUP_AT

            restored.put_meta(LAST_BACKUP_AT, info.get("taken_at"))
            restored.put_meta(CHANGES_SINCE_BACKUP, [])
        finally:
            restored.close()
        remade = _repair_thumbs(work)
        epoch = _start_lineage(work / "hub.db", str(info.get("taken_at") or ""),
                               max([int(above_lineage), *_restored_lineages(src)]))
        if key_path is not None:
            config["key_path"] = str(key_file.resolve())
            atomic_write_json(work / "hub.json", config)
        for secret in (work / "secret.bin", work / "tls" / "key.pem"):
            if secret.is_file():
                os.chmod(secret, 0o600)
        if hasattr(os, "sync"):
            os.sync()
    except BaseException:  # e.g. a full disk: no half copy left behind (a killed process: the next restore)
        shutil.rmtree(work, ignore_errors=True)
        raise
    if dst.exists():
        dst.rmdir()
    os.replace(work, dst)
    fsync_dir(dst.parent)
    _note_restore(src, epoch)
    out = {"hub": str(dst), "from_backup": str(src), "backup_taken_at": info.get("taken_at"),
           "catalogue_version": info.get("catalogue_version"), "catalogue_epoch": epoch,
           "signing_key": str(key_file), "thumbnails_remade": remade}
    log.warning("hub restored to %s from the backup of %s (catalogue version %s, lineage %d): tablets get a full "
                "snapshot and send again what they uploaded since, at their next sync; tablets enrolled after "
                "the backup must be enrolled again. Undone with it: a device revoked after the backup is accepted "
                "again (`hub revoke-device` it again now), a key trusted or untrusted after it (repeat that), and a "
                "certificate activated after it (tablets that followed it no longer trust the restored one: they "
                "must be enrolled again). The old hub's `hub status` listed these as changes_since_backup",
                dst, info.get("taken_at"), info.get("catalogue_version"), epoch)
    return out


def _copy(src: Path, dest: Path, *, secret: bool) -> None:
    """Copy one file into the backup; a secret (``secret.bin``, TLS keys) is private from its first byte (copied
    and then restricted, it was readable by others meanwhile, and left so by a backup killed in between)."""
    if secret:
        from edge_app.atomic import PRIVATE, atomic_write_bytes

        atomic_write_bytes(dest, src.read_bytes(), mode=PRIVATE, overwrite=True)
    else:
        shutil.copy2(src, dest)


def _repair_thumbs(work: Path) -> int:
    """Remake the thumbnails the backup lacks or holds changed (a thumbnail is only as good as the backup disk)
    from their catalogue images, checked just before; their new sha256 goes into the restored database, whose
    new lineage sends every tablet a full snapshot with it. Returns how many were remade."""
    from edge_app.atomic import atomic_write_bytes
    from edge_app.imageio import load_image

    from .hub import THUMB_SIZE, thumbnail_jpeg

    conn = sqlite3.connect(str(work / "hub.db"), isolation_level=None)
    try:
        rows = conn.execute("SELECT image_id, path, thumb_sha256 FROM images").fetchall()
        fixes = []
        for image_id, rel, digest in rows:
            thumb = work / "thumbs" / f"{image_id}.jpg"
            if thumb.is_file() and (not digest or sha256_file(thumb) == digest):
                continue
            data = thumbnail_jpeg(load_image(work / "images" / rel, draft_size=(2 * THUMB_SIZE, 2 * THUMB_SIZE)))
            atomic_write_bytes(thumb, data, overwrite=True)
            fixes.append((hashlib.sha256(data).hexdigest(), image_id))
        if fixes:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE images SET thumb_sha256=? WHERE image_id=?", fixes)
            conn.execute("COMMIT")
            log.warning("restore: %d thumbnail(s) were missing or changed in the backup; remade from their "
                        "catalogue images", len(fixes))
    finally:
        conn.close()
    return len(fixes)


def _start_lineage(db_path: Path, taken_at: str | None, above: int = 0) -> int:
    """Give the database a new catalogue lineage, newer than any it had and than ``above``, and record which
    backup it came from (``taken_at``; None: a lineage started on a live hub); returns the new epoch. The hub
    clock's seconds make lineages of different restores differ; ``above`` is what keeps them ordered when that
    clock was wrong."""
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT value FROM meta WHERE key='catalogue_epoch'").fetchone()
        epoch = max(int(json.loads(row[0])) + 1 if row else 1, int(time.time()), int(above) + 1)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        values = [("catalogue_epoch", epoch), ("restored_at" if taken_at is not None else "lineage_started_at", now)]
        if taken_at is not None:
            values.append(("restored_backup_taken_at", taken_at))
        for key, value in values:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return epoch


#: in a backup folder: the lineages restores of it started (a second restore starts a newer one, whatever the clock)
RESTORES_FILE = "restores.json"


def _restored_lineages(src: Path) -> list[int]:
    try:
        doc = json.loads((src / RESTORES_FILE).read_text())
        return [int(e) for e in doc.get("epochs", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s is unreadable (%s); lineages of earlier restores of this backup unknown", src / RESTORES_FILE,
                    exc)
        return []


def _note_restore(src: Path, epoch: int) -> None:
    """Remember in the backup folder the lineage a restore of it started; a read-only backup is told about."""
    try:
        atomic_write_json(src / RESTORES_FILE, {"epochs": sorted({*_restored_lineages(src), epoch})})
    except OSError as exc:
        log.warning("could not note lineage %d in the backup folder (%s): if this backup is restored again, pass "
                    "--above-lineage %d", epoch, exc, epoch)


def new_lineage(hub: Hub, above: int) -> dict[str, Any]:
    """Start a catalogue lineage above ``above`` on a live hub: tablets on a lineage this hub no longer knows (a
    hub restored twice, the first time under a clock set ahead) refuse its catalogue as older than theirs; after
    this every tablet gets a full snapshot at its next sync and follows it again."""
    before = hub.store.epoch()
    if above < before:
        raise UsageError(f"the hub's lineage is {before} already, above {above}; nothing to do")
    epoch = _start_lineage(hub.root / "hub.db", None, above)
    hub.needs_backup(f"catalogue lineage {epoch} started")
    log.warning("hub catalogue lineage is now %d (was %d): every tablet gets a full snapshot at its next sync",
                epoch, before)
    return {"catalogue_epoch": epoch, "previous_epoch": before}

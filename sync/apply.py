"""Device-side apply: packages into the catalogue DB, bundles beside the active one.

Crash safety rests on one commit point, the SQLite transaction of :func:`apply_package`: rows,
deletions, embeddings and the meta keys ``catalogue_version``, ``bundle_id`` and
``index_stamp`` change together or not at all (``synchronous=FULL``). Everything else is
derived and repaired on open by :func:`reconcile`:

- ``active.json`` (the bundle pointer, replaced atomically) is switched right after the commit;
  if the process dies in between, :func:`reconcile` rolls the pointer forward to the bundle the
  database names (that bundle was fully installed, verified and smoke-tested before the commit);
- the hnswlib index file is a cache stamped with (bundle id, catalogue version); the runtime's
  ``VectorIndex.open`` brings it up to date incrementally (or rebuilds it) from the database.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_app.atomic import atomic_write_json
from edge_app.errors import InputError, IntegrityError, SyncError

from .package import Package

log = logging.getLogger(__name__)

ACTIVE_FILE = "active.json"
DEVICE_PART_FIELDS = ("part_number", "name", "category", "manufacturer", "description", "size_mm",
                      "look_alike_group")

#: Test hook: ``PARTLENS_SYNC_KILL_AT=<point>`` SIGKILLs the process at that named point.
KILL_ENV = "PARTLENS_SYNC_KILL_AT"


def kill_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if ``$PARTLENS_SYNC_KILL_AT`` names this point (fault-injection tests)."""
    if os.environ.get(KILL_ENV) == name:
        import signal

        log.warning("fault injection: SIGKILL at %s", name)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class DevicePaths:
    """Files of a device data folder."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "catalogue.db"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.db"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def active(self) -> Path:
        return self.root / ACTIVE_FILE

    @property
    def device(self) -> Path:
        return self.root / "device.json"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring.json"

    @property
    def thumbs(self) -> Path:
        return self.root / "thumbs"


def read_active(paths: DevicePaths) -> dict[str, Any] | None:
    """The active bundle pointer ``{"bundle_id", "version", ...}``, or None."""
    if not paths.active.is_file():
        return None
    from edge_app.bundle import check_file_name

    try:
        doc = json.loads(paths.active.read_text())
    except json.JSONDecodeError as exc:  # cannot happen with atomic writes; say so loudly if it does
        raise IntegrityError(f"{paths.active}: corrupt bundle pointer ({exc})") from None
    if not isinstance(doc, dict):  # the app's reader checks the same (services.read_active_pointer)
        raise IntegrityError(f"{paths.active}: corrupt bundle pointer (a JSON {type(doc).__name__}, not an object)")
    check_file_name(doc.get("bundle_id"), f"{paths.active}: bundle_id")
    return doc


def write_active(paths: DevicePaths, bundle_id: str, version: int) -> None:
    """Switch the active bundle pointer atomically (temp file, fsync, rename)."""
    atomic_write_json(paths.active, {"bundle_id": bundle_id, "version": int(version),
                                     "activated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    log.info("active bundle is now %s", bundle_id)


def reconcile(paths: DevicePaths, db: Any) -> str | None:
    """Make the bundle pointer agree with the database (the commit point); return the active bundle id."""
    bundle_id = db.get_meta("bundle_id")
    active = read_active(paths)
    if bundle_id and (active is None or active.get("bundle_id") != bundle_id):
        bdir = paths.bundles / bundle_id
        if not (bdir / "manifest.json").is_file():
            raise SyncError(f"{paths.db} names bundle {bundle_id} but {bdir} is missing; sync again")
        version = json.loads((bdir / "manifest.json").read_text())["version"]
        log.warning("rolling the bundle pointer forward to %s (an interrupted sync committed it)", bundle_id)
        write_active(paths, bundle_id, version)
    return bundle_id


def apply_package(db: Any, pkg: Package, *, site: str, bundle_id: str | None,
                  before_commit: Callable[[], None] | None = None, replace: bool = False,
                  hub_id: str | None = None, embedding_dim: int | None = None) -> dict[str, int]:
    """Apply a verified package in ONE transaction; return counts.

    A delta must start at the device's catalogue version; a snapshot replaces the catalogue. A snapshot of
    a newer catalogue lineage (``pkg.epoch``: the hub was restored from a backup) replaces it even at a lower
    version; a package of an older lineage is refused. ``replace``: the device's catalogue came from another hub
    or site; a snapshot replaces it whatever the versions. ``hub_id`` is recorded as the catalogue's hub.
    ``bundle_id`` is the bundle the package's embeddings belong to (it becomes the device's);
    ``embedding_dim``, that bundle's: vectors of another size, or not finite, are refused before anything is
    written (committed, they would break every later search and sync).
    """
    from edge_app.runtime.index import IndexStamp

    if pkg.site != site:
        raise IntegrityError(f"package {pkg.name} is for site {pkg.site!r}, this device is {site!r}")
    if pkg.bundle_id != bundle_id:
        raise IntegrityError(f"package {pkg.name} embeddings are for bundle {pkg.bundle_id}, expected {bundle_id}")
    vecs = np.asarray(pkg.embeddings, dtype=np.float32)
    _check_structure(pkg)
    if len(pkg.embedding_ids):
        if embedding_dim is not None and (vecs.ndim != 2 or vecs.shape[1] != embedding_dim):
            raise IntegrityError(f"package {pkg.name}: image vectors of shape {vecs.shape}, the bundle's model makes "
                                 f"{embedding_dim} values; refused, nothing changed")
        if not np.isfinite(vecs).all():
            raise IntegrityError(f"package {pkg.name}: image vectors hold NaN or infinite values; refused, nothing "
                                 "changed")
    stats = {"parts": len(pkg.parts), "inventory": len(pkg.inventory), "images": len(pkg.images),
             "embeddings": len(pkg.embedding_ids), "deleted_parts": len(pkg.deleted_parts),
             "deleted_images": len(pkg.deleted_images)}
    with db.transaction() as sdb:
        current = int(db.get_meta("catalogue_version", "0") or 0)
        epoch = stored_epoch = db.catalogue_epoch
        if replace:
            if not pkg.full:
                raise SyncError(f"package {pkg.name} is a delta; replacing another hub's catalogue needs a snapshot")
            current, epoch = 0, pkg.epoch
        if pkg.epoch < epoch:
            raise SyncError(f"package {pkg.name} is of the hub's catalogue lineage {pkg.epoch}, older than this "
                            f"device's {epoch} (a hub restored from an older backup?); refused")
        if pkg.epoch > epoch and not pkg.full:
            raise SyncError(f"package {pkg.name} starts a new catalogue lineage but is not a snapshot; refused")
        if pkg.epoch == epoch and (pkg.to_version < current or (pkg.to_version == current and not pkg.full)):
            raise SyncError(f"package {pkg.name} would move the catalogue from version {current} back to "
                            f"{pkg.to_version}; refused (the hub's versions order everything)")
        if not pkg.full and pkg.from_version != current:
            raise SyncError(f"delta {pkg.name} starts at version {pkg.from_version}, the device is at {current}")
        conn = sdb.conn
        kill_point("apply:begin")
        if pkg.full:
            for table in ("embeddings", "images", "inventory", "parts"):
                conn.execute(f"DELETE FROM {table}")
        else:
            if pkg.deleted_images:
                db.delete_images(pkg.deleted_images)
            if pkg.deleted_parts:
                db.delete_parts(pkg.deleted_parts)
            for pn in pkg.deleted_inventory:
                conn.execute("DELETE FROM inventory WHERE part_number=? AND site=?", (pn, site))
        db.upsert_parts([{**{k: p.get(k) for k in DEVICE_PART_FIELDS}, "version": pkg.to_version}
                         for p in pkg.parts])
        db.upsert_inventory([{k: r.get(k) for k in ("part_number", "site", "stock", "bin", "as_of")}
                             for r in pkg.inventory])
        db.upsert_images([{"image_id": r["image_id"], "part_number": r["part_number"],
                           "path": f"thumbs/{r['image_id']}.jpg", "kind": r.get("kind"), "version": pkg.to_version,
                           "thumb_sha256": r.get("thumb_sha256")}
                          for r in pkg.images])
        kill_point("apply:rows")
        if bundle_id is not None:
            if pkg.full or db.get_meta("bundle_id") != bundle_id:
                db.delete_embeddings(bundle_id)  # vectors of any other model are meaningless now
            if len(pkg.embedding_ids):
                db.upsert_embeddings(pkg.embedding_ids, vecs, bundle_id)
            db.set_meta("bundle_id", bundle_id)
            db.set_meta("index_stamp", str(IndexStamp(bundle_id, pkg.to_version)))
        kill_point("apply:embeddings")
        _refuse_orphans(conn, pkg.name, current)
        db.set_meta("catalogue_version", pkg.to_version)
        if pkg.epoch != stored_epoch:
            db.set_meta("catalogue_epoch", pkg.epoch)
        if pkg.epoch != epoch:  # the hub was restored from a backup: its versions count from there now
            log.warning("catalogue replaced by the restored hub's (lineage %d -> %d, version %d -> %d)",
                        epoch, pkg.epoch, current, pkg.to_version)
        db.set_meta("site", site)
        db.set_meta("managed_by_hub", "1")  # local `catalogue import` refuses from now on (versions are the hub's)
        if hub_id:
            db.set_meta("hub_id", hub_id)
        if pkg.hub_time:
            db.set_meta("hub_time", pkg.hub_time)
        if before_commit is not None:
            before_commit()
    kill_point("apply:committed")
    log.info("catalogue %d -> %d (%s)", current, pkg.to_version, stats)
    return stats


#: rows that must name something the catalogue holds once a package is applied
_ORPHANS = (
    ("image row(s) name a part", "SELECT COUNT(*), MIN(image_id) FROM images "
                                 "WHERE part_number NOT IN (SELECT part_number FROM parts)"),
    ("stock row(s) name a part", "SELECT COUNT(*), MIN(part_number) FROM inventory "
                                 "WHERE part_number NOT IN (SELECT part_number FROM parts)"),
    ("vector(s) belong to an image", "SELECT COUNT(*), MIN(image_id) FROM embeddings "
                                     "WHERE image_id NOT IN (SELECT image_id FROM images)"),
)


def _refuse_orphans(conn: Any, name: str, current: int) -> None:
    """A package (signed, so a hub fault) that leaves rows pointing at nothing is refused inside the
    transaction: an image of no part would be found by identification and shown without a part."""
    for what, sql in _ORPHANS:
        n, example = conn.execute(sql).fetchone()
        if n:
            raise SyncError(f"package {name}: {n} {what} the catalogue does not have (e.g. {example}); refused, "
                            f"the catalogue stays at version {current} (a fault at the hub: tell its admin)")


def space_to_apply(paths: DevicePaths, pkg: Package) -> int:
    """Bytes applying ``pkg`` may take on disk at its peak (an upper estimate, checked against measured
    growth in ``tests/sync/test_storage.py``): its rows and float32 vectors in SQLite twice (the database
    pages and the WAL that holds them until the checkpoint), and the index cache written anew beside the
    old file (a delta: the old index plus the new vectors; a snapshot: the new vectors), graph links included."""
    emb = np.asarray(pkg.embeddings)
    n, dim = (int(emb.shape[0]), int(emb.shape[1])) if emb.ndim == 2 else (0, 0)
    rows = len(json.dumps([pkg.parts, pkg.inventory, pkg.images], default=str))
    db = 2 * (2 * rows + n * (dim * 4 + 128))  # row text, its indexes, and ~128 B of keys per vector
    index_now = 0 if pkg.full else sum(f.stat().st_size for f in paths.root.glob("index-*") if f.is_file())
    return db + index_now + n * (dim * 4 + 256) + 64 * 1024


def drop_index_files(paths: DevicePaths) -> int:
    """Delete every index cache file (rebuilt from SQLite when next opened); returns how many. Done before
    a snapshot of a new catalogue lineage: its labels and versions may coincide with the old ones while
    meaning other vectors, so no cached index may survive it."""
    n = 0
    for f in paths.root.glob("index-*"):
        if f.is_file():
            f.unlink()
            n += 1
    return n


def update_index(paths: DevicePaths, db: Any, bundle_id: str, params: dict[str, Any] | None = None, *,
                 index: Any | None = None, defer: bool = False) -> Any | None:
    """Bring the index cache for ``bundle_id`` up to date (incremental add/mark_deleted, or rebuild).

    ``index``: the live :class:`~edge_app.runtime.index.VectorIndex` this process already holds
    (updated in place, no reload). ``defer``: new vectors are searchable at once but enter the
    graph and the file only when the caller runs ``index.persist()`` (see ``VectorIndex.open``).
    """
    from edge_app.runtime.index import VectorIndex

    if not db.db.conn.execute("SELECT 1 FROM embeddings WHERE bundle_id=? LIMIT 1", (bundle_id,)).fetchone():
        return None  # nothing to index yet (a catalogue without images)
    return VectorIndex.open(db, bundle_id, params, index_dir=paths.root, live=index, defer=defer)


def prune_bundles(paths: DevicePaths, keep: set[str]) -> list[str]:
    """Remove installed bundles not in ``keep`` (the active one and the previous one)."""
    from edge_app.runtime.index import index_path

    removed = []
    if not paths.bundles.is_dir():
        return removed
    for d in paths.bundles.iterdir():
        if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    # their index caches too (each the size of a full index; 19 were left beside 2 bundles after 18 switches)
    kept = {index_path(paths.db, b, engine=e).name for b in keep for e in ("hnswlib", "numpy")}
    for f in paths.root.glob("index-*"):
        base = f.name[:-len(".json")] if f.name.endswith(".json") else f.name
        if base.endswith((".hnsw", ".npz")) and base not in kept:
            f.unlink(missing_ok=True)
    return removed


def _check_structure(pkg: Package) -> None:
    """The package's row lists hold objects (parts, inventory, images) and strings (ids): a signed package
    of another shape (a hub bug) is an IntegrityError before the transaction, not an AttributeError in it."""
    for name in ("parts", "inventory", "images"):
        rows = getattr(pkg, name)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise IntegrityError(f"package {pkg.name}: {name} is not a list of objects; refused, nothing changed")
    for name in ("deleted_parts", "deleted_images", "deleted_inventory", "embedding_ids"):
        ids = getattr(pkg, name)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise IntegrityError(f"package {pkg.name}: {name} is not a list of strings; refused, nothing changed")
    for name, keys in (("parts", ("part_number",)), ("inventory", ("part_number", "site")),
                       ("images", ("image_id", "part_number"))):
        if not all(isinstance(r.get(k), str) for r in getattr(pkg, name) for k in keys):
            raise IntegrityError(f"package {pkg.name}: a row of {name} lacks a text {' or '.join(keys)}; refused, "
                                 "nothing changed")


def bundle_embedding_dim(paths: DevicePaths, bundle_id: str) -> int | None:
    """The embedding size of an installed bundle (its manifest), or None if it cannot be read."""
    try:
        dim = json.loads((paths.bundles / bundle_id / "manifest.json").read_text()).get("embedding_dim")
    except (OSError, ValueError, AttributeError):
        return None
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def index_params(paths: DevicePaths, bundle_id: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads((paths.bundles / bundle_id / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{paths.bundles / bundle_id}: unreadable manifest ({exc})") from None
    idx = manifest.get("index") or {}
    return {k: idx[k] for k in ("M", "ef_construction", "ef_search") if k in idx} or None

"""The vector index: a cache over the embeddings stored in SQLite.

hnswlib (cosine) when importable, otherwise an exact NumPy search with the same interface.
The index file lives next to the catalogue DB and is stamped with (bundle_id,
catalogue_version); the stamp is kept in a sidecar JSON and in ``meta.index_stamp``. On open,
a cache for another bundle (or an unreadable one) is rebuilt from SQLite; a cache for the same
bundle is brought up to date incrementally (``add_items`` / ``mark_deleted`` /
``resize_index``) by comparing its live labels with the labels in SQLite (labels are never
reused, so label -> vector is immutable). hnswlib does not save ``ef``: it is set from the
manifest's index params after every load. Index files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from ..atomic import atomic_write_json, fsync_dir
from ..errors import InputError, UsageError

if TYPE_CHECKING:
    from .catalogue import CatalogueDB

log = logging.getLogger(__name__)

DEFAULT_PARAMS = {"space": "cosine", "M": 16, "ef_construction": 200, "ef_search": 64}
SIDECAR_FORMAT = "partlens-index/1"
#: Below this many allowed labels a filtered query is answered exactly (faster and never misses).
EXACT_FILTER_LIMIT = 4096


def _hnswlib() -> Any | None:
    try:
        import hnswlib
    except ImportError:
        return None
    return hnswlib


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _dot(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``q @ m.T`` for a few queries. einsum stays on one thread: a multi-threaded BLAS matrix-vector
    product measured ~24 ms instead of ~0.5 ms (10k x 256) on a loaded 2-core machine."""
    return np.einsum("qd,nd->qn", q, m) if len(q) <= 8 else q @ m.T


@dataclass(frozen=True)
class IndexStamp:
    """What an index file was built from."""

    bundle_id: str
    catalogue_version: int

    def __str__(self) -> str:
        return f"{self.bundle_id}@{self.catalogue_version}"


class _ExactEngine:
    """Brute-force cosine search over an in-memory matrix (the hnswlib fallback)."""

    name = "numpy"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.labels = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, dim), np.float32)
        self._pos: dict[int, int] = {}
        self.deleted: set[int] = set()

    def reserve(self, n: int) -> None:
        """Nothing to reserve for a NumPy matrix (same interface as hnswlib)."""

    def set_ef(self, ef: int) -> None:
        """Exact search has no ``ef`` (same interface as hnswlib; a sync updating a live index calls it)."""

    def add(self, labels: np.ndarray, vectors: np.ndarray, num_threads: int | None = None) -> None:
        keep = [i for i, lab in enumerate(labels) if int(lab) not in self._pos]
        if not keep:
            return
        start = len(self.labels)
        self.labels = np.concatenate([self.labels, labels[keep].astype(np.int64)])
        self.vectors = np.concatenate([self.vectors, _normalise(vectors[keep])])
        for j, lab in enumerate(labels[keep]):
            self._pos[int(lab)] = start + j

    def mark_deleted(self, label: int) -> None:
        self.deleted.add(int(label))

    def live_mask(self) -> np.ndarray:
        if not self.deleted:
            return np.ones(len(self.labels), bool)
        return ~np.isin(self.labels, np.fromiter(self.deleted, np.int64))

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        mask = self.live_mask()
        if allowed is not None:
            mask &= np.isin(self.labels, allowed)
        idx = np.flatnonzero(mask)
        k = min(k, len(idx))
        sims = q @ self.vectors[idx].T
        if k < len(idx):
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(len(idx)), (len(q), 1))
        order = np.take_along_axis(sims, part, 1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(part, order, 1)
        return self.labels[idx][top], np.take_along_axis(sims, top, 1)

    def get(self, labels: Iterable[int]) -> np.ndarray:
        return self.vectors[[self._pos[int(lab)] for lab in labels]]

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, labels=self.labels, vectors=self.vectors)

    def load(self, path: Path) -> None:
        with np.load(path) as z:
            labels, vectors = z["labels"], z["vectors"]
        if vectors.shape[1:] != (self.dim,):
            raise InputError(f"{path}: index dimension {vectors.shape[1:]} != {self.dim}")
        self.labels, self.vectors = labels.astype(np.int64), vectors.astype(np.float32)
        self._pos = {int(lab): i for i, lab in enumerate(self.labels)}

    @property
    def all_labels(self) -> set[int]:
        return set(self._pos)


class _HnswEngine:
    """hnswlib cosine index."""

    name = "hnswlib"

    def __init__(self, dim: int, params: Mapping[str, Any], hnswlib: Any) -> None:
        self.dim = dim
        self.params = params
        self._lib = hnswlib
        self.index = hnswlib.Index(space="cosine", dim=dim)
        self.index.init_index(max_elements=16, M=int(params["M"]), ef_construction=int(params["ef_construction"]),
                              random_seed=100)
        self.deleted: set[int] = set()
        self.index.set_num_threads(add_threads())
        self.set_ef(int(params["ef_search"]))
        # A copy of the normalised vectors by label for exact re-scoring: hnswlib's get_items costs ~10 us per
        # vector (4.3 ms for the ~400 vectors of one ranking, measured), NumPy indexing microseconds. Made on
        # first use from the graph (one bulk get_items), then kept in step by add().
        self._mirror: np.ndarray | None = None
        self._row: dict[int, int] = {}

    def set_ef(self, ef: int) -> None:
        self._ef = ef
        self.index.set_ef(ef)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` elements in total (one resize instead of several while adding)."""
        if n > self.index.get_max_elements():
            self.index.resize_index(int(n))

    def add(self, labels: np.ndarray, vectors: np.ndarray, num_threads: int | None = None) -> None:
        if not len(labels):
            return
        need = self.index.element_count + len(labels)
        if need > self.index.get_max_elements():
            self.reserve(max(need, int(self.index.get_max_elements() * 1.25)))
        unit = _normalise(vectors)
        self.index.add_items(unit, labels.astype(np.int64), num_threads=int(num_threads or add_threads()))
        if self._mirror is not None:
            start = len(self._mirror)
            self._mirror = np.concatenate([self._mirror, unit.astype(np.float32)])
            self._row.update({int(lab): start + i for i, lab in enumerate(labels)})  # a re-added label: newest

    def mark_deleted(self, label: int) -> None:
        if int(label) not in self.deleted:
            try:
                self.index.mark_deleted(int(label))
            except RuntimeError as exc:
                if "already deleted" not in str(exc):
                    raise
            self.deleted.add(int(label))

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        live = self.index.element_count - len(self.deleted)
        if allowed is not None:
            allowed = np.setdiff1d(allowed, np.fromiter(self.deleted, np.int64)) if self.deleted else allowed
            if len(allowed) <= EXACT_FILTER_LIMIT:
                return self._exact_subset(q, k, allowed)
            live = len(allowed)
        k = min(k, live)
        if k <= 0:
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        if self._ef < k:
            self.index.set_ef(k)
        try:
            filt: Callable[[int], bool] | None = None
            if allowed is not None:
                allowed_set = set(allowed.tolist())
                filt = allowed_set.__contains__
            labels, dist = self.index.knn_query(q, k=k, num_threads=1, filter=filt)
        except RuntimeError:
            # hnswlib could not find k live neighbours (tiny or heavily filtered index): answer exactly.
            sub = allowed if allowed is not None else np.setdiff1d(
                np.asarray(self.index.get_ids_list(), np.int64), np.fromiter(self.deleted, np.int64))
            return self._exact_subset(q, k, sub)
        finally:
            if self._ef < k:
                self.index.set_ef(self._ef)
        return labels.astype(np.int64), (1.0 - dist).astype(np.float32)

    def _exact_subset(self, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(labels))
        if k == 0:
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        vec = self.get(labels.tolist())
        sims = q @ vec.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return labels[order], np.take_along_axis(sims, order, 1).astype(np.float32)

    def get(self, labels: Iterable[int]) -> np.ndarray:
        labels = [int(x) for x in labels]
        if self._mirror is None:
            ids = [int(x) for x in self.index.get_ids_list() if int(x) not in self.deleted]
            try:
                vecs = self.index.get_items(ids) if ids else np.zeros((0, self.dim), np.float32)
            except RuntimeError:  # deleted in the saved graph (hnswlib refuses those): take the live ones
                kept, rows = [], []
                for lab in ids:
                    try:
                        rows.append(self.index.get_items([lab])[0])
                        kept.append(lab)
                    except RuntimeError:
                        continue
                ids, vecs = kept, rows
            self._mirror = _normalise(np.asarray(vecs, dtype=np.float32).reshape(len(ids), self.dim))
            self._row = {lab: i for i, lab in enumerate(ids)}
        missing = [lab for lab in labels if lab not in self._row]
        if missing:
            raise RuntimeError(f"Label not found: {missing[0]}")
        return self._mirror[[self._row[lab] for lab in labels]]

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    def load(self, path: Path) -> None:
        index = self._lib.Index(space="cosine", dim=self.dim)
        try:
            index.load_index(str(path))
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(f"{path}: unreadable index ({exc})") from None
        index.set_num_threads(add_threads())
        self.index = index
        self._mirror, self._row = None, {}
        self.set_ef(self._ef)  # hnswlib does not save ef

    @property
    def all_labels(self) -> set[int]:
        return {int(x) for x in self.index.get_ids_list()}


class VectorIndex:
    """Cosine nearest-neighbour search over image embeddings, keyed by integer label.

    Vectors added with ``defer=True`` are searchable at once (exactly, from a pending matrix
    merged into every query) and enter the graph on :meth:`flush`, which may run in a
    background thread (:meth:`persist_in_background`): a large sync delta is usable without
    waiting for hnswlib's insertion cost. Public methods are thread-safe (one lock; ``flush``
    takes it per chunk so searches keep running between chunks).
    """

    def __init__(self, dim: int, params: Mapping[str, Any] | None = None, *, engine: str = "auto") -> None:
        p = dict(DEFAULT_PARAMS)
        p.update({k: v for k, v in (params or {}).items() if k in DEFAULT_PARAMS})
        if p["space"] != "cosine":
            raise UsageError(f"index space must be 'cosine', got {p['space']!r}")
        if engine not in ("auto", "hnswlib", "numpy"):
            raise UsageError(f"index engine must be auto, hnswlib or numpy, got {engine!r}")
        lib = _hnswlib() if engine in ("auto", "hnswlib") else None
        if engine == "hnswlib" and lib is None:
            raise UsageError("index engine 'hnswlib' requested but hnswlib is not installed")
        if lib is None and engine == "auto":
            log.warning("hnswlib is not installed: using exact NumPy search")
        self.dim = int(dim)
        self.params = p
        self.engine: _HnswEngine | _ExactEngine = _HnswEngine(self.dim, p, lib) if lib else _ExactEngine(self.dim)
        self.stamp: IndexStamp | None = None
        #: the file this index was loaded from or saved to (``persist`` writes there)
        self.path: Path | None = None
        self._lock = threading.RLock()
        self._pending_labels = np.zeros(0, np.int64)
        self._pending_vectors = np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------ maintenance
    @property
    def engine_name(self) -> str:
        return self.engine.name

    def __len__(self) -> int:
        return len(self.live_labels())

    @property
    def pending_count(self) -> int:
        """Vectors searchable exactly but not yet in the graph (see :meth:`flush`)."""
        return len(self._pending_labels)

    def live_labels(self) -> set[int]:
        with self._lock:
            return (self.engine.all_labels - self.engine.deleted) | set(self._pending_labels.tolist())

    def add_items(self, labels: np.ndarray, vectors: np.ndarray, *, num_threads: int | None = None,
                  defer: bool = False) -> None:
        """Add vectors under new labels.

        ``num_threads`` (default :func:`add_threads`) parallelises graph insertion; ``defer``
        only queues them (searchable at once) for a later :meth:`flush`.
        """
        labels = np.asarray(labels, np.int64)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(labels):
            raise InputError(f"index: expected {len(labels)} vectors of dim {self.dim}, got {vectors.shape}")
        if num_threads is not None and num_threads < 1:
            raise UsageError(f"num_threads must be >= 1, got {num_threads}")
        with self._lock:
            if defer:
                self._pending_labels = np.concatenate([self._pending_labels, labels])
                self._pending_vectors = np.concatenate([self._pending_vectors, _normalise(vectors)])
            else:
                self.engine.add(labels, vectors, num_threads)

    def flush(self, *, num_threads: int | None = None, chunk: int = 2048) -> int:
        """Insert the pending vectors into the graph, ``chunk`` at a time; return how many."""
        if chunk < 1:
            raise UsageError(f"chunk must be >= 1, got {chunk}")
        done = 0
        while True:
            with self._lock:
                if not len(self._pending_labels):
                    return done
                if done == 0:
                    self.engine.reserve(len(self.engine.all_labels) + len(self._pending_labels))
                labels, vectors = self._pending_labels[:chunk], self._pending_vectors[:chunk]
                self.engine.add(labels, vectors, num_threads)
                self._pending_labels = self._pending_labels[chunk:]
                self._pending_vectors = self._pending_vectors[chunk:]
                done += len(labels)

    def mark_deleted(self, labels: Iterable[int]) -> None:
        with self._lock:
            labels = [int(lab) for lab in labels]
            if len(self._pending_labels) and labels:
                keep = ~np.isin(self._pending_labels, np.asarray(labels, np.int64))
                self._pending_labels = self._pending_labels[keep]
                self._pending_vectors = self._pending_vectors[keep]
            present = self.engine.all_labels
            for lab in labels:
                if lab in present:
                    self.engine.mark_deleted(lab)

    def search(self, queries: np.ndarray, k: int, allowed_labels: Iterable[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(labels (Q,k'), cosine similarities (Q,k')) best first; ``k' = min(k, candidates)``."""
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        q = _normalise(queries)
        if q.shape[1] != self.dim:
            raise InputError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        allowed = None if allowed_labels is None else np.fromiter((int(x) for x in allowed_labels), np.int64)
        with self._lock:
            if not len(self._pending_labels):
                return self.engine.search(q, k, allowed)
            in_graph = allowed if allowed is None else allowed[~np.isin(allowed, self._pending_labels)]
            labels, sims = self.engine.search(q, k, in_graph)
            return self._merge_pending(q, k, allowed, labels, sims)

    def _merge_pending(self, q: np.ndarray, k: int, allowed: np.ndarray | None, labels: np.ndarray,
                       sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p_labels, p_vecs = self._pending_labels, self._pending_vectors
        if allowed is not None:
            keep = np.isin(p_labels, allowed)
            p_labels, p_vecs = p_labels[keep], p_vecs[keep]
        if not len(p_labels):
            return labels, sims
        p_sims = _dot(q, p_vecs)
        kp = min(k, len(p_labels))
        top = np.argpartition(-p_sims, kp - 1, axis=1)[:, :kp] if kp < len(p_labels) else np.tile(
            np.arange(len(p_labels)), (len(q), 1))
        all_labels = np.concatenate([labels, p_labels[top]], axis=1)
        all_sims = np.concatenate([sims, np.take_along_axis(p_sims, top, 1)], axis=1).astype(np.float32)
        order = np.argsort(-all_sims, axis=1, kind="stable")[:, :min(k, all_labels.shape[1])]
        return np.take_along_axis(all_labels, order, 1), np.take_along_axis(all_sims, order, 1)

    def get_vectors(self, labels: Iterable[int]) -> np.ndarray:
        """Unit-norm stored vectors for ``labels``."""
        labels = [int(x) for x in labels]
        with self._lock:
            if not len(self._pending_labels):
                return self.engine.get(labels)
            pos = {int(lab): i for i, lab in enumerate(self._pending_labels.tolist())}
            out = np.zeros((len(labels), self.dim), np.float32)
            graph = [i for i, lab in enumerate(labels) if lab not in pos]
            if graph:
                out[graph] = self.engine.get([labels[i] for i in graph])
            for i, lab in enumerate(labels):
                if lab in pos:
                    out[i] = self._pending_vectors[pos[lab]]
            return out

    def sync_from(self, labels: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray], *,
                  defer: bool = False) -> dict[str, int]:
        """Make the live label set equal ``labels``; ``fetch(missing_labels)`` returns their vectors."""
        want = {int(x) for x in labels}
        live = self.live_labels()
        missing = np.array(sorted(want - live), np.int64)
        gone = sorted(live - want)
        revived = [lab for lab in missing if int(lab) in self.engine.deleted]
        if revived:  # labels are never reused; a deleted label coming back means a foreign cache
            raise InputError(f"index holds deleted labels that SQLite still has ({len(revived)}): rebuild")
        if len(missing):
            self.add_items(missing, fetch(missing), defer=defer)
        self.mark_deleted(gone)
        return {"added": int(len(missing)), "deleted": len(gone)}

    # --------------------------------------------------------------- files
    def save(self, path: str | os.PathLike[str], stamp: IndexStamp) -> Path:
        """Write the index atomically (temp, fsync, rename) and its stamp sidecar ``<path>.json``.

        Pending vectors are flushed into the graph first, so the file holds everything.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.flush()
        with self._lock:
            return self._save_locked(path, stamp)

    def _save_locked(self, path: Path, stamp: IndexStamp) -> Path:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        os.close(fd)
        try:
            self.engine.save(Path(tmp))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        atomic_write_json(sidecar_path(path), {
            "format": SIDECAR_FORMAT, "engine": self.engine.name, "bundle_id": stamp.bundle_id,
            "catalogue_version": stamp.catalogue_version, "dim": self.dim, "params": self.params,
            "deleted": sorted(self.engine.deleted), "count": len(self), "sha256": digest})
        self.stamp = stamp
        self.path = path
        return path

    def persist(self) -> Path:
        """Flush pending vectors and write the index to :attr:`path` under :attr:`stamp`."""
        if self.path is None or self.stamp is None:
            raise UsageError("index has no file and stamp yet: use save(path, stamp)")
        return self.save(self.path, self.stamp)

    def persist_in_background(self) -> threading.Thread:
        """:meth:`persist` in a (non-daemon) thread; searches keep working meanwhile. Join it before exit."""
        def work() -> None:
            try:
                self.persist()
            except Exception:  # a cache: the next open repairs it from SQLite
                log.exception("saving the index %s in the background failed", self.path)

        t = threading.Thread(target=work, name="index-persist", daemon=False)
        t.start()
        return t

    @classmethod
    def load(cls, path: str | os.PathLike[str], params: Mapping[str, Any] | None = None, *,
             engine: str = "auto") -> "VectorIndex":
        """Load an index file and its sidecar; ``params['ef_search']`` is applied after loading."""
        path = Path(path)
        side = sidecar_path(path)
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{side}: missing or unreadable index stamp ({exc})") from None
        if meta.get("format") != SIDECAR_FORMAT:
            raise InputError(f"{side}: unknown index format {meta.get('format')!r}")
        merged = dict(meta.get("params") or {})
        merged.update(params or {})
        self = cls(int(meta["dim"]), merged, engine=engine)
        if self.engine.name != meta.get("engine"):
            raise InputError(f"{path}: written by engine {meta.get('engine')!r}, this runtime uses "
                             f"{self.engine.name!r}")
        if not path.is_file():
            raise InputError(f"{path}: index file missing")
        # the file and its stamp are two renames: a process killed between them (or two processes saving at
        # once) leaves a file the stamp does not describe; its deletion marks then disagree with the stamp's
        want = meta.get("sha256")
        if want:
            with open(path, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != want:
                    raise InputError(f"{path}: the index file is not the one its stamp describes")
        try:
            self.engine.load(path)
        except RuntimeError as exc:  # hnswlib: truncated or foreign file
            raise InputError(f"{path}: unreadable index file ({exc})") from None
        # hnswlib persists its deletion marks; the sidecar tells us which labels they are
        self.engine.deleted.update(int(lab) for lab in meta.get("deleted", []))
        self.stamp = IndexStamp(str(meta["bundle_id"]), int(meta["catalogue_version"]))
        self.path = path
        return self

    @classmethod
    def open(cls, db: "CatalogueDB", bundle_id: str, params: Mapping[str, Any] | None = None, *,
             index_dir: str | os.PathLike[str] | None = None, engine: str = "auto",
             live: "VectorIndex | None" = None, defer: bool = False) -> "VectorIndex":
        """The index for ``bundle_id``, up to date with ``db``: cached, incrementally updated or rebuilt.

        ``live``: an index this process already holds for ``db`` (e.g. the app's); it is updated
        in place instead of reloading the file. ``defer``: new vectors are only queued (searchable
        exactly at once) and the file is not rewritten; the caller then runs :meth:`persist`
        (or :meth:`persist_in_background`). Without it the index is saved before returning.
        """
        path = index_path(db.path, bundle_id, index_dir, engine_name(engine))
        with db.read():  # the version and its labels from one snapshot (a sync may commit meanwhile)
            version = db.catalogue_version
            labels = np.fromiter((r[0] for r in db.db.conn.execute(
                "SELECT label FROM embeddings WHERE bundle_id = ? ORDER BY label", (bundle_id,))), np.int64)
            dims = {r[0] for r in db.db.conn.execute(
                "SELECT DISTINCT dim FROM embeddings WHERE bundle_id = ?", (bundle_id,))}
        stamp = IndexStamp(bundle_id, version)
        if len(dims) > 1:
            raise InputError(f"{db.path}: embeddings of bundle {bundle_id} have mixed dimensions {sorted(dims)}")
        index: VectorIndex | None = None
        if live is not None and live.stamp is not None and live.stamp.bundle_id == bundle_id \
                and live.engine_name == engine_name(engine) and (not dims or live.dim in dims):
            index = live
            index.params.update({k: v for k, v in (params or {}).items() if k in DEFAULT_PARAMS})
            index.engine.set_ef(int(index.params["ef_search"]))
        elif path.exists() and sidecar_path(path).exists():
            try:
                index = cls.load(path, params, engine=engine)
                if index.stamp is None or index.stamp.bundle_id != bundle_id or (dims and index.dim not in dims):
                    log.info("index %s is for %s, not %s: rebuilding", path, index.stamp, bundle_id)
                    index = None
            except InputError as exc:
                log.warning("index cache unusable (%s): rebuilding from SQLite", exc)
                index = None
        changed = False
        if index is not None:
            # a live index is also compared label by label: a snapshot that replaced the catalogue at the same
            # version (another site, another lineage) keeps the stamp and can keep the count (a sync audit)
            if index.stamp != stamp or len(index) != len(labels) or \
                    (index is live and index.live_labels() != {int(x) for x in labels}):
                try:
                    stats = index.sync_from(labels, lambda missing: _fetch(db, bundle_id, missing), defer=defer)
                    log.info("index %s -> %s: %s", index.stamp, stamp, stats)
                    changed = True
                except InputError as exc:
                    log.warning("incremental index update failed (%s): rebuilding", exc)
                    index = None
            if index is not None and len(index.engine.deleted) > max(COMPACT_MIN_DELETED, len(labels)):
                # deleted labels are never reused: after heavy churn the graph is mostly tombstones (15,000
                # elements for 3,400 live after four 3,000-image swaps); a rebuild from SQLite compacts it
                log.info("index for %s holds %d deleted entries beside %d live: rebuilding it compact", stamp,
                         len(index.engine.deleted), len(labels))
                index = None
        if index is None:
            if not dims:
                raise InputError(f"{db.path}: no embeddings stored for bundle {bundle_id}; "
                                 "import the bundle's embeddings or sync first")
            all_labels, vectors = db.all_embeddings(bundle_id)
            index = cls(vectors.shape[1], params, engine=engine)
            index.engine.reserve(max(16, len(all_labels)))
            index.add_items(all_labels, vectors, defer=defer)
            log.info("built %s index of %d vectors for %s", index.engine_name, len(all_labels), stamp)
            changed = True
        if defer and (changed or index.stamp != stamp):
            index.path = path  # the caller persists; until then the file's stamp says what it holds
        elif changed or index.stamp != stamp or index.path != path:
            index.save(path, stamp)
        if db.get_meta("index_stamp") != str(stamp):  # bookkeeping (the sidecar holds the stamp): never waited for
            db.set_meta_if_free("index_stamp", str(stamp))
        index.stamp = stamp
        return index


#: rebuild an index once it holds more deleted entries than live ones (and at least this many)
COMPACT_MIN_DELETED = 1000


def add_threads() -> int:
    """Threads for building/adding (all cores, at most 4: a tablet has big and little cores)."""
    return max(1, min(4, os.cpu_count() or 1))


def engine_name(engine: str) -> str:
    if engine == "auto":
        return "hnswlib" if _hnswlib() is not None else "numpy"
    return engine


def index_path(db_path: str | os.PathLike[str], bundle_id: str, index_dir: str | os.PathLike[str] | None = None,
               engine: str = "hnswlib") -> Path:
    """Where the index cache for ``bundle_id`` lives: next to the catalogue DB by default."""
    folder = Path(index_dir) if index_dir is not None else Path(db_path).parent
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in bundle_id)
    return folder / f"index-{safe}.{'hnsw' if engine == 'hnswlib' else 'npz'}"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


#: labels per ``IN (...)`` query when fetching vectors (below SQLite's default variable limit)
FETCH_CHUNK = 900


def _fetch(db: "CatalogueDB", bundle_id: str, labels: np.ndarray) -> np.ndarray:
    """Vectors of ``labels`` (in that order), a few chunked queries in one read transaction."""
    found: dict[int, bytes] = {}
    conn = db.db.conn
    wanted = labels.tolist()
    with db.read():
        if wanted and max(wanted) - min(wanted) + 1 == len(wanted):  # a delta's new labels: one range scan
            found.update(conn.execute("SELECT label, vector FROM embeddings WHERE label BETWEEN ? AND ? "
                                      "AND bundle_id = ?", (min(wanted), max(wanted), bundle_id)).fetchall())
            wanted_iter: list[int] = []
        else:
            wanted_iter = wanted
        for i in range(0, len(wanted_iter), FETCH_CHUNK):
            chunk = wanted_iter[i:i + FETCH_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(conn.execute(
                f"SELECT label, vector FROM embeddings WHERE bundle_id = ? AND label IN ({marks})",
                (bundle_id, *chunk)).fetchall())
    missing = [lab for lab in wanted if lab not in found]
    if missing:
        raise InputError(f"{db.path}: embedding label {missing[0]} vanished during index update")
    return np.frombuffer(b"".join(found[lab] for lab in wanted), dtype="<f4").reshape(len(wanted), -1).astype(
        np.float32)

"""Identify a part from one or more photos: decode, preprocess (from the bundle manifest ONLY),
run the model, L2-normalise, search the catalogue index, aggregate images into PARTS, fuse views,
calibrate confidence, and say "no confident match" when the calibrated confidence is below the
bundle's threshold.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ImageError, InputError, IntegrityError, StorageError, UsageError
from ..imageio import load_image, to_rgb
from ..preprocess import preprocess_image
from . import fusion
from .calibration import Calibration, default_calibration
from .catalogue import CatalogueDB
from .index import VectorIndex

log = logging.getLogger(__name__)

STATUS_MATCH = "match"
STATUS_NONE = "no_confident_match"
#: Other candidates within this similarity of the top part are "top candidates" for the look-alike flag.
LOOK_ALIKE_MARGIN = 0.1
#: catalogue meta: "<bundle_id>@<epoch>:<version>" whose vectors were last checked against the bundle (skips re-reading)
VECTORS_CHECKED_KEY = "bundle_vectors_checked"
#: ``{"bundle_id", "count"}``: how many vectors :meth:`Identifier.embed_local_images` stored for that bundle
LOCAL_VECTORS_KEY = "local_vectors"
#: images per model batch when embedding the device's own catalogue images
LOCAL_EMBED_BATCH = 8


@dataclass
class PartMatch:
    """One candidate part, best first."""

    rank: int
    part_number: str
    name: str | None
    category: str | None
    similarity: float
    confidence: float | None
    best_image_id: str | None
    size_mm: float | None = None
    look_alike_group: str | None = None
    stock: int | None = None
    bin: str | None = None
    stock_as_of: str | None = None
    site: str | None = None
    inventory: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IdentifyResult:
    """Parts ranked for a query; ``status`` is ``match`` or ``no_confident_match``."""

    status: str
    matches: list[PartMatch]
    confidence: float | None
    threshold: float
    calibrated: bool
    needs_scale_photo: bool
    look_alike: dict[str, Any] | None
    needs_detail_photo: bool
    views: int
    skipped: list[dict[str, str]]
    bundle_id: str
    catalogue_version: int
    hub_time: str | None
    site: str | None
    filters: dict[str, Any]
    timings_ms: dict[str, float]

    @property
    def best(self) -> PartMatch | None:
        """The accepted part, or None when there is no confident match."""
        return self.matches[0] if self.status == STATUS_MATCH and self.matches else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = "partlens-identify/2"
        return d


class BundleChanged(InputError):
    """The catalogue holds another bundle's vectors than the one being opened (a sync switched it meanwhile)."""


class Identifier:
    """The on-device identification pipeline over one verified bundle and the catalogue DB."""

    def __init__(self, bundle: Any, db: CatalogueDB, *, backend: str | None = None,
                 calibration: Calibration | None = None, index_dir: str | os.PathLike[str] | None = None,
                 index_engine: str = "auto", site: str | None = None, aggregate: str = "max",
                 fusion_method: str = "score") -> None:
        """``bundle`` is a verified :class:`edge_app.bundle.Bundle` (see :meth:`open`)."""
        from .backends import create_backend

        fusion.check(aggregate, fusion_method)
        t0 = time.perf_counter()
        self.bundle = bundle
        self.db = db
        self.spec = bundle.preprocess  # preprocessing comes from the manifest, nowhere else
        self.aggregate = aggregate
        self.fusion_method = fusion_method
        self.site = site if site is not None else db.get_meta("site")
        self.index_dir = index_dir
        self.index_engine = index_engine
        cal = bundle.manifest.get("calibration") or {}
        if calibration is not None:
            self.calibration = calibration
        elif cal:
            self.calibration = Calibration.from_dict(cal, what=f"bundle {bundle.bundle_id} calibration")
        else:
            log.warning("bundle %s carries no calibration: confidence is uncalibrated", bundle.bundle_id)
            self.calibration = default_calibration()
        self.backend = create_backend(bundle, prefer=backend)
        fixed = all(isinstance(v, int) and v > 0 for v in self.backend.input_size)  # (not a dynamic-size model)
        if fixed and tuple(self.backend.input_size) != tuple(self.spec.size):  # at open, not after a photo
            raise IntegrityError(f"bundle {bundle.bundle_id}: its preprocessing makes {self.spec.size[0]}x"
                                 f"{self.spec.size[1]} inputs, its model takes {self.backend.input_size[0]}x"
                                 f"{self.backend.input_size[1]}")
        self.import_bundle_embeddings()
        self.index: VectorIndex | None = None
        self._label_part: dict[int, str] = {}
        self._label_image: dict[int, str] = {}
        self._part_labels: dict[str, list[int]] = {}
        self._loaded: tuple[int, int, int] | None = None  # (data_version, epoch, version) the mapping was read at
        self.refresh()
        self.load_seconds = time.perf_counter() - t0

    @classmethod
    def open(cls, bundle_dir: str | os.PathLike[str], db_path: str | os.PathLike[str],
             keyring_path: str | os.PathLike[str], **kwargs: Any) -> "Identifier":
        """Verify the bundle (signature, hashes) against the keyring, open the DB, load everything."""
        from ..bundle import load_bundle
        from ..signing import Keyring

        bundle = load_bundle(bundle_dir, Keyring.load(keyring_path))
        db_path = Path(db_path)
        if not db_path.is_file():
            raise InputError(f"{db_path}: no catalogue database (run `partlens catalogue import` or sync)")
        return cls(bundle, CatalogueDB(db_path), **kwargs)

    def close(self, *, db: bool = True) -> None:
        """Free the model (the Java interpreter's native memory on Android) and, with ``db``, the catalogue
        connection. Only when nothing identifies with it any more (the app's services lease it)."""
        self.backend.close()
        if db:
            self.db.close()

    # ------------------------------------------------------------------ catalogue
    @property
    def bundle_id(self) -> str:
        return str(self.bundle.bundle_id)

    def bundle_catalogue_size(self) -> int:
        """How many catalogue vectors the bundle holds (the array's header only)."""
        return int(np.load(self.bundle.root / "embeddings.npy", mmap_mode="r", allow_pickle=False).shape[0])

    def import_bundle_embeddings(self) -> int:
        """Store the bundle's catalogue embeddings in SQLite for the parts the DB knows; returns how many were added.

        The first time, into a catalogue with no other model's vectors: when a sync (another process) committed
        another bundle meanwhile, this bundle is stale and :class:`BundleChanged` is raised (the caller opens the
        catalogue's bundle); before, this deleted the vectors the sync had just written. Later, the vectors of
        parts imported since (``partlens catalogue import`` of a bigger parts list) are added: they had been
        skipped while their parts were unknown. A catalogue a hub keeps gets its vectors from the hub only."""
        hub_kept = self._hub_kept()
        with self.db.read():
            conn = self.db.db.conn
            stored = conn.execute("SELECT count(*) FROM embeddings WHERE bundle_id = ?", (self.bundle_id,)).fetchone()[0]
        # the usual open: every vector of the bundle is stored already (or the hub sends them), or this catalogue
        # version was checked against this bundle before (a catalogue of fewer parts than the bundle): nothing to read
        checked = f"{self.bundle_id}@{self.db.catalogue_epoch}:{self.db.catalogue_version}"
        # (vectors made on this device by embed_local_images are not the bundle's: they do not count towards it)
        if stored and (hub_kept or stored - self._local_vectors() >= self.bundle_catalogue_size()
                       or self.db.get_meta(VECTORS_CHECKED_KEY) == checked):
            return 0
        with self.db.read():
            conn = self.db.db.conn
            have = {r[0] for r in conn.execute("SELECT image_id FROM embeddings WHERE bundle_id = ?",
                                               (self.bundle_id,))}
            known = {r[0] for r in conn.execute("SELECT part_number FROM parts")}
        if not have and not known:
            raise InputError(f"{self.db.path}: the catalogue has no parts; import or sync the catalogue first")
        rows = self.bundle.load_catalogue_rows()
        keep = [i for i, r in enumerate(rows) if r["part_number"] in known and r["image_id"] not in have]
        if not keep:
            if have:
                self._mark_checked(checked)
                return 0
            raise InputError(f"bundle {self.bundle_id}: none of its catalogue images belong to parts in "
                             f"{self.db.path}")
        skipped = sum(r["image_id"] not in have for r in rows) - len(keep)
        if skipped:
            log.warning("bundle %s: %d of %d catalogue embeddings are for parts not in the catalogue; skipped "
                        "(added when their parts are imported)", self.bundle_id, skipped, len(rows))
        emb = self.bundle.load_embeddings()
        with self.db.transaction():  # checked again under the write lock: a sync may have committed meanwhile
            conn = self.db.db.conn
            now = {r[0] for r in conn.execute("SELECT image_id FROM embeddings WHERE bundle_id = ?",
                                              (self.bundle_id,))}
            if now != have:
                return 0  # another process added them meanwhile; the next open looks again
            held = self.db.get_meta("bundle_id")
            if not have and held and held != self.bundle_id:
                raise BundleChanged(f"{self.db.path} now holds the vectors of bundle {held}, not {self.bundle_id} "
                                    "(a sync installed it): open that bundle")
            if self._hub_kept():  # read again under the write lock: a sync may have just made it so
                raise InputError(f"{self.db.path}: this catalogue is kept by a hub and holds no vectors for bundle "
                                 f"{self.bundle_id}: sync with the hub")
            existing = {r[0] for r in conn.execute("SELECT image_id FROM images")}
            self.db.upsert_images([{"image_id": rows[i]["image_id"], "part_number": rows[i]["part_number"],
                                    "kind": "catalogue"} for i in keep if rows[i]["image_id"] not in existing])
            self.db.upsert_embeddings([rows[i]["image_id"] for i in keep], emb[keep], self.bundle_id)
            if not have:
                self.db.delete_embeddings(self.bundle_id)  # drop other bundles' vectors
            self.db.set_meta(VECTORS_CHECKED_KEY, checked)
        log.info("imported %d catalogue embeddings of bundle %s", len(keep), self.bundle_id)
        return len(keep)

    def _images_without_vectors(self) -> list[tuple[str, str, str | None, str | None]]:
        """(image_id, part_number, path, kind) of catalogue images with no vector for this bundle."""
        with self.db.read():
            return self.db.db.conn.execute(
                "SELECT i.image_id, i.part_number, i.path, i.kind FROM images i JOIN parts p "
                "ON p.part_number = i.part_number WHERE NOT EXISTS (SELECT 1 FROM embeddings e "
                "WHERE e.image_id = i.image_id AND e.bundle_id = ?) ORDER BY i.image_id", (self.bundle_id,)).fetchall()

    def missing_vectors(self) -> tuple[int, int]:
        """(images, parts) of the catalogue this bundle has no vector for: they are not searched. Parts added with
        ``partlens catalogue import`` after the bundle was built; :meth:`embed_local_images` embeds them. (0, 0)
        for a catalogue a hub keeps: its vectors come with the sync."""
        if self._hub_kept():
            return 0, 0
        rows = self._images_without_vectors()
        return len(rows), len({r[1] for r in rows})

    def embed_local_images(self) -> int:
        """Embed, on this device, the catalogue images this bundle carries no vector for, with the bundle's model,
        decoding and catalogue views (as the hub embeds a part it adds), so their parts are found without
        retraining; returns how many vectors were stored. Refused for a catalogue a hub keeps (the hub embeds).
        An image file that is gone or unreadable is named and left without a vector."""
        if self._hub_kept():
            raise UsageError(f"{self.db.path}: this catalogue is kept by a hub, which embeds its images; sync instead")
        held = self.db.get_meta("bundle_id")
        if held and held != self.bundle_id:
            raise UsageError(f"{self.db.path} holds the vectors of bundle {held}, not {self.bundle_id}")
        todo = self._images_without_vectors()
        if not todo:
            return 0
        from ..catalogue_views import VIEWED_KINDS, check_views, embed_with_views

        views = check_views(self.bundle.catalogue_views)
        root = Path(self.db.path).parent
        log.info("embedding %d catalogue image(s) the bundle does not carry, on this device", len(todo))
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        for i in range(0, len(todo), LOCAL_EMBED_BATCH):
            imgs, kinds = [], []
            for image_id, part_number, path, kind in todo[i:i + LOCAL_EMBED_BATCH]:
                full = Path(path) if path and Path(path).is_absolute() else root / (path or "")
                try:
                    if not path:
                        raise ImageError(str(full), "no file recorded for it")
                    imgs.append(load_image(full, draft_size=self.spec.draft_size))
                except ImageError as exc:
                    log.warning("catalogue image %s of part %s has no vector: %s", image_id, part_number, exc)
                    continue
                ids.append(image_id)
                kinds.append(views if kind in VIEWED_KINDS else "none")
            if imgs:
                vecs.append(embed_with_views(self.embed, imgs, kinds))
        if not ids:
            return 0
        with self.db.transaction():  # under the write lock: a sync may have committed meanwhile
            if self._hub_kept() or (self.db.get_meta("bundle_id") or self.bundle_id) != self.bundle_id:
                raise UsageError(f"{self.db.path}: a sync changed this catalogue meanwhile; nothing was stored")
            have = {r[0] for r in self.db.db.conn.execute("SELECT image_id FROM embeddings WHERE bundle_id = ?",
                                                          (self.bundle_id,))}
            keep = [k for k, iid in enumerate(ids) if iid not in have]
            if keep:
                self.db.upsert_embeddings([ids[k] for k in keep], np.concatenate(vecs)[keep], self.bundle_id)
                self.db.set_meta(LOCAL_VECTORS_KEY, json.dumps({"bundle_id": self.bundle_id,
                                                                "count": self._local_vectors() + len(keep)}))
        self._loaded = None  # this connection's own commit does not move SQLite's data_version: reload
        self.refresh()
        log.info("stored %d catalogue vector(s) made on this device for bundle %s", len(keep), self.bundle_id)
        return len(keep)

    def _local_vectors(self) -> int:
        """How many of this bundle's stored vectors were made on this device (an over-count after parts were
        deleted only makes :meth:`import_bundle_embeddings` look at the bundle's rows again)."""
        try:
            doc = json.loads(self.db.get_meta(LOCAL_VECTORS_KEY) or "{}")
            return int(doc["count"]) if doc.get("bundle_id") == self.bundle_id else 0
        except (ValueError, TypeError, KeyError, AttributeError):
            return 0

    def _hub_kept(self) -> bool:
        return bool(self.db.get_meta("hub_id") or self.db.get_meta("managed_by_hub"))

    def _mark_checked(self, checked: str) -> None:
        """Remember that this catalogue version holds every vector of the bundle it can (a read-only catalogue on a
        full disk just checks again next time)."""
        try:
            with self.db.transaction():
                self.db.set_meta(VECTORS_CHECKED_KEY, checked)
        except StorageError:
            pass

    def refresh(self) -> bool:
        """Re-open the index when the catalogue changed since it was loaded; True if it did.

        Changed: another process committed to it (a sync; SQLite's data_version), or its lineage or version moved.
        The version alone missed a snapshot that replaced the catalogue at the same version (another lineage,
        another hub): the old labels kept answering with parts no longer there."""
        key = (self.db.data_version(), self.db.catalogue_epoch, self.db.catalogue_version)
        if self.index is not None and self.index.stamp is not None and \
                self.index.stamp.catalogue_version == key[2] and self._label_part and key == self._loaded:
            return False
        self.index = VectorIndex.open(self.db, self.bundle_id, self.bundle.manifest.get("index"),
                                      index_dir=self.index_dir, engine=self.index_engine)
        if self.index.dim != self.bundle.embedding_dim:
            raise InputError(f"index dimension {self.index.dim} != bundle embedding_dim {self.bundle.embedding_dim}")
        mapping = self.db.embedding_labels(self.bundle_id)
        self._label_part = {lab: pn for lab, (_iid, pn) in mapping.items()}
        self._label_image = {lab: iid for lab, (iid, _pn) in mapping.items()}
        self._part_labels = {}
        for lab, pn in sorted(self._label_part.items()):
            self._part_labels.setdefault(pn, []).append(lab)
        self._loaded = key
        return True

    # ---------------------------------------------------------------------- model
    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """Decoded PIL images -> (N, D) unit embeddings."""
        layout = self.backend.input_layout
        batch = np.stack([preprocess_image(img, self.spec, layout=layout) for img in images])
        out = self.backend.run(batch, layout=layout)
        emb = out["embedding"]
        if emb.ndim != 2 or emb.shape[1] != self.bundle.embedding_dim:
            raise InputError(f"model embedding has shape {emb.shape}, bundle says dim {self.bundle.embedding_dim}")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.all(np.isfinite(emb)) or np.any(norms == 0):
            raise InputError("model returned a zero or non-finite embedding")
        return (emb / norms).astype(np.float32)

    def decode(self, sources: Iterable[Any]) -> tuple[list[Any], list[dict[str, str]]]:
        """Decode photos with draft mode; undecodable ones are returned as skipped with their reason."""
        good, bad = [], []
        for src in sources:
            if hasattr(src, "mode") and hasattr(src, "size"):  # already a PIL image: the file decoder's colour rules
                good.append(to_rgb(src))                        # (transparency on white, 16-bit scaled, not clipped)
                continue
            try:
                good.append(load_image(src, draft_size=self.spec.draft_size))
            except ImageError as exc:
                log.debug("skipping %s", exc)  # returned in ``skipped``: the caller tells the engineer once
                bad.append({"path": exc.path, "reason": exc.reason})
        return good, bad

    # --------------------------------------------------------------------- search
    def allowed_labels(self, *, in_stock: bool | None, category: str | None, text: str | None,
                       site: str | None) -> list[int] | None:
        if in_stock is None and not category and not text:
            return None
        parts = self.db.search_parts(text=text, category=category, in_stock=in_stock, site=site, limit=None)
        return [lab for p in parts for lab in self._part_labels.get(p["part_number"], [])]

    def rank(self, embeddings: np.ndarray, *, top: int = 5, allowed: Sequence[int] | None = None,
             fusion_method: str | None = None, aggregate: str | None = None
             ) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Fuse views and rank parts: (part numbers, fused scores, best image id), best first.

        Returns at least ``top + 1`` parts when the catalogue has them (the runner-up feeds the margin).
        """
        if self.index is None:
            raise RuntimeError("Identifier.refresh() has not loaded an index")
        fusion_method = fusion_method or self.fusion_method
        aggregate = aggregate or self.aggregate
        fusion.check(aggregate, fusion_method)
        q = np.asarray(embeddings, np.float32)
        if fusion_method == "embedding" and len(q) > 1:
            q = fusion.fuse_embeddings(q)
        n_cand = max(top + 1, 10)
        n_live = len(allowed) if allowed is not None else len(self._label_part)
        k_img = max(64, 8 * n_cand)
        while True:
            # every part seen among each view's k_img nearest images is scored exactly; a part not seen scores at
            # most the mean over views of their k_img-th similarity (both aggregates are at most a part's best
            # image), so once the n_cand-th best exact score reaches that bound the top n_cand are final. Else
            # widen: parts with many images (or views that disagree) had crowded the right part out
            labels, sims = self.index.search(q, k_img, allowed_labels=allowed)
            cands: list[str] = []
            for v in range(len(q)):
                for pn in fusion.candidate_parts(labels[v], sims[v], self._label_part, len(labels[v])):
                    if pn not in cands:
                        cands.append(pn)
            if not cands:
                return [], np.zeros(0, np.float32), []
            part_labels = [self._part_labels[pn] for pn in cands]
            vectors = self.index.get_vectors([lab for labs in part_labels for lab in labs])  # one call
            scores, best = fusion.score_segments(q, vectors, [len(labs) for labs in part_labels], aggregate)
            fused = scores.mean(axis=0)
            exhausted = sims.shape[1] < k_img or k_img >= n_live
            if exhausted:
                break
            bound = float(sims[:, -1].mean())
            if len(cands) >= n_cand and float(np.sort(fused)[-n_cand]) >= bound:
                break
            k_img = min(4 * k_img, n_live)
        order = np.argsort(-fused, kind="stable")
        best_view = scores.argmax(axis=0)
        best_img = [self._label_image.get(self._part_labels[cands[j]][best[best_view[j], j]]) for j in order]
        return [cands[j] for j in order], fused[order].astype(np.float32), best_img

    def identify(self, sources: Sequence[Any], *, top: int = 5, in_stock: bool | None = None,
                 category: str | None = None, text: str | None = None, site: str | None = None) -> IdentifyResult:
        """Identify ONE part from one or more photos of it (paths, bytes, streams or PIL images)."""
        if top < 1:
            raise UsageError(f"top must be >= 1, got {top}")
        if not sources:
            raise UsageError("identify needs at least one photo")
        site = site if site is not None else self.site
        if in_stock and site is None:
            raise UsageError("--in-stock needs a site (pass --site or set meta 'site' by syncing)")
        t = {"start": time.perf_counter()}
        self.refresh()
        images, skipped = self.decode(sources)
        if not images:
            first = skipped[0]
            raise ImageError(first["path"], first["reason"] + (f" (and {len(skipped) - 1} more photos unreadable)"
                                                               if len(skipped) > 1 else ""))
        t["decode"] = time.perf_counter()
        emb = self.embed(images)
        t["model"] = time.perf_counter()
        allowed = self.allowed_labels(in_stock=in_stock, category=category, text=text, site=site)
        parts, scores, best_img = self.rank(emb, top=top, allowed=allowed)
        runner_up = self._runner_up(emb, parts, scores, filtered=allowed is not None)
        t["search"] = time.perf_counter()
        result = self._result(parts, scores, best_img, runner_up, top=top, views=len(images), skipped=skipped,
                              site=site, filters={"in_stock": in_stock, "category": category, "text": text})
        t["end"] = time.perf_counter()
        result.timings_ms = {"decode": 1e3 * (t["decode"] - t["start"]), "model": 1e3 * (t["model"] - t["decode"]),
                             "search": 1e3 * (t["search"] - t["model"]), "total": 1e3 * (t["end"] - t["start"])}
        return result

    def _runner_up(self, emb: np.ndarray, parts: list[str], scores: np.ndarray, *, filtered: bool) -> float | None:
        """The best score of any OTHER catalogue part than the top one shown, filters or not: the confidence that
        the photo shows that part is judged against every part it could be (a filter that leaves one candidate,
        or hides the right part, must not make a wrong part look certain). ``None`` when the catalogue holds no
        other part: the calibration has nothing to compare with."""
        if not parts:
            return None
        if not filtered:
            return float(scores[1]) if len(scores) > 1 else None
        everyone, all_scores, _ = self.rank(emb, top=1)
        others = [float(sc) for pn, sc in zip(everyone, all_scores) if pn != parts[0]]
        return others[0] if others else None

    def _result(self, parts: list[str], scores: np.ndarray, best_img: list[str | None], runner_up: float | None, *,
                top: int, views: int, skipped: list[dict[str, str]], site: str | None,
                filters: dict[str, Any]) -> IdentifyResult:
        cal = self.calibration
        # the parts, their stock and the catalogue version and hub time they date from, from ONE snapshot (a sync
        # committing between separate reads showed stock beside another version's hub time, an audit); every
        # site's stock (``inventory``; a tablet synced with a hub holds its own site's only)
        with self.db.read():
            info = self.db.parts_by_number(parts[:top + 1])
            version, hub_time = self.db.catalogue_version, self.db.get_meta("hub_time")
        keep = [i for i, pn in enumerate(parts) if i > top or pn in info]
        if len(keep) < len(parts):  # deleted by a sync since this ranking's catalogue was read: not shown
            log.info("%d ranked parts were deleted meanwhile: not shown", len(parts) - len(keep))
            if keep[:1] != [0]:
                runner_up = float(scores[keep[1]]) if len(keep) > 1 else None
            parts, scores, best_img = [parts[i] for i in keep], scores[keep], [best_img[i] for i in keep]
        conf = None
        if len(parts) and runner_up is not None:
            conf = float(cal.confidence(float(scores[0]), runner_up)[0])
        status = STATUS_MATCH if conf is not None and conf >= cal.threshold else STATUS_NONE
        matches = []
        for i, pn in enumerate(parts[:top]):
            p = info.get(pn, {})
            inv = p.get("inventory", [])
            here = next((r for r in inv if r["site"] == site), None) if site is not None else None
            c = conf if i == 0 else None  # calibrated for the top answer only
            matches.append(PartMatch(
                rank=i + 1, part_number=pn, name=p.get("name"), category=p.get("category"),
                similarity=round(float(scores[i]), 6), confidence=None if c is None else round(c, 6),
                best_image_id=best_img[i], size_mm=p.get("size_mm"), look_alike_group=p.get("look_alike_group"),
                stock=None if here is None else here["stock"], bin=None if here is None else here["bin"],
                stock_as_of=None if here is None else here["as_of"], site=site, inventory=inv))
        look = self._look_alike(matches)
        return IdentifyResult(
            status=status, matches=matches, confidence=None if conf is None else round(conf, 6),
            threshold=cal.threshold, calibrated=not cal.info.get("uncalibrated", False),
            needs_scale_photo=look is not None and look["differ_by"] == "size", look_alike=look,
            needs_detail_photo=look is not None and look["differ_by"] == "detail", views=views, skipped=skipped,
            bundle_id=self.bundle_id, catalogue_version=version,
            hub_time=hub_time, site=site, filters=filters, timings_ms={})

    @staticmethod
    def _look_alike(matches: list[PartMatch]) -> dict[str, Any] | None:
        """Top candidates that share a look-alike group: ``differ_by`` ``size`` (ask for a measurement or a
        scale photo) when any of them has another catalogue size, else ``detail`` (same size: a label or
        marking tells them apart; ask for a close-up as another view)."""
        if len(matches) < 2 or not matches[0].look_alike_group:
            return None
        top = matches[0]
        close = [m for m in matches[1:] if m.similarity >= top.similarity - LOOK_ALIKE_MARGIN
                 and m.look_alike_group == top.look_alike_group]
        if not close:
            return None
        other_size = [m for m in close if m.size_mm != top.size_mm]
        group = [top, *(other_size or close)]
        return {"group": top.look_alike_group, "part_numbers": [m.part_number for m in group],
                "sizes_mm": [m.size_mm for m in group], "differ_by": "size" if other_size else "detail"}

"""The hub: master catalogue, images, active bundle and signing key in one folder.

Layout of a hub folder::

    hub.json        settings (signing key path, public URL)
    hub.db          the catalogue, devices and uploads (:class:`~sync.hub.store.SqliteHubStore`)
    secret.bin      HMAC secret for device tokens (0600)
    keyring.json    public keys devices must trust (the hub's own + bundle signers)
    images/         catalogue images, named by content (``img-<sha256 prefix>.<ext>``)
    thumbs/         160 px JPEG thumbnails
    bundles/        installed bundles (``<bundle_id>/`` and ``<bundle_id>.tar``)
    packages/<site> signed deltas and snapshots (immutable, made on demand)
    uploads/        photos uploaded by devices
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from edge_app import spotcheck
from edge_app.atomic import atomic_write_bytes, atomic_write_json
from edge_app.errors import ImageError, InputError, IntegrityError, UsageError
from edge_app.runtime.importer import (check_part_number, parse_size_mm, parse_stock, read_images_csv,
                                      read_parts_csv)
from edge_app.signing import Keyring, SigningKey
from edge_app.storage import free_bytes

from ..apply import kill_point
from ..embedder import Embedder, EmbedderFactory, bundle_embedder
from .auth import check_name, load_or_create_secret
from .store import PART_FIELDS, Change, SqliteHubStore, utcnow

log = logging.getLogger(__name__)

HUB_FORMAT = "partlens-hub/1"
THUMB_SIZE = 160
EMBED_BATCH = 32


def _checked_vectors(vecs: Any, n: int) -> np.ndarray:
    """An embedder's output as float32 (n, D), or :class:`UsageError`."""
    v = np.asarray(vecs, dtype=np.float32)
    if v.ndim != 2 or len(v) != n or not np.all(np.isfinite(v)):
        raise UsageError(f"embedder returned {v.shape} for {n} images (or non-finite values)")
    return v


def thumbnail_jpeg(img: Any) -> bytes:
    """The catalogue thumbnail of a decoded image (the JPEG bytes a tablet stores)."""
    import io

    t = img.copy()
    t.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    t.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class Hub:
    """One hub folder. Open with :meth:`open` (or :meth:`init` to create one)."""

    def __init__(self, root: str | os.PathLike[str], *, embedder_factory: EmbedderFactory | None = None) -> None:
        self.root = Path(root)
        cfg_path = self.root / "hub.json"
        if not cfg_path.is_file():
            raise InputError(f"{self.root}: not a hub folder (no hub.json; run `partlens hub init`)")
        try:
            self.config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(self.config, dict):
            raise InputError(f"{cfg_path}: not a hub settings object (a JSON {type(self.config).__name__})")
        if self.config.get("format") != HUB_FORMAT:
            raise InputError(f"{cfg_path}: unknown hub format {self.config.get('format')!r}")
        self.store = SqliteHubStore(self.root / "hub.db")
        self.secret = load_or_create_secret(self.root / "secret.bin")
        self.keyring = Keyring.load(self.root / "keyring.json")
        self._scope_legacy_keyring()
        self._key: SigningKey | None = None
        self.embedder_factory: EmbedderFactory = embedder_factory or bundle_embedder
        self._embedder: Embedder | None = None

    # -- setup ------------------------------------------------------------------------------
    @classmethod
    def init(cls, root: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
             trust: Iterable[str | os.PathLike[str]] = (), url: str | None = None,
             embedder_factory: EmbedderFactory | None = None) -> "Hub":
        """Create a hub folder that signs packages with the private key at ``key_path``."""
        root = Path(root)
        if (root / "hub.json").exists():
            raise UsageError(f"{root} is already a hub folder")
        if url is not None and not url.startswith(("http://", "https://")):  # add-device would refuse it later
            raise UsageError(f"--url must start with http:// or https:// (the address tablets reach), got {url!r}")
        key = SigningKey.load(key_path)
        # the hub's key signs its own documents; bundle signers are trusted explicitly (--trust / `hub trust`;
        # the hub's own public key among them lets it sign bundles too, as on a small site or in the demo)
        keyring = Keyring({key.key_id: key.public_raw}, roles={key.key_id: ["hub"]})
        for p in trust:
            other = Keyring.load(p)
            for kid in other.key_ids:
                keyring.add(_raw(other, kid), expected_id=kid, roles=["bundle"])
        root.mkdir(parents=True, exist_ok=True)
        # the hub folder is the admin's alone: the database (tokens' hashes, engineers' notes) and the field photos
        # were readable by every user of the hub computer (an audit; only secret.bin and the TLS key were 0600)
        os.chmod(root, 0o700)
        for sub in ("images", "thumbs", "bundles", "packages", "uploads"):
            (root / sub).mkdir(exist_ok=True)
        SqliteHubStore(root / "hub.db", create=True).close()
        load_or_create_secret(root / "secret.bin")
        keyring.save(root / "keyring.json")
        atomic_write_json(root / "hub.json", {"format": HUB_FORMAT, "key_path": str(Path(key_path).resolve()),
                                              "key_id": key.key_id, "url": url, "created_at": utcnow()})
        log.info("hub created at %s (signing key %s)", root, key.key_id)
        return cls(root, embedder_factory=embedder_factory)

    def _scope_legacy_keyring(self) -> None:
        """A keyring from before key roles trusted every key for everything (an export key could sign the
        hub's TLS offers, the hub's key model bundles): give each key the role it has had. The hub's own key
        signs hub documents, and bundles too if it signed one this hub holds; every other key signs bundles."""
        ring, hub_kid = self.keyring, self.config.get("key_id")
        if not len(ring) or any(ring.roles(k) is not None for k in ring.key_ids) or hub_kid not in ring:
            return
        signed_bundles = set()
        for manifest in (self.root / "bundles").glob("*/manifest.json"):
            try:
                signed_bundles.add(json.loads(manifest.read_text()).get("key_id"))
            except (OSError, ValueError, AttributeError):
                continue
        scoped = Keyring()
        for kid in ring.key_ids:
            roles = ["hub", "bundle"] if kid == hub_kid and kid in signed_bundles else \
                ["hub"] if kid == hub_kid else ["bundle"]
            scoped.add(ring.public_key(kid), expected_id=kid, roles=roles)
        try:
            scoped.save(self.root / "keyring.json")
        except OSError as exc:  # a read-only hub folder (a backup being inspected): scope in memory only
            log.warning("cannot save the role-scoped keyring (%s); using it for this run only", exc)
        self.keyring = scoped
        log.info("hub keyring scoped by role: %s", {k: sorted(scoped.roles(k) or ()) for k in scoped.key_ids})

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = SigningKey.load(self.config["key_path"])
        return self._key

    def trust(self, keyring_path: str | os.PathLike[str]) -> list[str]:
        """Trust the public keys of another keyring (the export workstation's) to sign model bundles; tablets
        enrolled from now on get them. The hub's own public key here lets the hub's key sign bundles too."""
        other = Keyring.load(keyring_path)
        again = sorted(set(other.key_ids) & set(self.revoked_keys()))
        if again:  # tablets never take a revoked key back (a review: its bundles then failed every sync)
            raise UsageError(f"key(s) {', '.join(again)} were revoked with `hub untrust` and stay revoked on the "
                             "tablets: make a new key (`partlens keys init`) and trust that")
        new = [kid for kid in other.key_ids if kid not in self.keyring]
        for kid in other.key_ids:
            self.keyring.add(_raw(other, kid), expected_id=kid, roles=["bundle"])
        self.keyring.save(self.root / "keyring.json")
        if new:
            self.needs_backup(f"key(s) {', '.join(new)} trusted")
        enrolled = [d["name"] for d in self.store.list_devices() if not d.get("revoked")]
        if new and enrolled:  # tablets learn bundle keys at enrolment only (a hub-signed key would let the
            log.warning(       # network-facing hub's key authorise model signers)
                "%d tablet(s) were enrolled before key(s) %s: they install bundles signed by it only after "
                "`partlens hub add-device --reissue` and enrolling them again (keep a second export key trusted "
                "from the start, so a leaked one can be `hub untrust`ed without that)", len(enrolled), ", ".join(new))
        return other.key_ids

    def untrust(self, key_id: str) -> dict[str, Any]:
        """Stop trusting a bundle-signing key (a leaked or retired export key): it leaves the hub's keyring, new
        enrolments do not get it, and every tablet drops it at its next sync (the revocation travels in the
        hub-signed settings). Refused for the hub's own key, and while the active bundle is signed by it (the
        tablets would be left with a model they cannot verify): `set-bundle` one signed by another key first."""
        kid = str(key_id).strip()
        if kid not in self.keyring:
            if kid in self.revoked_keys():  # done already (or stopped after recording the revocation)
                return {"untrusted": kid, "revoked_keys": self.revoked_keys(), "trusted_keys": self.keyring.key_ids}
            raise UsageError(f"key {kid!r} is not trusted by this hub (trusted: {', '.join(self.keyring.key_ids)})")
        if kid == self.config.get("key_id"):
            raise UsageError(f"{kid} is the hub's own key (it signs packages and settings); a hub key is replaced "
                             "by a new hub and enrolling the tablets again")
        active = self.bundle_id
        if active is not None:
            signer = self._bundle_signer(active)
            if signer == kid:
                raise UsageError(f"the active bundle {active} is signed by {kid}: `partlens hub set-bundle` a bundle "
                                 "signed by another trusted key first, so tablets keep a model they can verify")
        # the revocation first: stopped before the keyring is saved, a re-run finishes it (the other way round, the
        # key was untrusted but never revoked, and a re-run said "not trusted")
        revoked = sorted({*self.revoked_keys(), kid})
        self.store.set_setting("revoked_keys", revoked)  # a settings change: tablets take it at their next sync
        self.keyring.remove(kid)
        self.keyring.save(self.root / "keyring.json")
        log.warning("key %s is no longer trusted; tablets drop it at their next sync", kid)
        self.needs_backup(f"key {kid} revoked")
        return {"untrusted": kid, "revoked_keys": revoked, "trusted_keys": self.keyring.key_ids}

    def needs_backup(self, what: str) -> None:
        """Record a change a restore of an earlier backup would undo without a word (a certificate rotation: the
        tablets that followed it no longer trust the restored one; a revoked tablet: accepted again; a key trusted
        or revoked), for `hub status`, and say to take a backup (an audit: a restore undid both, silently)."""
        since = list(self.store.get_meta(CHANGES_SINCE_BACKUP, []) or [])
        since.append({"what": what, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")})
        self.store.put_meta(CHANGES_SINCE_BACKUP, since[-50:])
        log.warning("take a new backup (`partlens hub backup`): restoring an earlier one would undo this (%s)", what)

    def revoked_keys(self) -> list[str]:
        """The keys `untrust` revoked (sent to tablets in the signed settings)."""
        return [str(k) for k in (self.store.get_meta("revoked_keys", []) or [])]

    def _bundle_signer(self, bundle_id: str) -> str | None:
        try:
            return json.loads((self.bundle_dir(bundle_id) / "manifest.json").read_text()).get("key_id")
        except (OSError, ValueError, AttributeError):
            return None

    # -- paths ------------------------------------------------------------------------------
    def image_path(self, row: Mapping[str, Any]) -> Path:
        return self.root / "images" / row["path"]

    def thumb_path(self, image_id: str) -> Path:
        return self.root / "thumbs" / f"{image_id}.jpg"

    def bundle_dir(self, bundle_id: str) -> Path:
        return self.root / "bundles" / bundle_id

    def bundle_tar(self, bundle_id: str) -> Path:
        return self.root / "bundles" / f"{bundle_id}.tar"

    # -- field policy -----------------------------------------------------------------------
    def policy(self) -> dict[str, float]:
        """What tablets follow, sent with every sync plan: ``spot_check_rate``, the share of identifications
        picked at random for the engineer to label (:mod:`edge_app.spotcheck`; 0 = off)."""
        return {"spot_check_rate": float(self.store.get_meta("spot_check_rate", spotcheck.DEFAULT_RATE))}

    def set_policy(self, *, spot_check_rate: float | None = None) -> dict[str, float]:
        """Change the field policy (tablets take it at their next sync); returns it."""
        if spot_check_rate is not None:
            rate = spotcheck.check_rate(spot_check_rate)
            self.store.set_setting("spot_check_rate", rate)
            log.info("spot-check rate is now %g; tablets follow it from their next sync", rate)
        return self.policy()

    # -- embedding --------------------------------------------------------------------------
    @property
    def bundle_id(self) -> str | None:
        return self.store.get_meta("bundle_id")

    def _check_still_active(self, emb: Embedder | None, what: str) -> None:
        """Inside a catalogue change: vectors made before it began must be the active bundle's. A `set-bundle` that
        committed meanwhile (another process) would otherwise leave them under the old model, where tablets never
        search them (an audit: four parts a tablet could not identify, and no command to repair it)."""
        active = self.store.get_meta("bundle_id")
        made_with = emb.bundle_id if emb is not None else None
        if active != made_with:
            raise UsageError(f"{what}: the active bundle changed to {active} (another `hub set-bundle`) while this "
                             f"command embedded its images with {made_with}; nothing was written: run it again")

    def embedder(self) -> Embedder | None:
        """The active bundle's embedder, or None before any bundle is set."""
        bid = self.bundle_id
        if bid is None:
            return None
        if self._embedder is None or self._embedder.bundle_id != bid:
            self._embedder = self.embedder_factory(self.bundle_dir(bid), self.keyring)
            if self._embedder.bundle_id != bid:
                raise UsageError(f"embedder is for bundle {self._embedder.bundle_id}, the hub uses {bid}")
        return self._embedder

    def embed_rows(self, rows: Sequence[Mapping[str, Any]], embedder: Embedder) -> np.ndarray:
        """Embed stored catalogue images (batched), decoded like the device decodes a photo.

        The embedder's optional ``draft_size`` is the JPEG draft-decode size of its bundle: the device
        and the bundle builder decode with it, so the hub must too (else its vectors differ). Its
        optional ``catalogue_views`` is the bundle's view set: reference images (kind ``catalogue``)
        are stored as the mean of those views, as the bundle builder stored them; field photos once.
        """
        from edge_app.catalogue_views import VIEWED_KINDS, check_views, embed_with_views
        from edge_app.imageio import load_image

        draft = getattr(embedder, "draft_size", None)
        views = check_views(getattr(embedder, "catalogue_views", "none"))
        out, bad = [], []
        for i in range(0, len(rows), EMBED_BATCH):
            chunk = rows[i:i + EMBED_BATCH]
            imgs = []
            for r in chunk:
                try:
                    imgs.append(load_image(self.image_path(r), draft_size=draft))
                except ImageError as exc:  # every one of them named in one run (it stopped at the first)
                    bad.append(f"{r['part_number']}: {exc}")
            if bad:
                continue  # the rest are only decoded, to name every bad one
            per_image = [views if r["kind"] in VIEWED_KINDS else "none" for r in chunk]
            out.append(embed_with_views(lambda ims: _checked_vectors(embedder(ims), len(ims)), imgs, per_image))
        if bad:
            raise ImageError(self.root / "images", f"{len(bad)} catalogue image(s) cannot be decoded, nothing was "
                             "changed: " + "; ".join(bad[:10]) + ("; ..." if len(bad) > 10 else "")
                             + " (import the part's picture again, or delete the part)")
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_rows_cached(self, rows: Sequence[Mapping[str, Any]], embedder: Embedder, *,
                          save: bool = True) -> np.ndarray:
        """:meth:`embed_rows`, keeping the vectors of a bundle that is not active yet in ``cache/`` (keyed by the
        content-named image id and its kind), so ``set-bundle`` after ``evaluate-bundle`` embeds the catalogue
        once, not twice (minutes on a 10,000-image catalogue). ``save=False`` only reads the cache (set-bundle,
        which empties it)."""
        bid = getattr(embedder, "bundle_id", None)
        if not bid or not rows:
            return self.embed_rows(rows, embedder)
        path = self.root / "cache" / f"embeddings-{bid}.npz"
        cache: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                cache = dict(zip((str(k) for k in z["keys"]), z["vectors"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # cut or foreign: embed again
            log.warning("embedding cache %s unusable (%s); embedding again", path, exc)
        keys = [f"{r['image_id']}|{r['kind']}" for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in cache]
        if missing:
            vecs = self.embed_rows([rows[i] for i in missing], embedder)
            cache.update({keys[i]: vecs[j] for j, i in enumerate(missing)})
        if missing and save:
            buf = io.BytesIO()
            np.savez(buf, keys=np.array(list(cache), dtype=str), vectors=np.stack(list(cache.values())))
            atomic_write_bytes(path, buf.getvalue())
        log.info("bundle %s: %d of %d catalogue images embedded now, %d from the cache", bid, len(missing), len(rows),
                 len(rows) - len(missing))
        return np.stack([cache[k] for k in keys]).astype(np.float32)

    def clear_embedding_cache(self) -> None:
        for f in (self.root / "cache").glob("embeddings-*.npz"):
            f.unlink(missing_ok=True)

    # -- images -----------------------------------------------------------------------------
    def store_image(self, src: str | os.PathLike[str] | bytes, part_number: str, kind: str = "catalogue",
                    what: str | None = None) -> dict[str, Any]:
        """Copy an image into the hub (content-named), make its thumbnail; return its row (not yet in the DB)."""
        from edge_app.imageio import FORMAT_SUFFIX, image_format, load_image, read_image_file

        # the file's checks (regular file, size) before it is read: a link to /dev/zero was read until the OOM killer
        data = src if isinstance(src, bytes) else read_image_file(src)
        digest = hashlib.sha256(data).hexdigest()
        image_id, row = self._image_row(digest, part_number)
        known = self._stored_as(row, digest, part_number, kind)
        if known is not None:  # this part's picture, stored and checked before: a nightly re-import decodes nothing
            return known
        # validates (ImageError names the file), decoded only as big as the thumbnail needs: a crafted 80 MP PNG
        # took 1.6 GB decoded whole
        try:
            img = load_image(data, draft_size=(2 * THUMB_SIZE, 2 * THUMB_SIZE))
        except ImageError as exc:  # named as the caller knows it (the file, or "upload <uuid>"), not "<bytes>"
            raise ImageError((what or "upload") if isinstance(src, bytes) else src, exc.reason) from None
        # the suffix says what the file holds (an approved PNG upload was stored and exported as .jpg)
        suffix = FORMAT_SUFFIX.get(image_format(data) or "", ".jpg")
        rel = f"img-{digest[:24]}{suffix}"  # the file is named by its content (one copy however many parts use it)
        dst = self.root / "images" / rel
        thumb = self.thumb_path(image_id)
        for f in (dst, thumb):  # reused (an earlier failed import stored it): young again, so the nightly orphan
            try:               # sweep (prune_orphan_files) does not take it while this import runs (a review)
                os.utime(f)
            except FileNotFoundError:
                pass
        if not dst.exists():
            atomic_write_bytes(dst, data)
        if not thumb.exists():
            atomic_write_bytes(thumb, thumbnail_jpeg(img))
        # the thumbnail's hash travels in the signed packages: tablets store only this thumbnail for this image
        thumb_digest = hashlib.sha256(thumb.read_bytes()).hexdigest()
        return {"image_id": image_id, "part_number": part_number, "path": rel, "kind": kind, "sha256": digest,
                "thumb_sha256": thumb_digest}

    def _stored_as(self, row: Mapping[str, Any] | None, digest: str, part_number: str,
                   kind: str) -> dict[str, Any] | None:
        """``row`` (the live image row of this picture's id) as ``part_number``'s image of ``kind``, if it is
        stored whole (file and thumbnail present; both made young again for the orphan sweep), else None."""
        if row is None or row["part_number"] != part_number or row["kind"] != kind or row.get("sha256") != digest \
                or not row.get("thumb_sha256"):
            return None
        files = (self.root / "images" / str(row["path"]), self.thumb_path(row["image_id"]))
        try:
            for f in files:
                os.utime(f)
        except FileNotFoundError:
            return None
        return {k: row[k] for k in ("image_id", "part_number", "path", "kind", "sha256", "thumb_sha256")}

    def _image_row(self, digest: str, part_number: str) -> tuple[str, dict[str, Any] | None]:
        """An image row's id, and the live row under it if any: named by its content, unless that id is a live image
        of ANOTHER part (the same picture for two part numbers: a superseded number, a placeholder photo), which
        then gets an id of its own for this part. Before, the second part took the first one's only image without a
        word (an audit)."""
        base = f"img-{digest[:24]}"
        held = self.store.image(base)
        if held is None or held["part_number"] == part_number:
            return base, held
        scoped = scoped_image_id(digest, part_number)
        return scoped, self.store.image(scoped)

    def prune_orphan_files(self, grace_hours: float = 24.0, now: float | None = None) -> dict[str, int]:
        """Delete image and thumbnail files no image row refers to, once older than ``grace_hours``: an import
        or approve that failed on a later image, or was killed, had stored the earlier ones (content-named,
        reused by a re-run, but otherwise kept forever and backed up). The grace spares the files of an import
        another process is running."""
        if not 0 <= grace_hours <= 24 * 36_500:
            raise InputError(f"grace must be 0..{24 * 36_500} hours, got {grace_hours}")
        cutoff = (time.time() if now is None else now) - grace_hours * 3600
        referenced = self.store.image_files()
        removed = freed = 0
        for folder in ("images", "thumbs"):
            for f in sorted((self.root / folder).glob("*")):
                rel = f"{folder}/{f.name}"
                if rel in referenced or f.name.startswith(".") or not f.is_file():
                    continue  # (dot files: atomic writes in progress)
                try:
                    st = f.stat()
                    if st.st_mtime > cutoff:
                        continue
                    f.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
                freed += st.st_size
        if removed:
            log.warning("deleted %d image/thumbnail file(s) no catalogue image refers to (%d bytes; left by a "
                        "failed or killed import or approve)", removed, freed)
        return {"orphan_files_removed": removed, "orphan_bytes_freed": freed}

    def add_images(self, rows: Sequence[dict[str, Any]], *, also: Callable[[Change], None] | None = None) -> int:
        """Add stored image rows to the catalogue (one version), embedding them with the active bundle. ``also``
        writes more in the same transaction (e.g. the review of the upload the image came from)."""
        emb = self.embedder()
        vecs = self.embed_rows(rows, emb) if emb is not None and rows else None
        with self.store.change() as ch:
            if rows:
                self._check_still_active(emb, "adding images")
            for r in rows:
                if self.store.part(r["part_number"]) is None:
                    raise InputError(f"image {r['image_id']}: unknown part {r['part_number']!r}")
            ch.upsert_images(rows)
            if vecs is not None and emb is not None:
                ch.put_embeddings([r["image_id"] for r in rows], vecs, emb.bundle_id)
            if also is not None:
                also(ch)
            return ch.version

    # -- catalogue edits --------------------------------------------------------------------
    def add_part(self, part: Mapping[str, Any], *, inventory: Mapping[str, tuple[int | None, str | None]] = {},
                 images: Sequence[str | os.PathLike[str]] = (), also: Callable[[Change], None] | None = None) -> int:
        """Create or update one part with its stock per site and catalogue images; return the new version.
        ``also`` writes more in the same transaction (e.g. the review of the report the part was made from)."""
        if not str(part.get("part_number") or "").strip():
            raise UsageError("a part needs a part_number")
        pn = check_part_number(part.get("part_number"), "part")
        unknown = set(part) - set(PART_FIELDS)
        if unknown:
            raise UsageError(f"unknown part field(s) {sorted(unknown)}; known: {list(PART_FIELDS)}")
        if part.get("size_mm") is not None:
            part = dict(part, size_mm=parse_size_mm(part["size_mm"], f"part {pn}"))
        for site, (stock, _bin) in inventory.items():
            parse_stock(stock, f"part {pn}: stock at {site}")
        self.check_sites(sorted(inventory), f"part {pn}")
        rows = [self.store_image(p, pn) for p in images]
        emb = self.embedder()
        vecs = self.embed_rows(rows, emb) if emb is not None and rows else None
        now = utcnow()
        with self.store.change() as ch:
            if rows:
                self._check_still_active(emb, f"part {pn}")
            ch.upsert_parts([dict(part, part_number=pn)])
            # a bin left out (None) stays as it is: `--stock site_a=7` changes the count, not where the part lies;
            # an empty one ("", `--stock site_a=7:`) clears it
            ch.upsert_inventory([{"part_number": pn, "site": check_name(s, "site"), "stock": st, "as_of": now,
                                  **({"bin": b or None} if b is not None else {})} for s, (st, b) in inventory.items()])
            ch.upsert_images(rows)
            if vecs is not None and emb is not None:
                ch.put_embeddings([r["image_id"] for r in rows], vecs, emb.bundle_id)
            if also is not None:
                also(ch)
            return ch.version

    def set_stock(self, part_number: str, site: str, stock: int | None, bin: str | None = None) -> int:
        """A part's stock at ``site``; its bin too if given (None keeps the bin it has, "" clears it)."""
        if self.store.part(part_number) is None:
            raise InputError(f"unknown part {part_number!r}")
        self.check_sites([site], f"part {part_number}")
        with self.store.change() as ch:
            ch.upsert_inventory([{"part_number": part_number, "site": check_name(site, "site"), "stock": stock,
                                  "as_of": utcnow(), **({"bin": bin or None} if bin is not None else {})}])
            return ch.version

    def retire_site(self, site: str) -> dict[str, Any]:
        """Delete every stock row of ``site`` (a site the ERP no longer exports, or renamed): its tablets showed
        the last imported stock for ever (an audit, 23rd session). One catalogue version."""
        if site not in self.store.stock_sites():
            raise InputError(f"no stock rows at site {site!r} (sites with stock: "
                             f"{', '.join(sorted(self.store.stock_sites())) or 'none'})")
        with self.store.change() as ch:
            n = ch.delete_site_stock(site)
            version = ch.version
        tablets = sorted(d["name"] for d in self.store.list_devices() if d["site"] == site and not d["revoked"])
        log.warning("site %s: %d stock rows removed; %s", site, n,
                    f"its tablets ({', '.join(tablets)}) show no stock from their next sync" if tablets
                    else "no tablet is enrolled for it")
        return {"site": site, "stock_rows_removed": n, "catalogue_version": version, "tablets": tablets}

    def delete_parts(self, part_numbers: Sequence[str]) -> int:
        missing = [p for p in part_numbers if self.store.part(p) is None]
        if missing:
            raise InputError(f"unknown part(s): {', '.join(missing)}")
        with self.store.change() as ch:
            ch.delete_parts(part_numbers)
            return ch.version

    def import_csv(self, parts_csv: str | os.PathLike[str], images_csv: str | os.PathLike[str] | None = None,
                   *, kinds: Sequence[str] = ("catalogue",)) -> dict[str, int]:
        """Import the generated layout (``parts.csv``, ``images.csv``) as one catalogue version.

        Inventory comes from ``stock_<site>``/``bin_<site>`` column pairs; only images of ``kinds``
        (default: catalogue images, not field photos) are imported. Paths in ``images.csv`` are
        relative to its folder.
        """
        parts, inventory = _read_parts_csv(Path(parts_csv))
        self.check_sites(sorted({r["site"] for r in inventory}), parts_csv)
        missing_sites = self._sites_not_in(inventory, parts_csv)
        known = {p["part_number"] for p in parts}
        image_rows: list[dict[str, Any]] = []
        if images_csv is not None:  # read and checked as the device's `catalogue import` reads it
            bad: list[str] = []
            for row in read_images_csv(images_csv, kinds,
                                       lambda pn: pn in known or self.store.part(pn) is not None, parts_csv):
                try:
                    image_rows.append(self.store_image(Path(row["path"]), row["part_number"], kind=row["kind"]))
                except ImageError as exc:  # every bad photo in one run, not one per run
                    bad.append(str(exc))
            if bad:
                raise ImageError(images_csv, f"{len(bad)} image(s) cannot be imported, nothing was: "
                                 + "; ".join(bad[:10]) + ("; ..." if len(bad) > 10 else ""))
            image_rows = self._own_ids(image_rows)
        # what a re-import of the same export leaves as it is is not written again: a nightly ERP import re-stamped
        # (and re-embedded) every part and image, so every tablet re-fetched the whole catalogue (an audit)
        listed_parts, listed_images = len(parts), len(image_rows)
        parts = _changed(parts, self.store.live_rows("parts", "part_number", [p["part_number"] for p in parts]),
                         "part_number")
        emb = self.embedder()
        if image_rows:
            ids = [r["image_id"] for r in image_rows]
            # an image without this model's vector is embedded again; without a model (no bundle yet) there is
            # none to have, and set-bundle embeds every image (a review: every image was re-sent meanwhile)
            missing = set(ids) - self.store.embedded_ids(emb.bundle_id, ids) if emb is not None else set()
            redo = {r["image_id"] for r in _changed(image_rows, self.store.live_rows("images", "image_id", ids),
                                                    "image_id")} | missing
            image_rows = [r for r in image_rows if r["image_id"] in redo]
        vecs = self.embed_rows(image_rows, emb) if emb is not None and image_rows else None
        with self.store.change() as ch:
            if image_rows:
                self._check_still_active(emb, "import")
            others = [pn for pn in self.store.part_numbers() if pn not in known]
            ch.upsert_parts(parts)
            ch.upsert_inventory(inventory)
            ch.upsert_images(image_rows)
            if vecs is not None and emb is not None:
                ch.put_embeddings([r["image_id"] for r in image_rows], vecs, emb.bundle_id)
            version = ch.version
        changed = sorted({r["part_number"] for r in image_rows})
        stats: dict[str, int] = {}
        found = self.look_alikes(changed, stats) if changed else []
        _log_look_alikes(found)
        if others:  # an import adds and updates, never deletes: a renamed part stays live under its old number
            log.warning("%d part(s) of the catalogue are not in %s and stay live (e.g. %s); remove them with "
                        "`partlens hub delete-parts`", len(others), parts_csv, ", ".join(others[:5]))
        return {"version": version, "parts": listed_parts, "inventory": len(inventory), "images": listed_images,
                "parts_changed": len(parts), "images_changed": len(image_rows),
                # the most similar pairs (a catalogue the model sees as all alike printed 130 MB, an audit); each
                # part's own: `partlens hub look-alikes --part PN`
                "look_alikes": found[:LOOK_ALIKE_REPORT], "look_alike_pairs": stats.get("pairs", 0),
                "parts_not_in_file": len(others), "stock_sites_not_in_file": missing_sites}

    def known_sites(self) -> set[str]:
        """The sites the hub knows: those with stock rows and those tablets are enrolled for."""
        return self.store.stock_sites() | {d["site"] for d in self.store.list_devices()}

    def _sites_not_in(self, inventory: Sequence[Mapping[str, Any]], where: Any) -> list[str]:
        """Sites with stock at the hub and a tablet enrolled that a file WITH stock columns leaves out (dropped or
        renamed in the ERP export): said, since their tablets keep the last imported stock (`hub retire-site`)."""
        if not inventory:
            return []
        in_file = {r["site"] for r in inventory}
        enrolled = {d["site"] for d in self.store.list_devices() if not d["revoked"]}
        missing = sorted((self.store.stock_sites() & enrolled) - in_file)
        if missing:
            log.warning("%s: no stock column for site(s) %s, which have tablets: they keep the stock last imported "
                        "(dated then); if a site was renamed or closed, `partlens hub retire-site SITE`", where,
                        ", ".join(missing))
        return missing

    def check_sites(self, sites: Sequence[str], where: Any) -> None:
        """A file's stock sites against the hub's: one that differs from a known site only in case is refused
        (``stock_SITE_A`` made a second site no tablet of site_a sees, while the clerk meant site_a; an audit);
        a new one is said (its tablets see its stock once enrolled for it)."""
        known = self.known_sites()
        if not known:
            return
        by_fold = {k.casefold(): k for k in known}
        clash = [f"{s} (the hub has {by_fold[s.casefold()]})" for s in sites
                 if s not in known and s.casefold() in by_fold]
        if clash:
            raise InputError(f"{where}: stock site(s) that differ from the hub's only in case: {', '.join(clash)}; "
                             "rename the column(s) (stock_<site> as the hub writes it)")
        new = [s for s in sites if s not in known]
        if new:
            log.warning("%s: new site(s) %s (the hub knows %s); only tablets enrolled for a site see its stock",
                        where, ", ".join(new), ", ".join(sorted(known)))

    def _own_ids(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows of one import where one picture is listed for several parts: each part its own image row (the
        first keeps the content id), with its thumbnail; said, since identical pictures tie in identification."""
        first: dict[str, str] = {}
        out, shared = [], {}
        for row in rows:
            owner = first.setdefault(row["image_id"], row["part_number"])
            if owner != row["part_number"]:
                new_id = scoped_image_id(row["sha256"], row["part_number"])
                thumb = self.thumb_path(new_id)
                if not thumb.exists():
                    atomic_write_bytes(thumb, self.thumb_path(row["image_id"]).read_bytes())
                shared.setdefault(row["image_id"], {owner}).add(row["part_number"])
                row = dict(row, image_id=new_id)
            out.append(row)
        if shared:
            example = next(iter(shared.values()))
            log.warning("%d picture(s) are listed for more than one part (e.g. %s): each part gets its own copy, and "
                        "those parts tie when a photo matches it; a placeholder picture makes them all tie",
                        len(shared), ", ".join(sorted(example)[:5]))
        return out

    # -- bundles ----------------------------------------------------------------------------
    def set_bundle(self, bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Install a verified bundle, re-embed every catalogue image with its model, make it active.

        The new bundle id and all re-embedded vectors land in ONE catalogue version, so devices
        receive the bundle and its embeddings together. An older bundle version is refused.
        """
        from edge_app.bundle import load_bundle
        from export.bundle import write_archive

        try:
            bundle = load_bundle(bundle_dir, self.keyring)
        except IntegrityError as exc:
            if self.config.get("key_id") and f"key {self.config['key_id']}, which is trusted" in str(exc):
                raise IntegrityError(f"{exc}. The hub's key signs catalogue packages; sign bundles with the export "
                                     "key and `partlens hub trust` its public key (or trust the hub's own "
                                     "public key file to let it sign bundles too)") from None
            if "signed by unknown key" in str(exc):  # the fix, named (an audit: the admin had to guess it)
                raise IntegrityError(f"{exc}: if that is your export key, trust it first: `partlens hub trust "
                                     f"--hub {self.root} SIGNER.pub.json` (tablets enrolled before must then be "
                                     "enrolled again)") from None
            raise
        if bundle.manifest.get("key_id") in self.revoked_keys():
            raise UsageError(f"bundle {bundle.bundle_id} is signed by {bundle.manifest['key_id']}, which was revoked "
                             "with `hub untrust`: tablets refuse it; sign it with another trusted key")
        active = self.bundle_id
        if active is not None:
            cur = self.store.bundle(active)
            if cur and bundle.version <= int(cur["version"]) and bundle.bundle_id != active:
                raise UsageError(f"bundle {bundle.bundle_id} (version {bundle.version}) is not newer than the "
                                 f"active {active} (version {cur['version']}); rollbacks are refused: to go back to an "
                                 "earlier model, reissue it with a newer version on the export machine (`partlens "
                                 "bundle reissue OLD_BUNDLE --version N`) and set that")
            if bundle.bundle_id == active:
                raise UsageError(f"bundle {active} is already active")
        dst = self.bundle_dir(bundle.bundle_id)
        if not dst.exists():
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(bundle.root, tmp)
            os.rename(tmp, dst)
        load_bundle(dst, self.keyring)
        if not self.bundle_tar(bundle.bundle_id).exists():
            write_archive(dst, self.bundle_tar(bundle.bundle_id))
        embedder = self.embedder_factory(dst, self.keyring)
        rows = self.store.live_images()
        vecs = self.embed_rows_cached(rows, embedder, save=False)  # evaluate-bundle's vectors, not embedded again
        kill_point("hub_set_bundle_embedded")
        with self.store.change() as ch:
            now_active = self.store.get_meta("bundle_id")
            if now_active != active:  # another set-bundle committed meanwhile: checked again under the write lock
                raise UsageError(f"bundle {now_active} became active while {bundle.bundle_id} was being installed "
                                 "(another `hub set-bundle`); nothing was written: run it again if it is still newer")
            live = {r["image_id"] for r in self.store.live_images()}
            if live != {r["image_id"] for r in rows}:
                raise UsageError("the catalogue images changed while re-embedding; run set-bundle again")
            ch.clear_embeddings()
            if rows:
                ch.put_embeddings([r["image_id"] for r in rows], vecs, bundle.bundle_id)
            ch.set_meta("bundle_id", bundle.bundle_id)
            ch.set_meta("bundle_version", bundle.version)
            # in the same transaction: a hub killed after the switch must still know the active bundle's version
            # (rollback refusal, field-stats, evaluate-bundle read it)
            ch.add_bundle(bundle.bundle_id, bundle.version, bundle.manifest)
            version = ch.version
        kill_point("hub_set_bundle_committed")
        self._embedder = embedder
        self.clear_embedding_cache()  # its vectors are in the catalogue now; other candidates' are stale soon
        log.info("bundle %s active at catalogue version %d (%d images re-embedded)", bundle.bundle_id, version,
                 len(rows))
        return {"bundle_id": bundle.bundle_id, "version": bundle.version, "catalogue_version": version,
                "embedded": len(rows)}

    def look_alikes(self, parts: Sequence[str] | None = None,
                    stats: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Parts the active model embeds about as close as photos of one part (``sync.hub.lookalike``),
        for ``parts`` (default all), most similar first, each part's few most similar (``stats["pairs"]``: how
        many pairs in all); empty before any bundle is set."""
        from .lookalike import find_look_alikes

        bid = self.bundle_id
        if bid is None:
            return []
        found = find_look_alikes(self.store.part_embeddings(bid), parts=parts, groups=self.store.look_alike_groups(),
                                 stats=stats)
        return [dict(la.to_dict(), message=la.message()) for la in found]

    def status(self) -> dict[str, Any]:
        from .enrol import fleet
        from .tls import tls_status

        devices = fleet(self)
        return {"root": str(self.root), "url": self.config.get("url"), "catalogue_version": self.store.version(),
                "hub_id": self.store.get_meta("hub_id"), "catalogue_epoch": self.store.epoch(),
                "restored_from_backup_of": self.store.get_meta("restored_backup_taken_at"),
                "bundle_id": self.bundle_id, "key_id": self.config.get("key_id"), "trusted_keys": self.keyring.key_ids,
                "key_roles": {k: sorted(self.keyring.roles(k) or ("bundle", "hub")) for k in self.keyring.key_ids},
                "tls": tls_status(self.root), **self.store.counts(), "free_bytes": free_bytes(self.root),
                # a hub folder made before hubs were made 0700 (23rd session): its database and field photos are
                # readable by every user of this computer until `chmod 700` of the folder
                "folder_open_to_others": bool(self.root.stat().st_mode & 0o077),
                "policy": self.policy(),
                # what a restore of the last backup would undo (cleared by `hub backup`)
                "last_backup_at": self.store.get_meta(LAST_BACKUP_AT),
                "changes_since_backup": list(self.store.get_meta(CHANGES_SINCE_BACKUP, []) or []),
                "devices": {"enrolled": sum(not d["revoked"] for d in devices),
                            "stale": sorted(d["name"] for d in devices if d["stale"]),
                            "on_active_bundle": sum(bool(d["had_active_bundle"]) for d in devices if not d["revoked"]),
                            "last_came_over_plain_http": sorted(d["name"] for d in devices
                                                                if not d["revoked"] and d["last_via"] == "http")}}


#: meta keys: changes a restore of the last backup would undo (`Hub.needs_backup`), and when that backup was taken
CHANGES_SINCE_BACKUP = "changes_since_backup"
LAST_BACKUP_AT = "last_backup_at"

#: ``import`` logs this many unexpected look-alike pairs one by one, then one summary line.
LOOK_ALIKE_LOG_LINES = 5
#: ``import`` returns (and prints) this many look-alike pairs, the most similar, and the count of all
LOOK_ALIKE_REPORT = 100


def _log_look_alikes(found: Sequence[Mapping[str, Any]]) -> None:
    """Warn about look-alike pairs outside a shared group: the first few verbatim, the rest counted, so the
    first import of a large catalogue does not log one line per pair."""
    unexpected = [la for la in found if not la["same_group"]]
    for la in unexpected[:LOOK_ALIKE_LOG_LINES]:
        log.warning("%s", la["message"])
    if len(unexpected) > LOOK_ALIKE_LOG_LINES:
        log.warning("... and %d more look-alike pairs: see `partlens hub look-alikes`",
                    len(unexpected) - LOOK_ALIKE_LOG_LINES)


def _raw(keyring: Keyring, kid: str) -> bytes:
    return keyring.public_key(kid)


def _changed(rows: list[dict[str, Any]], stored: Mapping[str, Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows that are new or differ from their stored live row in a column they give."""
    return [r for r in rows if (s := stored.get(r[key])) is None or any(s.get(k) != v for k, v in r.items())]


def scoped_image_id(digest: str, part_number: str) -> str:
    """The id of a picture's image row for ``part_number`` when its content id belongs to another part."""
    scoped = hashlib.sha256(part_number.encode("utf-8") + b"\0" + digest.encode("ascii")).hexdigest()
    return f"img-{scoped[:24]}"


def _read_parts_csv(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parts, inventory, sites = read_parts_csv(path, as_of=utcnow())
    for site in sites:
        check_name(site, "site")
    # (each part holds only the columns the file has: a narrower export left the rest NULL before, an audit)
    return parts, inventory

"""The device sync client: enrol once, then ``sync()`` (nightly, or on demand).

One sync:

1. :func:`~sync.apply.reconcile` repairs what an interrupted sync left (pointer roll-forward);
2. ask the hub for a plan (device catalogue version + bundle id);
3. a new bundle: resumable download, unpack + verify against the pinned keyring
   (``edge_app.bundle.open_archive``), refuse a version not newer than the active one
   (rollback protection), smoke-test it; it sits beside the active bundle, inactive;
4. the package (delta or snapshot): resumable download, signature + sha256 check, then ONE
   SQLite transaction; then the bundle pointer switch; then the index cache update;
5. upload the outbox (idempotent by UUID, photos resumable in chunks).

Any failure before the commit leaves the device exactly as it was.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edge_app import storage
from edge_app.atomic import PRIVATE, atomic_write_bytes, atomic_write_json
from edge_app.errors import AuthError, IntegrityError, PartlensError, SyncError, SyncStorageError, UsageError
from edge_app.signing import Keyring
from edge_app.spotcheck import policy_from_plan
from edge_app.storage import MAX_KEEP_FREE_MB, RESERVE_BYTES, check_space, disk_full_is_storage_error, is_disk_full, mb

from .apply import (DevicePaths, apply_package, bundle_embedding_dim, drop_index_files, index_params, kill_point,
                    prune_bundles, read_active, reconcile, space_to_apply, update_index, write_active)
from .package import read_package, sha256_file
from .plan import check_descriptor_size, check_plan
from .lock import device_lock
from .schedule import SyncWindow
from .transport import (
    HttpTransport, TLSError, Transport, UnreachableError, check_pins, partial_of, settings_bytes, upgrade_offer_bytes,
)
from .upload import refused_uploads, upload_outbox

log = logging.getLogger(__name__)


#: A catalogue thumbnail larger than this is refused (they are about 5-20 KB).
THUMB_MAX_BYTES = 2 * 1024 * 1024
THUMB_BATCH = 200  # thumbnails per request (the hub takes up to 500)
#: why the last sync failed (deleted by a success); reported to the hub with the next plan request
FAILURE_FILE = "sync_failure.json"

#: ``smoke_test(bundle)`` raises if a freshly installed bundle cannot run.
SmokeTest = Callable[[Any], None]


def read_failure(device_root: Path) -> dict[str, str] | None:
    """``{"at": ISO time, "error": text}`` of the last failed sync on this device (any process: the app, the
    nightly service, the CLI), or None: no failure since the last success, or an unreadable record."""
    try:
        doc = json.loads((Path(device_root) / FAILURE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not doc.get("error") or not isinstance(doc.get("at"), str):
        return None
    return {"at": doc["at"], "error": str(doc["error"])}


def record_failure(device_root: Path, exc: Exception) -> None:
    """Keep why a sync failed (``sync_failure.json``) until a sync succeeds; a failure to write it is only
    logged (e.g. the disk is full: the sync's own error is what matters)."""
    import datetime as _dt

    at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        atomic_write_json(Path(device_root) / FAILURE_FILE, {"at": at, "error": str(exc)[:300]})
    except OSError as write_exc:
        log.debug("could not record the failed sync (%s)", write_exc)


def default_smoke_test(bundle: Any) -> None:
    """Load the bundle's model and run the fixed probe image (:func:`edge_app.bundle.probe_input`): check output
    shapes and values and, when the manifest records what the export machine got for it (``probe``), that this
    device's interpreter gives the same embedding (cosine >= :data:`~edge_app.bundle.PROBE_MIN_COSINE`): wrong
    but finite outputs (another build of the runtime, a backend bug) no longer pass."""
    from edge_app.bundle import PROBE_MIN_COSINE, probe_input
    from edge_app.runtime.backends import create_backend

    out = create_backend(bundle).run(probe_input(bundle.preprocess))
    emb, logits = np.asarray(out["embedding"]), np.asarray(out["logits"])
    if emb.shape != (1, bundle.embedding_dim) or logits.shape != (1, len(bundle.labels)):
        raise IntegrityError(f"bundle {bundle.bundle_id}: smoke test gave embedding {emb.shape}, logits "
                             f"{logits.shape}; expected (1, {bundle.embedding_dim}), (1, {len(bundle.labels)})")
    if not (np.all(np.isfinite(emb)) and np.all(np.isfinite(logits))):
        raise IntegrityError(f"bundle {bundle.bundle_id}: smoke test produced non-finite outputs")
    probe = bundle.manifest.get("probe")
    if not probe:
        log.info("bundle %s records no probe outputs (an older export): shapes and values checked only",
                 bundle.bundle_id)
        return
    want = np.asarray(probe.get("embedding", []), dtype=np.float64)
    got = emb[0].astype(np.float64)
    norm = float(np.linalg.norm(got))
    cos = float(want @ got / (norm * float(np.linalg.norm(want)))) if norm > 0 and want.shape == got.shape else -1.0
    if not cos >= PROBE_MIN_COSINE:
        raise IntegrityError(f"bundle {bundle.bundle_id}: this device's model gives another embedding for the probe "
                             f"image than the export machine did (cosine {cos:.4f} < {PROBE_MIN_COSINE}); not used")


def enrol(data_dir: str | os.PathLike[str], payload: Mapping[str, Any] | str) -> DevicePaths:
    """Store the enrolment (QR payload JSON): hub URL, token and the pinned keyring."""
    if isinstance(payload, str):
        # `hub add-device --ascii > FILE` puts the text QR code before the JSON line: the JSON line is the payload
        lines = [line for line in payload.splitlines() if line.lstrip().startswith("{")]
        text = lines[-1] if lines and not payload.lstrip().startswith("{") else payload
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"enrolment payload is not JSON ({exc}): pass the JSON line `partlens hub add-device` "
                             "printed (or its --out file), not the QR picture") from None
    try:
        if payload["v"] != 1:
            raise UsageError(f"unknown enrolment version {payload['v']!r}")
        keyring = Keyring({k: base64.b64decode(v, validate=True) for k, v in payload["keys"].items()},
                          roles=payload.get("key_roles"))
        for name in ("hub", "device", "site", "token"):
            v = payload[name]
            if not (isinstance(v, str) and v and v.isprintable() and len(v) <= 2048):
                raise ValueError(f"{name} must be a non-empty line of text")
        if not payload["hub"].startswith(("http://", "https://")):
            raise ValueError(f"hub must be an http:// or https:// address, got {payload['hub'][:80]!r}")
        device = {"hub": payload["hub"], "device": payload["device"], "site": payload["site"],
                  "token": payload["token"]}
        if payload.get("sync_window"):  # the nightly background-sync window the hub set for this device
            device["sync_window"] = str(SyncWindow.parse(str(payload["sync_window"])))
        if payload.get("tls_sha256"):  # the hub's own certificate: the only one this device will trust
            device["tls_sha256"] = payload["tls_sha256"]
        if payload.get("hub_id"):  # which hub: a catalogue from another hub (or site) is replaced, not mixed
            device["hub_id"] = str(payload["hub_id"])
        if payload.get("keep_free_mb") is not None:  # the storage syncs leave free for photos, set by the hub
            device["keep_free_mb"] = float(payload["keep_free_mb"])
            if not 0 <= device["keep_free_mb"] <= MAX_KEEP_FREE_MB:  # also NaN and Infinity
                raise ValueError(f"keep_free_mb {device['keep_free_mb']} (must be 0..{MAX_KEEP_FREE_MB})")
    except (KeyError, TypeError, ValueError, AttributeError, IntegrityError) as exc:
        raise UsageError(f"enrolment payload is incomplete or malformed ({exc})") from None
    if not len(keyring):
        raise UsageError("enrolment payload pins no signing keys")
    if "tls_sha256" in device:
        try:
            HttpTransport(device["hub"], device["token"], tls_sha256=device["tls_sha256"])
        except SyncError as exc:
            raise UsageError(f"enrolment payload: {exc}") from None
    paths = DevicePaths(Path(data_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    with device_lock(paths.root, "enrolment", wait_s=5.0):  # never between a running sync's reads and writes
        install_id(paths)  # made once per data folder: a re-enrolment of this tablet keeps it
        _keep_keys_of_installed_bundles(paths, keyring)
        keyring.save(paths.keyring)
        # device.json is written last and names the keyring it goes with: stopped in between, the mismatch is
        # found at the next sync (enrol again) instead of showing as signatures that fail for no clear reason
        device["keyring_sha256"] = sha256_file(paths.keyring)
        _write_device(paths, device)
    return paths


def install_id(paths: DevicePaths) -> str:
    """This app install's id (32 hex digits in ``<data>/install_id``, made at the first enrolment or sync, kept
    across re-enrolments): the hub binds an enrolment code to the first install that uses it, so the same QR
    code on a second tablet is refused. A wiped data folder is a new install (enrol it under a new name)."""
    path = paths.root / "install_id"
    try:
        value = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{32}", value):
            return value
        log.warning("%s is damaged; this install gets a new id (the hub may then ask for a new enrolment)", path)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("%s cannot be read (%s); this install gets a new id", path, exc)
    value = secrets.token_hex(16)
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, value.encode(), mode=PRIVATE)
    return value


def _keep_keys_of_installed_bundles(paths: DevicePaths, keyring: Keyring) -> None:
    """A new enrolment must not strand the model the tablet runs until its first sync with that hub: the key
    that signed an installed bundle, trusted by the old keyring, stays trusted (the tablet trusted it already;
    a code for the wrong hub, or one typed before the hub is reachable, made identification fail until then)."""
    if not paths.keyring.is_file() or not paths.bundles.is_dir():
        return
    try:
        old = Keyring.load(paths.keyring)
    except PartlensError as exc:
        log.warning("the previous keyring is unreadable (%s); installed bundles need the new hub's keys", exc)
        return
    try:  # keys a hub revoked are never carried over (an audit: a leaked key survived re-enrolment this way)
        revoked = set(read_device(paths.device).get("revoked_keys") or []) if paths.device.is_file() else set()
    except PartlensError:
        revoked = set()
    for manifest in sorted(paths.bundles.glob("*/manifest.json")):
        try:
            kid = json.loads(manifest.read_text()).get("key_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(kid, str) and kid in old and kid not in keyring and kid not in revoked:
            keyring.add(old.public_key(kid), expected_id=kid, roles=["bundle"])  # for that bundle, nothing else
            log.info("keeping key %s trusted: it signed the installed bundle %s", kid, manifest.parent.name)


def _write_device(paths: DevicePaths, device: Mapping[str, Any]) -> None:
    """``device.json`` (hub URL, token, pins): atomically, mode 0600 (it holds the token)."""
    atomic_write_json(paths.device, dict(device), mode=PRIVATE)


def read_device(path: Path) -> dict[str, Any]:
    """``device.json``, checked enough to use: a damaged one is a clear "enrol again", not a traceback later."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable enrolment ({exc}); enrol this device again") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc[k] for k in ("hub", "token", "site")):
        raise UsageError(f"{path}: damaged enrolment (hub, token or site missing); enrol this device again")
    return doc


def reserve_of(device: Mapping[str, Any]) -> int:
    """Bytes a device's syncs leave free: the hub's ``keep_free_mb`` from the enrolment, else the default."""
    mb_set = device.get("keep_free_mb")
    return int(float(mb_set) * 1024**2) if mb_set is not None else RESERVE_BYTES


def connection_mode(device: Mapping[str, Any]) -> str:
    """How an enrolled device reaches its hub: ``pinned`` (HTTPS, the hub's certificate pinned), ``system-cas``
    (HTTPS checked against the system's CAs) or ``plain-http``."""
    if device.get("tls_sha256"):
        return "pinned"
    return "system-cas" if str(device.get("hub", "")).startswith("https://") else "plain-http"


@dataclass
class SyncResult:
    """What one sync did."""

    from_version: int
    to_version: int
    bundle_before: str | None
    bundle_after: str | None
    package: str | None = None
    bundle_installed: str | None = None
    thumbnails: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    uploaded: int = 0
    #: outbox records the hub refused for good (or whose photo was gone): kept on the device, marked refused
    upload_refused: int = 0
    #: after a sync that changed something, the hub was told what the device now holds (``hub devices``)
    checked_in: bool | None = None
    downloaded_bytes: int = 0
    seconds: float = 0.0
    #: wall seconds per phase: ``index_open``, ``fetch`` (plan, downloads, verification), ``apply``, ``index``,
    #: ``thumbnails``, ``uploads``
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SyncClient:
    """Sync one device data folder with its hub."""

    def __init__(self, data_dir: str | os.PathLike[str], *, transport: Transport | None = None,
                 keyring: Keyring | None = None, smoke_test: SmokeTest | None = None,
                 reserve_bytes: int | None = None) -> None:
        if reserve_bytes is not None and reserve_bytes < 0:
            raise UsageError(f"space to keep free must be >= 0 bytes, got {reserve_bytes}")
        self.paths = DevicePaths(Path(data_dir))
        if not self.paths.device.is_file():
            raise UsageError(f"{self.paths.root}: device not enrolled (run `partlens sync enrol`)")
        self.device = read_device(self.paths.device)
        #: a sync never leaves less than this free (room for the engineer's photos): the caller's, else the
        #: hub's setting at enrolment, else RESERVE_BYTES
        self.reserve_bytes = int(reserve_bytes) if reserve_bytes is not None else reserve_of(self.device)
        self._reserve_given = reserve_bytes is not None  # the caller's choice is not replaced by the hub's
        want = self.device.get("keyring_sha256")
        # (a key revocation stopped between writing keyring.json and device.json leaves the keyring it announced)
        if (keyring is None and want and self.paths.keyring.is_file()
                and sha256_file(self.paths.keyring) not in (want, self.device.get("keyring_sha256_next"))):
            raise UsageError(f"{self.paths.root}: the keyring is not the one enrolled with (an enrolment was "
                             "interrupted); enrol this tablet again")
        self.keyring = keyring or Keyring.load(self.paths.keyring)
        self._own_transport = transport is None  # only a transport made here may fall back (see _plan)
        self._plan_via_fallback = False  # set when this sync's plan came over the plain-HTTP fallback
        self._reported_stamp = self.device.get("settings_stamp")  # the settings stamp the last plan request said
        self._hub_revoked: Any = None  # the key revocations in this sync's signed settings
        self._signed_without_pins = False  # this sync's signed settings came from a hub that does not sign pins
        self.install_id = install_id(self.paths)
        self.transport = transport or HttpTransport(self.device["hub"], self.device["token"],
                                                    tls_sha256=self.device.get("tls_sha256"),
                                                    install_id=self.install_id)
        self.smoke_test = smoke_test or default_smoke_test

    def _open_db(self) -> Any:
        from edge_app.runtime.catalogue import CatalogueDB

        return CatalogueDB(self.paths.db)

    def status(self) -> dict[str, Any]:
        db = self._open_db()
        try:
            return {"device": self.device["device"], "site": self.device["site"], "hub": self.device["hub"],
                    "catalogue_version": db.catalogue_version, "bundle_id": db.get_meta("bundle_id"),
                    "catalogue_epoch": db.catalogue_epoch,
                    "index_stamp": db.get_meta("index_stamp"), "active": read_active(self.paths),
                    "parts": db.count("parts"), "images": db.count("images"),
                    "embeddings": db.count("embeddings"), **self._outbox_counts(), "tls": self._tls_words(),
                    "free_bytes": storage.free_bytes(self.paths.root), "keep_free_bytes": self.reserve_bytes,
                    "sync_window": self.device.get("sync_window") or "default",
                    "spot_check_rate": (self.device.get("policy") or {}).get("spot_check_rate", 0.0)}
        finally:
            db.close()

    def _tls_words(self) -> str:
        mode = connection_mode(self.device)
        if mode == "pinned":
            return "pinned " + ", ".join(p[:16] + "..." for p in check_pins(self.device["tls_sha256"]))
        return "system CAs" if mode == "system-cas" else "none (plain HTTP)"

    def _outbox_counts(self) -> dict[str, int]:
        from edge_app.runtime.outbox import Outbox

        if not self.paths.outbox.exists():
            return {"uploads_pending": 0, "uploads_refused": 0}
        outbox = Outbox(self.paths.outbox)
        try:
            return {"uploads_pending": outbox.count(), "uploads_refused": len(outbox.refused())}
        finally:
            outbox.close()

    def refused_uploads(self, *, requeue: bool = False) -> list[dict[str, Any]]:
        """Outbox records refused for good, with the reasons; ``requeue``: send again those that can go
        (:func:`sync.upload.refused_uploads`)."""
        return refused_uploads(self.paths.outbox, requeue=requeue)

    def upload_outbox(self, catalogue_version: int) -> tuple[int, int]:
        """Upload pending outbox records -> (uploaded, refused) (:func:`sync.upload.upload_outbox`)."""
        return upload_outbox(self.transport, self.paths.outbox, catalogue_version)

    def sync(self, *, upload: bool = True) -> SyncResult:
        """One sync (see the module docstring). Lack of storage raises :class:`SyncStorageError` with the
        device unchanged; the outbox is still uploaded first (that is what lets the tablet free photos)."""
        with device_lock(self.paths.root, "sync", wait_s=2.0):  # the sync screen's probe holds it for an instant
            return self._sync_locked(upload)

    def _sync_locked(self, upload: bool) -> SyncResult:
        t0 = time.perf_counter()
        self._reread_enrolment()
        db = self._open_db()
        try:
            epoch_before = db.catalogue_epoch
            try:
                with disk_full_is_storage_error(self.paths.root, "syncing", SyncStorageError):
                    result = self._sync(db)
            except SyncStorageError as exc:
                raise self._after_storage_error(exc, db, upload) from exc
            except (SyncError, IntegrityError) as exc:
                # a bad package or bundle at the hub: the tablet stays as it was, but the engineers' feedback and
                # photos do not wait for the hub to be fixed (the hub answered, so it can take them)
                if upload and not isinstance(exc, (AuthError, TLSError, UnreachableError)):
                    self._upload_despite(exc, db)
                raise
            t = time.perf_counter()
            result.thumbnails = self.fetch_thumbnails(db)
            result.timings["thumbnails"] = time.perf_counter() - t
            if upload:
                t = time.perf_counter()
                result.uploaded, result.upload_refused = self.upload_outbox(db.catalogue_version)
                result.timings["uploads"] = time.perf_counter() - t
            if (result.to_version != result.from_version or result.bundle_after != result.bundle_before
                    or db.catalogue_epoch != epoch_before  # (a restored hub, same version: it must see the lineage)
                    or self._previous_failure()  # the hub heard of the last failure: it must hear this success
                    # new signed settings taken (e.g. a certificate's next pin): `tls-rotate --activate` must hear it
                    or self.device.get("settings_stamp") != self._reported_stamp):
                result.checked_in = self._check_in(db)
        except PartlensError as exc:
            self._record_failure(exc)
            raise
        finally:
            db.close()
        result.seconds = time.perf_counter() - t0
        self._record_success(result)
        return result

    def _upload_despite(self, exc: Exception, db: Any) -> None:
        """Upload the outbox after a failed download step; the outcome is added to ``exc``'s message."""
        try:
            sent, refused = self.upload_outbox(db.catalogue_version)
            what = f"the outbox was still uploaded ({sent} record(s)" + (f", {refused} refused" if refused else "") + ")"
        except (SyncError, IntegrityError, OSError) as up_exc:
            what = f"the outbox could not be uploaded either ({up_exc})"
        exc.args = (f"{exc}; {what}",) + tuple(exc.args[1:])

    def _reread_enrolment(self) -> None:
        """``device.json`` as it is now (this client may have been made before another process wrote it). If the
        tablet was enrolled again since, this client's transport and keys are the old enrolment's: refuse, so
        it never writes the old hub and token back over the new enrolment."""
        try:
            now = read_device(self.paths.device)
        except UsageError as exc:  # a sync error here: the sync stops and says why, as for the hub's failures
            raise SyncError(str(exc)) from None
        if any(now.get(k) != self.device.get(k) for k in ("hub", "token", "device", "site")):
            raise SyncError("this tablet was enrolled again while this sync was being set up; sync again")
        self.device = now

    def _previous_failure(self) -> str | None:
        """Why the last sync failed (``sync_failure.json``), told to the hub with the next plan request so ``hub
        devices`` shows a tablet that reaches the hub but fails every sync; None after a success."""
        doc = read_failure(self.paths.root)
        return f"{doc['at']}: {doc['error']}" if doc else None

    def _record_failure(self, exc: Exception) -> None:
        record_failure(self.paths.root, exc)

    def _record_success(self, result: SyncResult) -> None:
        """``last_sync.json``: when this device last synced (the app's sync screen), whoever ran the sync (the
        app, the nightly service, the CLI). The sync itself succeeded, so a failure to write this is only logged."""
        import datetime as _dt

        at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        try:
            atomic_write_json(self.paths.root / "last_sync.json", {"at": at, "result": result.to_dict()})
        except OSError as exc:
            log.warning("synced, but could not record the time of this sync (%s)", exc)
        (self.paths.root / FAILURE_FILE).unlink(missing_ok=True)

    def _after_storage_error(self, exc: SyncStorageError, db: Any, upload: bool) -> SyncStorageError:
        """A sync stopped for lack of storage: delete unfinished downloads (they hold the space; the next
        sync fetches them again), still upload the outbox, and say both in the error."""
        freed = self._sweep_downloads()
        words = [str(exc)]
        if freed:
            words.append(f"{mb(freed)} of unfinished downloads deleted")
        if upload:
            try:
                with disk_full_is_storage_error(self.paths.root, "uploading", SyncStorageError):
                    uploaded, _refused = self.upload_outbox(db.catalogue_version)
                words.append(f"the outbox was uploaded ({uploaded} records)")
            except SyncError as up_exc:
                words.append(f"the outbox was not uploaded either ({up_exc})")
        return SyncStorageError("; ".join(words))

    def _resend_since(self, since: str) -> None:
        """The hub was restored from a backup taken at ``since`` (hub clock): send again what this device
        uploaded from a day before then (clocks differ; the hub keeps one copy per UUID)."""
        import datetime as _dt

        from edge_app.runtime.outbox import Outbox

        try:
            cutoff = (_dt.datetime.fromisoformat(since) - _dt.timedelta(days=1)).isoformat()
        except ValueError:
            log.warning("hub sent an unreadable restore time %r; nothing resent", since)
            return
        if not self.paths.outbox.exists():
            return
        outbox = Outbox(self.paths.outbox)
        try:
            n, gone = outbox.requeue_uploaded_since(cutoff)
        finally:
            outbox.close()
        log.warning("the hub was restored from a backup of %s: %d uploads queued again%s", since, n,
                    f" ({gone} whose photo is no longer on this tablet were not)" if gone else "")

    def _check_space(self, need: int, what: str) -> None:
        check_space(self.paths.root, need, what, reserve=self.reserve_bytes, error=SyncStorageError)

    def _settings_of(self, plan: Mapping[str, Any]) -> tuple[Any, Any, list[int] | None, Any]:
        """The field policy and device settings this tablet may take from ``plan``, and the stamp of the signed
        document they came in. The hub signs them with its package key (pinned at enrolment) for this device,
        counted per catalogue lineage: a forged, another device's, another hub's or an older replayed document
        is refused with a warning, and the tablet keeps what it has (the catalogue sync goes on). Unsigned values
        (a hub from before signed settings) are taken only over HTTPS, whose channel authenticates the hub.

        The fourth value is the certificate pins the signed document lists (None when it lists none)."""
        signed = plan.get("settings")
        if signed is None:
            if self._plan_over_https() and not self.device.get("settings_stamp"):
                return plan.get("policy"), plan.get("device_settings"), None, None
            if plan.get("policy") is not None or plan.get("device_settings"):
                log.warning("hub sent unsigned settings %s; not taking them (update the hub)",
                            "after signed ones" if self.device.get("settings_stamp") else "over plain HTTP")
            return None, None, None, None
        from edge_app.signing import verify_document

        try:
            doc = dict(signed["doc"])
            verify_document(settings_bytes(doc), signed["signature"], self.keyring, "device settings", role="hub")
            if doc.get("device") != self.device.get("device"):
                raise IntegrityError(f"they are for device {doc.get('device')!r}, not {self.device.get('device')!r}")
            mine = self.device.get("hub_id")
            if mine and doc.get("hub_id") != mine:
                raise IntegrityError(f"they come from hub {doc.get('hub_id')!r}, not {mine!r}")
            stamp = [int(doc["epoch"]), int(doc["serial"])]
            seen = self.device.get("settings_stamp")
            if seen and stamp < [int(v) for v in seen]:
                raise IntegrityError(f"they are dated {stamp}, older than the {seen} this tablet took (a replay?)")
        except (KeyError, TypeError, ValueError, IntegrityError, SyncError) as exc:
            log.warning("hub settings do not verify (%s); keeping this tablet's", exc)
            return None, None, None, None
        self._hub_revoked = doc.get("revoked_keys")
        self._signed_without_pins = "tls_pins" not in doc  # a hub that signs settings but not yet its pins
        return doc.get("policy"), doc.get("device_settings"), stamp, doc.get("tls_pins")

    def _follow_policy(self, policy: Any) -> None:
        """Keep the hub's field policy (the spot-check rate) in ``device.json`` for the app. A hub too old to send
        one leaves the tablet's as it is; a malformed one is refused with a warning and the previous one kept
        (it never stops the catalogue sync)."""
        if policy is None:
            return
        try:
            checked = policy_from_plan(policy)
        except UsageError as exc:
            log.warning("hub sent a field policy this tablet cannot use (%s); keeping %s", exc,
                        self.device.get("policy") or "none")
            return
        if checked != self.device.get("policy"):
            self.device["policy"] = checked
            _write_device(self.paths, self.device)
            log.info("field policy from the hub: %s", checked)

    def _follow_device_settings(self, settings: Any) -> None:
        """Adopt what the hub set for this tablet after enrolment (``hub set-device``): the nightly window and
        the storage syncs keep free; the new reserve counts from this sync on. A malformed value is refused with a
        warning and the tablet keeps its own (the catalogue sync goes on)."""
        if not settings:
            return
        try:
            if not isinstance(settings, Mapping):
                raise ValueError(f"not an object: {settings!r}")
            new = dict(self.device)
            if settings.get("sync_window") is not None:
                new["sync_window"] = str(SyncWindow.parse(str(settings["sync_window"])))
            if settings.get("keep_free_mb") is not None:
                mb_set = float(settings["keep_free_mb"])
                if not 0 <= mb_set <= 100_000:
                    raise ValueError(f"keep_free_mb {mb_set}")
                new["keep_free_mb"] = mb_set
        except (TypeError, ValueError, UsageError) as exc:
            log.warning("hub sent device settings this tablet cannot use (%s); keeping its own", exc)
            return
        if new != self.device:
            self.device = new
            _write_device(self.paths, self.device)
            log.info("device settings from the hub: window %s, keep %s MB free", new.get("sync_window"),
                     new.get("keep_free_mb"))
        if not self._reserve_given:
            self.reserve_bytes = reserve_of(self.device)

    def _follow_revocations(self, revoked: Any) -> None:
        """Take the hub's key revocations (`hub untrust`; from the signed settings only): remembered in
        ``device.json``, then dropped from the keyring (see :meth:`_drop_revoked_keys`)."""
        if revoked is None:
            return
        if not isinstance(revoked, list) or not all(isinstance(k, str) and 0 < len(k) <= 64 for k in revoked):
            log.warning("hub sent unusable key revocations; ignoring them")
            return
        known = set(self.device.get("revoked_keys") or [])
        if not set(revoked) <= known:
            self.device["revoked_keys"] = sorted(known | set(revoked))
            _write_device(self.paths, self.device)
            log.warning("the hub revoked key(s) %s: no bundle they sign is installed from now on",
                        ", ".join(sorted(set(revoked) - known)))
        self._drop_revoked_keys()

    def _drop_revoked_keys(self) -> None:
        """Remove revoked keys from the keyring, except the one that signed the ACTIVE bundle (the engineer keeps
        a model the app can verify, offline, until a bundle signed by another key replaces it; no new bundle
        of a revoked key is installed meanwhile: :meth:`_install_keyring`)."""
        revoked = set(self.device.get("revoked_keys") or [])
        if not revoked or not revoked & set(self.keyring.key_ids):
            return
        active = read_active(self.paths)
        keep = None
        if active:
            try:
                keep = json.loads((self.paths.bundles / active["bundle_id"] / "manifest.json").read_text()).get("key_id")
            except (OSError, ValueError, AttributeError):
                keep = None
        drop = sorted((revoked & set(self.keyring.key_ids)) - {keep})
        if not drop:
            return
        if self.device.get("keyring_sha256") is None or not self.paths.keyring.is_file():
            return  # a keyring given by the caller (tests), not this device's file
        ring = self.keyring.without(drop)
        data = json.dumps(ring.to_dict()).encode()
        # device.json first announces the new keyring's hash: stopped anywhere, the pair still opens
        self.device["keyring_sha256_next"] = hashlib.sha256(data).hexdigest()
        _write_device(self.paths, self.device)
        atomic_write_bytes(self.paths.keyring, data)
        self.device["keyring_sha256"] = self.device.pop("keyring_sha256_next")
        _write_device(self.paths, self.device)
        self.keyring = ring
        log.warning("dropped revoked key(s) %s from this tablet's keyring", ", ".join(drop))

    def _install_keyring(self) -> Keyring:
        """The keys a NEW bundle may be signed by: this device's, less the revoked ones (the key of the active
        bundle stays in the keyring for that bundle only)."""
        revoked = set(self.device.get("revoked_keys") or [])
        return self.keyring.without(revoked) if revoked & set(self.keyring.key_ids) else self.keyring

    def _plan_over_https(self) -> bool:
        """Whether this sync's plan came over HTTPS (the pinned certificate, or one the system's CAs vouch for),
        not the plain-HTTP fallback of a tablet moving to HTTPS."""
        return not self._plan_via_fallback and str(self.device.get("hub", "")).startswith("https://")

    def _follow_pins(self, signed_pins: Any, plan_pins: Any) -> None:
        """Adopt the hub's certificate pins (its current certificate, plus the next one while it rotates) from
        the SIGNED settings (``signed_pins``): an audit found that the plan's bare list let whoever answered
        (the plain-HTTP fallback, or anyone holding a leaked TLS key) add a pin of theirs and later drop the
        hub's. A hub from before signed pins (its verified settings carry no pin list, or it signs no settings
        and this tablet never took signed ones) is followed over pinned HTTPS only: otherwise a tablet updated
        before its hub would miss a rotation and be cut off at its activation (a review). The list is adopted
        only if it keeps a pin this device has (never a jump to strangers)."""
        mine = self.device.get("tls_sha256")
        older_hub = self._signed_without_pins or not self.device.get("settings_stamp")
        if signed_pins is not None:
            hub_pins = signed_pins
        elif plan_pins and self._plan_over_https() and older_hub:
            hub_pins = plan_pins
        else:
            if plan_pins and mine and set(plan_pins) != set(mine if isinstance(mine, list) else [mine]):
                log.warning("hub lists other certificate pins without its signature; keeping this device's")
            return
        if not mine or not hub_pins:
            return
        try:
            new, old = list(check_pins(hub_pins)), list(check_pins(mine))
        except SyncError as exc:
            log.warning("hub sent unusable certificate pins (%s); keeping this device's", exc)
            return
        if set(new) == set(old):
            return
        if not set(new) & set(old):
            log.warning("hub lists certificate pins that share none with this device's; keeping this device's")
            return
        self.device["tls_sha256"] = new if len(new) > 1 else new[0]
        _write_device(self.paths, self.device)
        log.info("hub certificate pins now %s (a certificate rotation)", [p[:16] for p in new])

    def _take_tls_upgrade(self, offer: Any, held_version: int) -> None:
        """A device enrolled over http:// switches to the hub's https:// URL and certificate pin when the plan
        carries an offer signed by a key this device trusts (its keyring from enrolment) and dated (by the
        hub's catalogue version) no earlier than the catalogue this device holds: an old offer replayed over
        the plain channel is refused. Takes effect from the next sync; this one finishes as it started."""
        if not offer or self.device.get("tls_sha256") or not str(self.device["hub"]).startswith("http://"):
            return
        from edge_app.signing import verify_document

        try:
            doc = dict(offer["doc"])
            signer = verify_document(upgrade_offer_bytes(doc), offer["signature"], self.keyring, "TLS upgrade offer",
                                     role="hub")
            if doc.get("key_id") != signer:
                raise IntegrityError(f"it names key {doc.get('key_id')!r} but is signed by {signer}")
            url, pin = str(doc["url"]), check_pins(doc["tls_sha256"])[0]
            if not url.startswith("https://"):
                raise IntegrityError(f"offer URL {url!r} is not https://")
            if int(doc["catalogue_version"]) < held_version:
                raise IntegrityError(f"offer dated catalogue version {doc['catalogue_version']}, older than the "
                                     f"{held_version} this device holds (a replay?)")
        except (KeyError, TypeError, ValueError, IntegrityError, SyncError) as exc:
            log.warning("hub offered a switch to HTTPS that does not verify (%s); staying on %s",
                        exc, self.device["hub"])
            return
        log.warning("switching to the hub's HTTPS address %s with its certificate pinned (was %s)",
                    url, self.device["hub"])
        # the old address stays as a fallback until the first sync over HTTPS works (a closed port or firewall
        # on the new one must not strand the tablet until it is enrolled again)
        self.device.update(hub=url, tls_sha256=pin, fallback_hub=self.device["hub"])
        _write_device(self.paths, self.device)

    def _plan(self, version: int, bundle_id: str | None, epoch: int) -> dict[str, Any]:
        """The sync plan. A device that switched to the hub's HTTPS address and has not synced over it yet
        falls back, for this sync, to its old plain address when the new one cannot be reached or fails TLS;
        the first plan over HTTPS confirms the switch and drops the fallback."""
        from .transport import TLSError, UnreachableError

        fallback = self.device.get("fallback_hub")
        failed = self._previous_failure()
        # (a transport from before these parameters still works: each is sent only when there is one)
        extra: dict[str, Any] = {"last_error": failed} if failed else {}
        self._reported_stamp = self.device.get("settings_stamp")
        if self._reported_stamp:
            extra["settings_stamp"] = self._reported_stamp
        try:
            plan = self.transport.plan(version, bundle_id, epoch, **extra)
        except (TLSError, UnreachableError) as exc:
            if not (fallback and self._own_transport):
                raise
            log.warning("hub's HTTPS address %s failed (%s); this sync uses the previous address %s",
                        self.device["hub"], exc, fallback)
            self._plan_via_fallback = True  # nothing in this plan is authenticated by the channel
            self.transport = HttpTransport(fallback, self.device["token"], install_id=self.install_id)
            return self.transport.plan(version, bundle_id, epoch, **extra)
        if fallback and self._own_transport and str(self.device["hub"]).startswith("https://"):
            self.device.pop("fallback_hub", None)
            _write_device(self.paths, self.device)
            log.info("first sync over HTTPS: the previous address %s is no longer used", fallback)
        return plan

    def _follow_settings(self, plan: Mapping[str, Any]) -> None:
        """Take what a plan's hub-signed settings say: certificate pins, revoked keys, policy, this tablet's
        settings (and remember their stamp)."""
        policy, settings, stamp, signed_pins = self._settings_of(plan)
        self._follow_pins(signed_pins, plan.get("tls_pins"))
        self._follow_revocations(self._hub_revoked)
        self._follow_policy(policy)
        self._follow_device_settings(settings)
        if stamp is not None and stamp != self.device.get("settings_stamp"):
            self.device["settings_stamp"] = stamp
            _write_device(self.paths, self.device)

    def _check_in(self, db: Any) -> bool:
        """Tell the hub what this device holds now (a plan request with the new version and bundle), so
        ``hub devices`` shows it current; if the hub moved on during the sync, the next sync fetches the rest.
        A failure here does not undo the sync: it is logged and returned (``SyncResult.checked_in``)."""
        active = read_active(self.paths)
        bundle_id = active["bundle_id"] if active else None
        for _ in range(2):  # a second time only to report settings the first answer brought
            try:
                # with the stamp of the settings this tablet follows: the hub then knows it learnt a certificate's
                # next pin (`tls-rotate --activate` asks), whatever the clocks say
                stamp = self._reported_stamp = self.device.get("settings_stamp")
                plan = self.transport.plan(db.catalogue_version, bundle_id, db.catalogue_epoch,
                                           **({"settings_stamp": stamp} if stamp else {}))
            except SyncError as exc:
                log.warning("synced, but could not tell the hub so (%s); it will know at the next sync", exc)
                return False
            # take its signed settings too: a rotation begun during this sync is learnt by it (an audit)
            try:
                self._follow_settings(check_plan(plan))
            except (PartlensError, OSError) as exc:
                log.warning("synced, but the hub's settings in its last answer were not taken (%s); the next sync "
                            "takes them", exc)
            if self.device.get("settings_stamp") == stamp:
                break
        if plan.get("package") or plan.get("bundle"):
            log.info("the hub moved on during this sync (now at version %s); the next sync fetches the rest",
                     plan.get("hub_version"))
        return True

    def fetch_thumbnails(self, db: Any) -> dict[str, int]:
        """Download missing catalogue thumbnails (the results grid shows them offline).

        Up to :data:`THUMB_BATCH` per request (one tar), so a first sync of a large catalogue makes hundreds of
        requests, not tens of thousands. A thumbnail whose sha256 the signed package named must match it (a
        thumbnail swapped on the way, e.g. over plain HTTP, is not stored). Thumbnails are a display cache, not
        catalogue truth: one the hub does not send, or that does not decode as a small image, is skipped,
        counted and fetched again at the next sync; the sync still succeeds.
        """
        from edge_app.atomic import atomic_write_bytes
        from edge_app.errors import ImageError
        from edge_app.imageio import load_image

        with db.read() as d:
            rows = list(d.conn.execute("SELECT image_id, path, thumb_sha256 FROM images WHERE path LIKE 'thumbs/%'"))
        counts = {"fetched": 0, "failed": 0, "present": 0, "removed": self._drop_old_thumbnails(rows)}
        missing: dict[str, Path] = {}
        expected = {image_id: digest for image_id, _rel, digest in rows if digest}
        for image_id, rel, _digest in rows:
            dest = self.paths.root / rel
            if dest.is_file() and dest.stat().st_size > 0:  # empty: cut by a power loss before os.sync()
                counts["present"] += 1
            elif Path(rel).name != f"{image_id}.jpg":
                counts["failed"] += 1
                log.warning("thumbnail path %r of image %s is not thumbs/<image_id>.jpg; skipped", rel, image_id)
            else:
                missing[image_id] = dest
        ids = list(missing)
        bad: list[str] = []
        full = False
        for i in range(0, len(ids), THUMB_BATCH):
            chunk = ids[i:i + THUMB_BATCH]
            try:
                got = self.transport.get_thumbnails(chunk, THUMB_MAX_BYTES)
            except SyncError as exc:
                if isinstance(exc, AuthError):
                    raise
                log.warning("thumbnails not fetched (%s); %d will be fetched at the next sync", exc, len(ids) - i)
                counts["failed"] += len(ids) - i
                break
            free = storage.free_bytes(self.paths.root)
            if free - sum(len(v) for v in got.values()) < self.reserve_bytes:
                log.warning("thumbnails: storage low (%s free, %s kept for photos); %d not stored, they will be "
                            "fetched at a later sync", mb(free), mb(self.reserve_bytes), len(ids) - i)
                counts["failed"] += len(ids) - i
                break
            for image_id in chunk:
                data = got.get(image_id)
                try:
                    if data is None:
                        raise SyncError("the hub did not send it")
                    if image_id in expected and hashlib.sha256(data).hexdigest() != expected[image_id]:
                        raise SyncError("it differs from the thumbnail the hub's signed catalogue names")
                    # a real, small, complete image (decoded at 1/8 scale: the whole stream is still read)
                    load_image(data, max_pixels=4_000_000, draft_size=(32, 32))
                except (SyncError, ImageError) as exc:
                    counts["failed"] += 1
                    bad.append(f"{image_id} ({exc})")
                    continue
                try:
                    atomic_write_bytes(missing[image_id], data, durable=False)
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    full = True
                    break
                counts["fetched"] += 1
            if hasattr(os, "sync"):  # POSIX (Android, Linux); the batch on disk in one call, not 2 fsyncs each
                os.sync()
            if full:
                left = len(ids) - counts["fetched"] - len(bad)
                log.warning("thumbnails: storage full; %d not stored, they will be fetched at a later sync", left)
                counts["failed"] += left
                break
        if bad:
            log.warning("%d thumbnails not fetched, e.g. %s; they will be fetched at the next sync", len(bad),
                        "; ".join(bad[:3]))
        return counts

    def _drop_old_thumbnails(self, rows: list[Any]) -> int:
        """Delete the thumbnails of images the catalogue no longer holds (a deleted part, a replaced photo): they
        were kept for ever, ten files a night at a busy hub's churn (an audit of a year of nights, 23rd session)."""
        folder = self.paths.root / "thumbs"
        if not folder.is_dir():
            return 0
        keep = {Path(rel).name for _image_id, rel, _digest in rows}
        removed = 0
        for f in folder.glob("*.jpg"):
            if f.name not in keep:
                try:
                    f.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("could not delete the old thumbnail %s (%s)", f, exc)
        if removed:
            log.info("deleted %d thumbnails of images no longer in the catalogue", removed)
        return removed

    def _sync(self, db: Any) -> SyncResult:
        active_id = reconcile(self.paths, db)
        version = db.catalogue_version
        epoch = db.catalogue_epoch
        result = SyncResult(version, version, active_id, active_id)
        moved = self._moved(db) if version > 0 else None  # (what moved, words) or None
        if moved:  # this catalogue is not this hub's (or site's): start over as a new device would
            log.warning("this device's catalogue came from %s; replacing it with a full snapshot", moved[1])
            version, epoch = 0, 0
        live = None  # the index loaded here is updated in place after the commit (no second load)
        t = time.perf_counter()
        if active_id:
            live = update_index(self.paths, db, active_id, index_params(self.paths, active_id))
        result.timings["index_open"] = time.perf_counter() - t
        t = time.perf_counter()
        other_hub = moved is not None and moved[0] == "hub"
        plan = check_plan(self._plan(version, None if other_hub else active_id, epoch))
        self._follow_settings(plan)
        hub_epoch = int(plan.get("epoch") or 0)
        if hub_epoch < epoch:
            raise SyncError(f"the hub's catalogue lineage ({hub_epoch}) is older than this device's ({epoch}): it was "
                            "restored from an older backup than one this device already synced with, or restored "
                            "twice under a wrong clock; refusing to go back (the hub admin restores the newer "
                            f"backup, or runs `partlens hub new-lineage --above {epoch}`)")
        if hub_epoch == epoch:
            self._take_tls_upgrade(plan.get("tls_upgrade"), version)
            if plan["hub_version"] < version:
                raise SyncError(f"the hub is at catalogue version {plan['hub_version']}, this device at {version}; "
                                "refusing to go back (was the hub folder put back from a backup by hand? the hub "
                                "admin should use `partlens hub restore`, which tablets follow by themselves)")
        elif plan.get("resend_uploads_since"):
            self._resend_since(str(plan["resend_uploads_since"]))
        target = active_id
        bundle = None
        if plan.get("bundle"):
            bundle = self._install_bundle(plan["bundle"], result, other_hub=other_hub)
            target = bundle.bundle_id
        pkg_info = plan.get("package")
        if pkg_info is None:  # at the hub's version already
            self._sweep_downloads()
            return result
        sig = pkg_info["signature"]
        from .package import verify_descriptor

        desc = verify_descriptor(sig, self.keyring)  # before spending bandwidth on it
        size = check_descriptor_size(desc, pkg_info["name"])
        mine = self.device.get("hub_id")
        if desc.get("hub_id") and mine and desc["hub_id"] != mine:  # (an audit: two hubs sharing a signing key)
            raise IntegrityError(f"package {pkg_info['name']} was made by hub {desc['hub_id']}, this tablet is "
                                 f"enrolled with hub {mine}; refused, nothing changed")
        path = self.paths.downloads / pkg_info["name"]  # a checked plain file name (sync.plan)
        if not path.exists():
            self._check_space(_remaining(path, size), f"the catalogue update {pkg_info['name']}")
            self.transport.download(pkg_info["url"], path, size)
            result.downloaded_bytes += size
        kill_point("package:downloaded")
        try:
            pkg = read_package(path, sig, self.keyring)
        except IntegrityError:
            path.unlink(missing_ok=True)  # a corrupt download must not stick; the next sync fetches it again
            raise
        self._check_space(space_to_apply(self.paths, pkg), f"applying {pkg.name} ({len(pkg.parts)} parts, "
                                                         f"{len(pkg.embedding_ids)} image vectors)")
        result.timings["fetch"] = time.perf_counter() - t
        t = time.perf_counter()
        if pkg.epoch != epoch or moved:  # a restored hub, another hub: labels and versions may mean other vectors
            live = None
            drop_index_files(self.paths)
        dim = bundle.embedding_dim if bundle is not None else bundle_embedding_dim(self.paths, target) if target else None
        result.applied = apply_package(db, pkg, site=self.device["site"], bundle_id=target, replace=bool(moved),
                                       hub_id=self.device.get("hub_id"), embedding_dim=dim)
        result.timings["apply"] = time.perf_counter() - t
        result.package = pkg.name
        result.to_version = pkg.to_version
        if bundle is not None:
            kill_point("bundle:before-pointer")
            write_active(self.paths, bundle.bundle_id, bundle.version)
            kill_point("bundle:after-pointer")
            self._drop_revoked_keys()  # a revoked key that signed the bundle just replaced goes now
        result.bundle_after = target
        t = time.perf_counter()
        if target:
            update_index(self.paths, db, target, index_params(self.paths, target),
                         index=live if target == active_id else None)
        result.timings["index"] = time.perf_counter() - t
        kill_point("index:updated")
        path.unlink(missing_ok=True)
        if bundle is not None:
            prune_bundles(self.paths, {bundle.bundle_id, *([active_id] if active_id else [])})
            (self.paths.downloads / f"{bundle.bundle_id}.tar").unlink(missing_ok=True)
        self._sweep_downloads()
        return result

    def _sweep_downloads(self) -> int:
        """Delete what ``downloads/`` holds (and bundle unpacks a killed sync left); the bytes freed. After a sync that reached the hub's version, what is
        left there is for plans the hub has moved past (a package fetched but not applied, a cut download, a crash
        after the commit) and is never asked for again (a sync audit found a snapshot's worth per interruption
        eating into the space kept for photos); after a sync stopped for lack of storage, the next sync fetches
        again what it needs."""
        from edge_app.atomic import sweep_stale_temps
        from edge_app.bundle import sweep_stale_unpacks

        # a bundle unpack killed before its rename left a whole bundle's copy in bundles/.unpack-*; only a sync
        # unpacks there, and this one holds the device lock (an audit: such copies stayed until the next NEW
        # bundle, weeks, eating into the space kept for photos)
        freed = sweep_stale_unpacks(self.paths.bundles, max_age_s=0.0) if self.paths.bundles.is_dir() else 0
        # temporary files of writes killed before their rename (a whole index's copy when the kill hit its save):
        # an hour old at least, as the app may be saving its own index meanwhile
        for folder in (self.paths.root, self.paths.root / "thumbs", self.paths.bundles, self.paths.downloads):
            freed += sweep_stale_temps(folder)
        if not self.paths.downloads.is_dir():
            return freed
        for f in self.paths.downloads.iterdir():
            if f.is_file():
                try:
                    size = f.stat().st_size
                    f.unlink()
                    freed += size
                except OSError as exc:
                    log.warning("could not delete the old download %s (%s)", f, exc)
        return freed

    def _moved(self, db: Any) -> tuple[str, str] | None:
        """Why this device's catalogue cannot be continued with deltas from its hub, as (``"hub"`` or
        ``"site"``, words), or None if it can: it came from another hub (the device was enrolled with a new
        one; a starter catalogue from elsewhere), or holds another site's stock (enrolled for a new site).
        Decided from the enrolment, not from the network."""
        mine = self.device.get("hub_id")
        held = db.get_meta("hub_id")
        if mine and held != mine:
            return "hub", f"another hub ({held or 'unknown, e.g. a starter catalogue'}, not {mine})"
        site = db.get_meta("site")
        if site and site != self.device["site"]:
            return "site", f"another site ({site}, not {self.device['site']})"
        return None

    def _install_bundle(self, info: Mapping[str, Any], result: SyncResult, *, other_hub: bool = False) -> Any:
        """Download, verify, unpack and smoke-test the hub's bundle. Rollback protection (never a version not
        newer than the active one) holds within one hub; ``other_hub``: the device was enrolled with another
        hub, whose bundles are versioned on their own."""
        from edge_app.bundle import load_bundle, open_archive

        active = None if other_hub else read_active(self.paths)
        # the hub may offer the bundle this device already runs (its catalogue lost track of it, e.g. a new
        # catalogue database): not a rollback; the installed copy is used if it verifies
        same = (active is not None and info["bundle_id"] == active.get("bundle_id")
                and int(info["version"]) == int(active["version"]))
        if same and (self.paths.bundles / info["bundle_id"]).is_dir():
            try:
                return load_bundle(self.paths.bundles / info["bundle_id"], self.keyring)
            except IntegrityError as exc:
                log.warning("installed copy of the active bundle %s does not verify (%s); downloading it again",
                            info["bundle_id"], exc)
        if active is not None and not same and int(info["version"]) <= int(active["version"]):
            raise IntegrityError(f"hub offers bundle {info['bundle_id']} version {info['version']}, not newer than "
                                 f"the active {active['bundle_id']} (version {active['version']}); rollback refused")
        tar = self.paths.downloads / f"{info['bundle_id']}.tar"
        existing = self.paths.bundles / info["bundle_id"]
        size = int(info["size"])
        self._check_space((0 if tar.exists() else _remaining(tar, size)) + (0 if existing.is_dir() else size),
                          f"the new model bundle {info['bundle_id']} ({mb(size)}, unpacked beside the active one)")
        if not tar.exists():
            self.transport.download(info["url"], tar, int(info["size"]))
            result.downloaded_bytes += int(info["size"])
        if sha256_file(tar) != info["sha256"]:
            tar.unlink()
            raise IntegrityError(f"bundle archive {tar.name}: sha256 differs from the hub's; deleted, sync again")
        kill_point("bundle:downloaded")
        ring = self._install_keyring()  # never a bundle a revoked key signed
        try:
            bundle = load_bundle(existing, ring) if existing.is_dir() else None
        except IntegrityError as exc:  # e.g. unpacked under another hub's keys: the verified archive replaces it
            log.warning("installed copy of bundle %s does not verify (%s); unpacking the download", existing.name, exc)
            bundle = None
        if bundle is None:
            bundle = open_archive(tar, self.paths.bundles, ring)
        if bundle.bundle_id != info["bundle_id"]:
            raise IntegrityError(f"archive {tar.name} holds bundle {bundle.bundle_id}, not {info['bundle_id']}")
        if active is not None and (bundle.version < int(active["version"])  # the signed version counts
                                   or (bundle.version == int(active["version"]) and not same)):
            raise IntegrityError(f"bundle {bundle.bundle_id} (signed version {bundle.version}) is not newer than "
                                 f"the active {active['bundle_id']} (version {active['version']}); rollback refused")
        try:
            self.smoke_test(bundle)
        except Exception as exc:
            raise SyncError(f"bundle {bundle.bundle_id} failed its smoke test ({exc}); "
                            f"keeping {active['bundle_id'] if active else 'no bundle'} active") from exc
        kill_point("bundle:installed")
        result.bundle_installed = bundle.bundle_id
        return bundle


def _remaining(dest: Path, size: int) -> int:
    """Bytes still to download into ``dest`` (a partial download resumes)."""
    partial = partial_of(dest)
    return max(0, size - (partial.stat().st_size if partial.exists() else 0))

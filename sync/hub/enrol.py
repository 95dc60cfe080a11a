"""Enrolling a device: a token, and a QR code carrying hub address, token and trusted keys.

The QR payload is compact JSON::

    {"v": 1, "hub": "http://10.0.0.5:8765", "device": "tab-07", "site": "site_a",
     "token": "pl1.tab-07.<secret>", "keys": {"<key_id>": "<base64 public key>", ...}}

plus ``"hub_id"`` (which hub: a tablet moved to another hub or site replaces its catalogue instead of mixing
two), ``"tls_sha256": "<certificate sha256>"`` when the hub serves HTTPS with its own certificate
(:mod:`.tls`), and
``"sync_window"`` when the hub set one.

The token is shown once; the hub stores only its HMAC.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from edge_app.atomic import PRIVATE, atomic_write_bytes
from edge_app.errors import UsageError
from edge_app.storage import MAX_KEEP_FREE_MB

from ..schedule import SyncWindow
from .auth import DEFAULT_VALID_DAYS, MAX_VALID_DAYS, check_name, code_expired, code_used, new_token, token_hash
from .hub import Hub
from .tls import enrolment_fields

log = logging.getLogger(__name__)

ENROL_VERSION = 1


def add_device(hub: Hub, name: str, site: str, url: str | None = None,
               sync_window: str | None = None, keep_free_mb: float | None = None,
               reissue: bool = False, valid_days: float = DEFAULT_VALID_DAYS) -> dict[str, Any]:
    """Register a device for ``site``; return the enrolment payload (with the plain token).

    ``reissue``: the device exists but never synced (its payload was lost, e.g. the command was stopped before
    printing it): a new token replaces the old one, which stops working.

    ``sync_window`` (``HH:MM-HH:MM`` local time, or ``always``) is the device's nightly background-sync
    window; without it the device uses its default (01:00-05:00). ``keep_free_mb``: the storage its syncs
    leave free for photos (default on the device: 100 MB).

    ``valid_days``: the code stops working if no tablet has used it within that many days (a code that leaked
    before use is not a way in for ever); once a tablet used it, it is that tablet's credential. The payload's
    ``expires_at`` says until when.
    """
    check_name(name)
    check_name(site, "site")
    # a site differing from a known one only in case is refused, as an import's stock column is: SITE_A beside
    # site_a enrolled a tablet that saw no stock, and let later imports write SITE_A stock (an audit, 23rd session)
    hub.check_sites([site], f"device {name}")
    sync_window, keep_free_mb = _checked_settings(sync_window, keep_free_mb)
    if not 0 < valid_days <= MAX_VALID_DAYS:  # (also refuses NaN)
        raise UsageError(f"--valid-days must be above 0 and at most {MAX_VALID_DAYS:g}, got {valid_days:g}")
    url = url or hub.config.get("url")
    if not url:
        raise UsageError("the hub has no public URL: pass --url http://HOST:PORT (the address devices reach)")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"hub URL must start with http:// or https://, got {url!r}")
    tls = enrolment_fields(hub.root, url)  # before the device exists: a wrong scheme is refused first
    token = new_token(name)
    expires_at = (_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
                  + _dt.timedelta(days=valid_days)).isoformat()
    # the settings are kept with the device, so `hub set-device` can change them later
    if reissue:
        hub.store.reissue_token(name, site, token_hash(hub.secret, token), expires_at=expires_at,
                                sync_window=sync_window, keep_free_mb=keep_free_mb)
        log.warning("device %s: a new token for site %s; the previous one no longer works", name, site)
    else:
        hub.store.add_device(name, site, token_hash(hub.secret, token), expires_at=expires_at,
                             sync_window=sync_window, keep_free_mb=keep_free_mb)
        log.info("device %s enrolled for site %s", name, site)
    payload = {"v": ENROL_VERSION, "hub": url.rstrip("/"), "device": name, "site": site, "token": token,
               "keys": hub.keyring.to_dict()["keys"], "hub_id": hub.store.get_meta("hub_id"),
               "expires_at": expires_at}
    roles = hub.keyring.to_dict().get("roles")
    if roles:  # what each key may sign: the tablet takes bundles from bundle keys, packages from the hub's
        payload["key_roles"] = roles
    if sync_window is not None:
        payload["sync_window"] = sync_window
    if keep_free_mb is not None:
        payload["keep_free_mb"] = keep_free_mb
    payload.update(tls)
    return payload


def _checked_settings(sync_window: str | None, keep_free_mb: float | None) -> tuple[str | None, float | None]:
    if sync_window is not None:
        sync_window = str(SyncWindow.parse(sync_window))
    if keep_free_mb is not None and not 0 <= keep_free_mb <= MAX_KEEP_FREE_MB:
        raise UsageError(f"--keep-free-mb must be between 0 and {MAX_KEEP_FREE_MB}, got {keep_free_mb:g}")
    return sync_window, keep_free_mb


def set_device(hub: Hub, name: str, *, sync_window: str | None = None,
               keep_free_mb: float | None = None) -> dict[str, Any]:
    """Change a tablet's nightly window and the storage its syncs keep free, without enrolling it again: the
    tablet takes them from its next sync plan (the sync that brings them already keeps the new space free).
    Returns the device's settings."""
    sync_window, keep_free_mb = _checked_settings(sync_window, keep_free_mb)
    changes = {k: v for k, v in (("sync_window", sync_window), ("keep_free_mb", keep_free_mb)) if v is not None}
    if not changes:
        raise UsageError("nothing to change: pass --sync-window and/or --keep-free-mb")
    hub.store.set_device_settings(name, **changes)
    dev = hub.store.device(name) or {}
    log.info("device %s: %s (from its next sync)", name, changes)
    return {"device": name, "sync_window": dev.get("sync_window"), "keep_free_mb": dev.get("keep_free_mb")}


def fleet(hub: Hub, *, stale_days: float = 2.0, now: _dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every enrolled device with what it last reported at a sync: when, how many catalogue versions behind
    the hub it was then, whether it held the active bundle, and ``stale`` when its last sync is older than
    ``stale_days`` (or it never synced): a tablet whose nightly sync stopped shows up here. ``last_error``: why its
    previous sync failed, as it said with its next plan request (a tablet that reaches the hub every night but
    fails each sync, e.g. on a refused bundle, looked healthy before)."""
    if stale_days <= 0:
        raise UsageError(f"--stale-days must be above 0, got {stale_days}")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    version, bundle = hub.store.version(), hub.bundle_id
    epoch = hub.store.epoch()
    out = []
    for d in hub.store.list_devices():
        row = dict(d)
        seen = d.get("last_sync_at")
        age = (now - _dt.datetime.fromisoformat(seen)).total_seconds() / 86400 if seen else None
        row["days_since_sync"] = None if age is None else round(age, 2)
        # a device last seen on another lineage (before a `hub restore`) gets a full snapshot next: not comparable
        row["other_lineage"] = seen is not None and int(d.get("last_catalogue_epoch") or 0) != epoch
        row["versions_behind"] = None if d.get("last_catalogue_version") is None or row["other_lineage"] \
            else max(0, version - int(d["last_catalogue_version"]))
        row["had_active_bundle"] = None if seen is None else d.get("last_bundle_id") == bundle
        row["stale"] = not d["revoked"] and (age is None or age > stale_days)
        row["last_error"] = d.get("last_error")
        # the enrolment code: used by a tablet, unused (works until enrol_expires_at), or expired unused
        row["code"] = ("used" if code_used(d) else "expired" if code_expired(d, now)
                       else "unused")
        row.pop("install_bound", None)
        out.append(row)
    return out


def revoke_device(hub: Hub, name: str) -> bool:
    """Revoke a device's token at once: every later request with it gets 401 (re-enrol under a new name)."""
    changed = hub.store.revoke_device(name)
    log.warning("device %s: token %s", name, "revoked" if changed else "was already revoked")
    if changed:
        hub.needs_backup(f"device {name} revoked")
    return changed


def payload_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def _qr(payload: dict[str, Any]) -> Any:
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2)
    qr.add_data(payload_text(payload))
    qr.make(fit=True)
    return qr


def qr_png(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the enrolment QR code as a PNG (mode 0600: it holds a secret)."""
    img = _qr(payload).make_image()
    buf = io.BytesIO()
    img.save(buf)
    out = atomic_write_bytes(path, buf.getvalue(), mode=PRIVATE)
    return out


def qr_ascii(payload: dict[str, Any]) -> str:
    """The enrolment QR code as terminal text (two rows per character line)."""
    buf = io.StringIO()
    _qr(payload).print_ascii(out=buf, invert=True)
    return buf.getvalue()

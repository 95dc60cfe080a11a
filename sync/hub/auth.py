"""Per-device tokens: ``pl1.<device>.<secret>``, stored as HMAC-SHA256 under a hub secret.

The hub keeps only ``hmac(hub_secret, token)``; checking a presented token recomputes it and
compares with :func:`hmac.compare_digest` (constant time). A stolen hub database alone does
not reveal usable tokens.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Mapping

from edge_app.atomic import PRIVATE, atomic_write_bytes
from edge_app.errors import AuthError, UsageError

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pl1"
DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_name(name: str, what: str = "device name") -> str:
    pattern = DEVICE_NAME if what == "device name" else SITE_NAME
    if not pattern.match(name or ""):
        raise UsageError(f"{what} {name!r} must be 1-64 letters, digits, '-' or '_' (starting with a letter or digit)")
    return name


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """The hub's HMAC secret (32 random bytes, mode 0600), created on first use."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
        if len(data) != 32:
            raise UsageError(f"{path}: hub secret must be 32 bytes, got {len(data)}")
        if path.stat().st_mode & 0o077:  # e.g. left so by an older version stopped between write and chmod
            log.warning("%s was readable by other users; making it private (mode 0600)", path)
            os.chmod(path, PRIVATE)
        return data
    data = secrets.token_bytes(32)
    atomic_write_bytes(path, data, overwrite=False, mode=PRIVATE)
    return data


def token_hash(secret: bytes, token: str) -> str:
    return hmac.new(secret, token.encode("utf-8"), hashlib.sha256).hexdigest()


def new_token(device: str) -> str:
    return f"{TOKEN_PREFIX}.{check_name(device)}.{secrets.token_urlsafe(32)}"


def device_of(token: str) -> str:
    """The device name a token claims (not yet verified)."""
    parts = (token or "").split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not DEVICE_NAME.match(parts[1]):
        raise AuthError("malformed token")
    return parts[1]


def authenticate(store: Any, secret: bytes, token: str | None) -> dict[str, Any]:
    """The device row for a valid token; :class:`AuthError` otherwise (same message for every failure)."""
    if not token:
        raise AuthError("missing token")
    try:
        name = device_of(token)
    except AuthError:
        raise AuthError("invalid token") from None
    row = store.device(name)
    # Compare even for unknown devices so the timing does not reveal which names exist.
    expected = row["token_hash"] if row else "0" * 64
    ok = hmac.compare_digest(expected, token_hash(secret, token))
    if not ok or row is None or row["revoked"]:
        raise AuthError("invalid token")
    return row


#: the request header a tablet names its app install with (made once per device data folder)
INSTALL_HEADER = "X-Partlens-Install"
INSTALL_ID = re.compile(r"[0-9a-f]{32}")


#: how long an enrolment code works while no tablet has used it (`hub add-device --valid-days`)
DEFAULT_VALID_DAYS = 7.0
MAX_VALID_DAYS = 365.0


class EnrolmentRefused(AuthError):
    """A valid token the hub refuses for a reason the engineer and the admin must read (the message is shown)."""


class InstallConflict(EnrolmentRefused):
    """A valid token from another app install than the one its enrolment is bound to."""


class EnrolmentExpired(EnrolmentRefused):
    """A valid token whose enrolment code was never used before it expired."""


def code_used(device: Mapping[str, Any]) -> bool:
    """Whether a tablet has used the device's enrolment code (bound an app install to it, or asked for a sync)."""
    return bool(device.get("install_id") or device.get("install_bound") or device.get("last_sync_at"))


def code_expired(device: Mapping[str, Any], now: _dt.datetime | None = None) -> bool:
    """An enrolment code no tablet used before its ``enrol_expires_at`` (codes from before expiries: never)."""
    expires = device.get("enrol_expires_at")
    if not expires or code_used(device):
        return False
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now >= _dt.datetime.fromisoformat(expires)


def check_unused_code(device: Mapping[str, Any], now: _dt.datetime | None = None) -> None:
    """Refuse a token whose enrolment code expired unused: a code that leaked (a photographed QR code, a PNG left
    on a share) before any tablet used it stops being a way in. Once a tablet used it, it is that tablet's
    credential and does not expire (revoke it with `hub revoke-device`)."""
    if code_expired(device, now):
        raise EnrolmentExpired(
            f"the enrolment code of device {device['name']!r} expired unused on "
            f"{str(device['enrol_expires_at'])[:16].replace('T', ' ')} UTC: ask the hub admin for a new one "
            f"(`partlens hub add-device {device['name']} --site {device['site']} --reissue`) and enrol again")


def check_install(store: Any, device: Mapping[str, Any], install_id: str | None) -> None:
    """An enrolment code (its token) serves ONE app install: the first install that uses it binds it, and
    another install is refused (an audit: a photographed QR code or a leftover PNG gave a second tablet lasting
    access to the site's stock and uploads, undetected). Requests without an install id (apps from before) are
    accepted until the code is bound; after that they are refused too, so leaving the header out does not help.
    A code no tablet used before it expired is refused first (:func:`check_unused_code`)."""
    check_unused_code(device)
    if install_id is None:
        if device.get("install_id"):
            raise InstallConflict("this enrolment is bound to another tablet's app install")
        return
    if not INSTALL_ID.fullmatch(install_id):
        raise InstallConflict("malformed install id")
    if store.bind_install(device["name"], install_id) == "other":
        log.warning("device %s: its enrolment code was used by a second app install (refused); `hub devices` shows "
                    "it; revoke the device if the code leaked", device["name"])
        raise InstallConflict("this enrolment code is in use on another tablet (or this app was reinstalled): ask the "
                        "hub admin to revoke it and enrol this tablet under a new name")

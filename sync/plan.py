"""Checks on a hub's sync plan before the device acts on it.

The plan itself is not signed (the package descriptor, the bundle archive and the device settings inside
it are), so its plain fields are checked here: types and ranges, file names that cannot leave the device
folder, and download URLs that stay on the hub's API. A plan that fails is a :class:`SyncError` (exit 6)
naming the field; the device does nothing with it.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from edge_app.bundle import BUNDLE_ID_RE as BUNDLE_ID
from edge_app.errors import IntegrityError, SyncError

#: package file names as the hub makes them (sync.package.package_name)
PACKAGE_NAME = re.compile(r"^(?:snapshot|delta)-(?:e[0-9]{1,19}-)?[0-9]{6,19}(?:-[0-9]{6,19})?\.tar$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_VERSION = 2**62
#: the largest download a plan may announce (a model bundle or catalogue snapshot; larger is a broken hub)
MAX_DOWNLOAD_BYTES = 8 * 1024**3


def _fail(field: str, value: Any, want: str) -> SyncError:
    shown = repr(value)
    return SyncError(f"the hub's sync plan is malformed: {field} = {shown[:80]}{'...' if len(shown) > 80 else ''} "
                     f"({want}); nothing was changed on this device")


def _int(doc: Mapping[str, Any], key: str, where: str, *, required: bool = True, hi: int = MAX_VERSION) -> int:
    value = doc.get(key)
    if value is None and not required:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise _fail(f"{where}{key}", value, f"a whole number 0..{hi}")
    return value


def _text(doc: Mapping[str, Any], key: str, where: str, pattern: re.Pattern[str], want: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise _fail(f"{where}{key}", value, want)
    return value


def check_plan(plan: Any) -> dict[str, Any]:
    """``plan`` if its plain fields are well formed, else :class:`SyncError`. Checked: ``hub_version``,
    ``epoch``, and the ``bundle`` and ``package`` entries the device downloads (their names become file
    names under the device folder, their URLs are fetched with the device token)."""
    if not isinstance(plan, dict):
        raise _fail("plan", plan, "a JSON object")
    _int(plan, "hub_version", "")
    _int(plan, "epoch", "", required=False)
    bundle = plan.get("bundle")
    if bundle is not None:
        if not isinstance(bundle, dict):
            raise _fail("bundle", bundle, "an object or null")
        bid = _text(bundle, "bundle_id", "bundle.", BUNDLE_ID, "a bundle id like v3-0123456789ab")
        _int(bundle, "version", "bundle.")
        _int(bundle, "size", "bundle.", hi=MAX_DOWNLOAD_BYTES)
        _text(bundle, "sha256", "bundle.", SHA256, "64 lower-case hex digits")
        if bundle.get("url") != f"/v1/bundles/{bid}.tar":
            raise _fail("bundle.url", bundle.get("url"), f"/v1/bundles/{bid}.tar on the enrolled hub")
    package = plan.get("package")
    if package is not None:
        if not isinstance(package, dict):
            raise _fail("package", package, "an object or null")
        name = _text(package, "name", "package.", PACKAGE_NAME, "a package file name like delta-000004-000005.tar")
        if package.get("url") != f"/v1/packages/{name}":
            raise _fail("package.url", package.get("url"), f"/v1/packages/{name} on the enrolled hub")
        if not isinstance(package.get("signature"), dict):
            raise _fail("package.signature", package.get("signature"), "the signed descriptor object")
    return plan


def check_descriptor_size(desc: Mapping[str, Any], name: str) -> int:
    """The signed package descriptor's size, checked (the device allocates and downloads that much)."""
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_DOWNLOAD_BYTES:
        raise SyncError(f"package {name}: its signed size {size!r} is not a byte count up to {MAX_DOWNLOAD_BYTES}")
    if desc.get("name") != name:
        raise IntegrityError(f"the hub's sync plan names package {name}, its signed descriptor {desc.get('name')!r}")
    return size

"""Sync plans and signed delta/snapshot packages, made on demand and cached (immutable files).

A device asks for a plan with its catalogue version and bundle id. The hub answers with the
bundle to install (if the device's differs from the active one) and the package to apply:

- nothing, when the device is up to date;
- ``delta-<from>-<to>.tar`` (rows changed after ``from`` + tombstones + new embeddings);
- ``snapshot-<to>.tar`` for a new device (version 0) or a device on another bundle (a new
  bundle means every embedding changed, so the device replaces its catalogue wholesale), or a device
  of an older catalogue lineage (``epoch``: the hub was restored from a backup since it last synced;
  its version numbers mean other contents now). After a restore names carry the epoch: ``snapshot-e<N>-<to>.tar``.

Packages are per site (``packages/<site>/``) because inventory is: a device only ever sees
its own site's stock. A package for (site, from, to) is computed from one consistent read and
never changes afterwards, so it is written once and served to every device that asks.
"""
from __future__ import annotations

import dataclasses

import json
import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from edge_app.errors import InputError
from edge_app.storage import is_disk_full

from ..package import package_name, sha256_file, write_package
from .hub import Hub
from .store import DEVICE_SETTINGS
from .tls import pins, upgrade_offer

log = logging.getLogger(__name__)

#: how much of a tablet's reported sync failure the hub keeps
MAX_ERROR_CHARS = 300


#: plans made again, at most, while a bundle change races them (see :meth:`PackageService.plan`)
PLAN_ATTEMPTS = 3


def _printable(text: str) -> str:
    """A tablet's words as an admin's terminal may show them: control characters (escape sequences, newlines)
    become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)

PACKAGE_NAME = re.compile(r"^(delta-(e[0-9]{1,19}-)?[0-9]{6,19}-[0-9]{6,19}|snapshot-(e[0-9]{1,19}-)?[0-9]{6,19})\.tar$")


#: cached deltas ending at the current version, per site, before other versions get the (cached) snapshot
MAX_DELTAS_PER_VERSION = 16


class PackageService:
    """Plans and package files for devices of one hub (thread-safe)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._bundle_info: dict[str, dict[str, Any]] = {}

    def _lock(self, site: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((site, name), threading.Lock())

    def site_dir(self, site: str) -> Path:
        return self.hub.root / "packages" / site

    def package_file(self, site: str, name: str) -> Path:
        """Path of an existing package file of ``site`` (names are validated; no path escapes)."""
        base = name[:-len(".sig.json")] if name.endswith(".sig.json") else name
        if not PACKAGE_NAME.match(base):
            raise InputError(f"no such package {name!r}")
        path = self.site_dir(site) / name
        if not path.is_file():
            raise InputError(f"no such package {name!r}")
        return path

    def bundle_info(self, bundle_id: str) -> dict[str, Any]:
        info = self._bundle_info.get(bundle_id)
        if info is None:
            tar = self.hub.bundle_tar(bundle_id)
            row = self.hub.store.bundle(bundle_id)
            if row is None or not tar.is_file():
                raise InputError(f"bundle {bundle_id} is not installed on the hub")
            info = {"bundle_id": bundle_id, "version": int(row["version"]), "size": tar.stat().st_size,
                    "sha256": sha256_file(tar), "url": f"/v1/bundles/{bundle_id}.tar"}
            self._bundle_info[bundle_id] = info
        return info

    def plan_for_device(self, device: Mapping[str, Any], from_version: int, bundle_id: str | None, *,
                        via: str | None = None, epoch: int = 0, last_error: str | None = None,
                        settings_stamp: list[int] | None = None) -> dict[str, Any]:
        """:meth:`plan` for an authenticated device, recording what it holds and how it came (``via``: http,
        https; ``hub devices`` shows it) and the stamp of the signed settings it follows (tablets from before
        the 23rd session do not say)."""
        try:
            self.hub.store.device_seen(device["name"], from_version, bundle_id, via=via, epoch=epoch,
                                       last_error=_printable(last_error[:MAX_ERROR_CHARS]) if last_error else None,
                                       settings_stamp=settings_stamp)
        except (OSError, sqlite3.Error) as exc:  # a full disk must not stop every tablet's catalogue updates
            if not is_disk_full(exc):
                raise
            log.error("hub storage full: could not record %s's sync (%s); serving its plan anyway", device["name"], exc)
        plan = self.plan(device["site"], from_version, bundle_id, epoch=epoch)
        # what the hub set for this tablet (`hub add-device`, `hub set-device`); unset ones stay the tablet's own
        settings = {k: device.get(k) for k in DEVICE_SETTINGS if device.get(k) is not None}
        if settings:
            plan["device_settings"] = settings
        plan["settings"] = self.signed_settings(device["name"], self.hub.policy(), settings)
        return plan

    def signed_settings(self, device: str, policy: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        """What ``device`` follows (the field policy and its own settings), signed with the hub's package key,
        which every tablet pins: over plain HTTP the plan could be forged, the signature cannot. Bound to the
        device and this hub, and counted (``serial``, per catalogue lineage ``epoch``), so an older document
        replayed is refused."""
        from edge_app.signing import sign_document

        from ..transport import settings_bytes

        doc = {"device": device, "hub_id": self.hub.store.get_meta("hub_id"), "epoch": self.hub.store.epoch(),
               "serial": int(self.hub.store.get_meta("settings_serial", 0)), "policy": dict(policy),
               "device_settings": dict(settings)}
        tls_pins = pins(self.hub.root)
        if tls_pins:  # signed: whoever holds only the TLS key (a leaked one) cannot move tablets to their pin
            doc["tls_pins"] = tls_pins
        revoked = self.hub.revoked_keys()
        if revoked:  # `hub untrust`: tablets drop these keys
            doc["revoked_keys"] = revoked
        return {"doc": doc, "signature": sign_document(settings_bytes(doc), self.hub.key)}

    def plan(self, site: str, from_version: int, bundle_id: str | None, *, epoch: int = 0) -> dict[str, Any]:
        """What a device of ``site`` at (``from_version``, ``bundle_id``) of catalogue lineage ``epoch`` must
        fetch. A device of an older lineage (the hub was restored from a backup since) gets a full snapshot
        and the time from which to send its uploads again (the restored hub lost what came after the backup).

        The plan and its package agree on the model: a `set-bundle` committed between reading the active bundle
        and building the package gave a plan for the old model with a package of the new model's vectors, which
        the tablet refused as an integrity error (an audit); such a plan is made again."""
        for _ in range(PLAN_ATTEMPTS):
            plan = self._plan(site, from_version, bundle_id, epoch=epoch)
            pkg = plan.get("package")
            made_for = pkg["signature"]["descriptor"].get("bundle_id") if pkg else None
            if made_for is None or made_for == plan["bundle_id"]:
                return plan
            log.info("the active bundle changed while planning for site %s (%s -> %s): planning again", site,
                     plan["bundle_id"], made_for)
        raise SyncError("the hub's model bundle is changing right now; sync again in a minute")

    def _plan(self, site: str, from_version: int, bundle_id: str | None, *, epoch: int = 0) -> dict[str, Any]:
        hub_version = self.hub.store.version()
        hub_bundle = self.hub.bundle_id
        hub_epoch = self.hub.store.epoch()
        plan: dict[str, Any] = {"hub_version": hub_version, "site": site, "bundle_id": hub_bundle,
                                "bundle": None, "package": None, "hub_id": self.hub.store.get_meta("hub_id"),
                                "policy": self.hub.policy()}
        if hub_epoch:
            plan["epoch"] = hub_epoch
        tls_pins = pins(self.hub.root)
        if tls_pins:  # the current certificate, and the next during a rotation: tablets follow this list
            plan["tls_pins"] = tls_pins
            offer = upgrade_offer(self.hub)  # for tablets still on http://: the https URL and pin, signed
            if offer:
                plan["tls_upgrade"] = offer
        if hub_bundle is not None and hub_bundle != bundle_id:
            plan["bundle"] = self.bundle_info(hub_bundle)
        full = from_version <= 0 or (hub_bundle is not None and hub_bundle != bundle_id)
        if epoch > hub_epoch:
            return plan  # the device saw a newer lineage than this hub (an older backup restored?): it refuses
        if epoch < hub_epoch:
            full = True
            resend = self.hub.store.get_meta("restored_backup_taken_at")
            if resend and from_version > 0:
                plan["resend_uploads_since"] = resend
        elif from_version > hub_version:
            # The device is ahead of the hub (restored from a backup without `hub restore`?): the device refuses.
            return plan
        if not full and from_version == hub_version:
            return plan
        if not full and self._too_many_deltas(site, from_version, hub_version):
            full = True  # a snapshot (built once) instead of yet another delta to the same version
        plan["package"] = self.package(site, 0 if full else from_version, hub_version)
        return plan

    def _too_many_deltas(self, site: str, from_version: int, hub_version: int) -> bool:
        """True when ``site`` already has :data:`MAX_DELTAS_PER_VERSION` cached deltas to ``hub_version`` and not
        this one: each distinct version a request names built and kept one more (a token asking for every
        version made as many copies of a snapshot's worth of data, which prune-packages keeps while current)."""
        name = package_name(from_version, hub_version, False, self.hub.store.epoch())
        site_dir = self.site_dir(site)
        if (site_dir / name).is_file():
            return False
        ending = [p for p in site_dir.glob(f"delta-*-{hub_version:06d}.tar")] if site_dir.is_dir() else []
        if len(ending) >= MAX_DELTAS_PER_VERSION:
            log.info("site %s: %d deltas to version %d cached; a device at %d gets the snapshot", site, len(ending),
                     hub_version, from_version)
            return True
        return False

    def package(self, site: str, from_version: int, hub_version: int) -> dict[str, Any]:
        """Build (once) and describe the package from ``from_version`` to the current version."""
        full = from_version <= 0
        name = package_name(from_version, hub_version, full, self.hub.store.epoch())
        with self._lock(site, name):
            sig_path = self.site_dir(site) / (name + ".sig.json")
            if sig_path.is_file() and (self.site_dir(site) / name).is_file():
                sig = json.loads(sig_path.read_text())
            else:
                snap = self.hub.store.snapshot(site, from_version)
                hub_id = self.hub.store.get_meta("hub_id")
                if hub_id:
                    snap = dataclasses.replace(snap, hub_id=str(hub_id))
                path, sig = write_package(snap, self.site_dir(site), self.hub.key)
                name = path.name
                log.info("built %s for site %s (%d bytes)", name, site, path.stat().st_size)
        desc = sig["descriptor"]
        return {"name": desc["name"], "size": desc["size"], "sha256": desc["sha256"],
                "url": f"/v1/packages/{desc['name']}", "signature": sig}

    def prune(self, grace_hours: float = 24.0, now: float | None = None) -> dict[str, int]:
        """Delete cached packages no device will be sent again (they end before the current version)
        once they are older than ``grace_hours``, so a device that planned one just before a catalogue
        change can still finish downloading it. Returns counts and bytes freed."""
        if not 0 <= grace_hours <= 24 * 36_500:  # also NaN, which had made every package old enough
            raise InputError(f"grace must be 0..{24 * 36_500} hours, got {grace_hours}")
        current = self.hub.store.version()
        epoch = self.hub.store.epoch()
        cutoff = (time.time() if now is None else now) - grace_hours * 3600
        removed = kept = freed = 0
        for site_dir in sorted((self.hub.root / "packages").glob("*")):
            for tar in sorted(site_dir.glob("*.tar")):
                if not PACKAGE_NAME.match(tar.name):
                    continue
                to_version = int(tar.stem.rsplit("-", 1)[1])
                lineage = re.search(r"-e([0-9]+)-", tar.name)
                same_lineage = int(lineage.group(1)) == epoch if lineage else epoch == 0
                with self._lock(site_dir.name, tar.name):
                    if (same_lineage and to_version >= current) or tar.stat().st_mtime > cutoff:
                        kept += 1
                        continue
                    for f in (tar.with_name(tar.name + ".sig.json"), tar):  # the signature first: never a
                        try:                                               # signature without its package
                            freed += f.stat().st_size
                            f.unlink()
                        except FileNotFoundError:
                            pass
                    removed += 1
        log.info("pruned %d stale packages (%d bytes), kept %d", removed, freed, kept)
        return {"removed": removed, "kept": kept, "bytes_freed": freed, "catalogue_version": current}

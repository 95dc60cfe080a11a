"""Child process for the full-disk sync test (``tests.fullfs.run_on_tmpfs``): MOUNT is a small tmpfs.

``python -m tests.sync._child_full_disk MOUNT SRC`` copies the device folder SRC onto the tmpfs, then syncs
it from the hub three times with the tmpfs filled so that (a) the download, (b) the apply hits a real
ENOSPC/SQLITE_FULL (the pre-checks switched off, as when another app fills the disk during a sync), (c) the
pre-check refuses; after each, the device state must be the one before. Then with the filler gone the sync
must complete. Prints one JSON object.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main() -> None:
    mount, src = Path(sys.argv[1]), Path(sys.argv[2])
    from edge_app import storage
    from edge_app.errors import SyncStorageError
    from sync.client import SyncClient
    from sync.package import verify_descriptor
    from tests.fullfs import fill_to
    from tests.sync.test_faults import device_state

    dev = mount / "device"
    shutil.copytree(src, dev)
    out: dict = {"before": device_state(dev)}
    probe = SyncClient(dev, smoke_test=lambda b: None, reserve_bytes=0)
    plan = probe.transport.plan(out["before"]["version"], out["before"]["bundle_id"])
    size = int(verify_descriptor(plan["package"]["signature"], probe.keyring)["size"])
    out["package_bytes"] = size
    import sync.client as sc

    for name, free, checks in (("download", size // 2, False), ("apply", size + 65536, False),
                               ("precheck", size + 65536, True)):
        fill_to(mount, free)
        sc.check_space = storage.check_space if checks else (lambda *a, **k: None)
        try:
            SyncClient(dev, smoke_test=lambda b: None, reserve_bytes=0).sync(upload=(name == "apply"))
            out[name] = {"error": None}
        except SyncStorageError as exc:
            cause = exc.__cause__.__cause__ if exc.__cause__ is not None else None
            out[name] = {"error": str(exc), "exit_code": exc.exit_code, "cause": repr(cause)}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            out[name] = {"error": f"UNEXPECTED {type(exc).__name__}: {exc}"}
        try:
            out[name]["state"] = device_state(dev)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            out[name]["state"] = f"UNREADABLE {type(exc).__name__}: {exc} (free {shutil.disk_usage(mount).free})"
        out[name]["downloads"] = sorted(p.name for p in (dev / "downloads").glob("*"))
    sc.check_space = storage.check_space
    (mount / "filler").unlink()
    result = SyncClient(dev, smoke_test=lambda b: None, reserve_bytes=1024**2).sync()
    out["final"] = {"to_version": result.to_version, "state": device_state(dev)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""Child for ``test_storage_full.py`` (``tests.fullfs.run_on_tmpfs``): MOUNT is a small tmpfs.

``python -m tests.edge_app._child_full_open MOUNT SRC`` copies the device folder SRC/device (closed cleanly: no
``-wal``/``-shm`` files) onto the tmpfs, fills it to the last byte, and reports what the app's services can
still do; then prunes old photos as the app does at start and reports again. Prints one JSON object.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def attempt(fn) -> str:
    try:
        return f"ok {fn()!r}"[:200]
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return f"{type(exc).__name__}: {exc}"


def main() -> None:
    mount, src = Path(sys.argv[1]), Path(sys.argv[2])
    import sqlite3

    from edge_app.services import DeviceServices
    from tests.fullfs import fill_to

    dev = mount / "device"
    shutil.copytree(src / "device", dev)
    shutil.copytree(src / "crashed", mount / "crashed")
    fill_to(mount, 0)
    out: dict = {"free": shutil.disk_usage(mount).free}
    from edge_app.runtime.catalogue import CatalogueDB

    out["crashed_open"] = attempt(lambda: CatalogueDB(mount / "crashed" / "catalogue.db"))
    out["raw_sqlite_open"] = attempt(lambda: sqlite3.connect(dev / "catalogue.db").execute(
        "SELECT count(*) FROM parts").fetchone())
    svc = DeviceServices(dev)
    out["read_only"] = [svc.catalogue.read_only, svc.outbox.read_only]
    out["search"] = [p["part_number"] for p in svc.search("bolt")]
    out["part"] = svc.part("P1")["name"]
    out["pending"] = len(svc.outbox.pending())
    out["status"] = {k: getattr(svc.sync_status(), k) for k in ("storage_low", "pending_uploads")}
    out["photo"] = attempt(lambda: svc.captures.add_bytes((src / "new.jpg").read_bytes()))
    out["feedback"] = attempt(lambda: svc.outbox.add("feedback", {"part_number": "P1"}))

    def write_meta() -> None:
        with svc.catalogue.transaction():
            svc.catalogue.set_meta("x", 1)

    out["catalogue_write"] = attempt(write_meta)
    out["captures_before"] = len(list((dev / "captures").glob("*.jpg")))
    out["pruned"] = svc.free_space_if_low()  # what the app does at start
    out["captures_after"] = len(list((dev / "captures").glob("*.jpg")))
    out["read_only_after"] = [svc.catalogue.read_only, svc.outbox.read_only]
    out["feedback_after"] = attempt(lambda: svc.outbox.add("feedback", {"part_number": "P1"}))
    out["pending_after"] = len(svc.outbox.pending())
    svc.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

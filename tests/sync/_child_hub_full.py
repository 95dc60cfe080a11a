"""Child for the hub full-disk test (``tests.fullfs.run_on_tmpfs``): MOUNT is a small tmpfs.

``python -m tests.sync._child_hub_full MOUNT`` builds a hub on the tmpfs, fills it to the last byte, and
sends an upload record and a photo chunk through the hub's HTTP app: both must answer 507 and change
nothing; with space back both go through. Prints one JSON object."""
from __future__ import annotations

import hashlib
import json
import sys
import uuid as _uuid
from pathlib import Path


def main() -> None:
    mount = Path(sys.argv[1])
    from fastapi.testclient import TestClient

    import sync.hub.uploads
    from sync.hub.hub import Hub
    from sync.hub.server import create_app
    from sync.hub.uploads import partial_path

    sync.hub.uploads.UPLOAD_RESERVE_BYTES = -(1 << 62)  # this test is about the real ENOSPC path: no reserve
    from tests.fullfs import fill_to
    from tests.sync.conftest import build_world

    world = build_world(mount / "w")
    out: dict = {}
    # a hub whose disk filled while it was stopped: a clear error, not SQLite's "disk I/O error"
    world.hub.store.close()
    fill_to(mount, 0)
    try:
        Hub(world.hub.root)
        out["open_full"] = "opened"
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out["open_full"] = f"{type(exc).__name__}: {exc}"
    (mount / "filler").unlink()
    world.hub.store.close()
    tc = TestClient(create_app(world.hub))
    auth = {"Authorization": f"Bearer {world.payload['token']}"}
    photo = bytes(range(256)) * 2048  # 512 kB
    uid = str(_uuid.uuid4())
    rec = {"uuid": uid, "kind": "photo", "payload": {"part_number": "P1"}, "created_at": "2026-12-06T00:00:00+00:00",
           "catalogue_version": 1, "blob": {"size": len(photo), "sha256": hashlib.sha256(photo).hexdigest()}}
    r = tc.post("/v1/uploads/batch", json={"records": [rec]}, headers=auth)  # room for the record, not the photo
    out["record"] = [r.status_code, r.json()]
    fill_to(mount, 128 * 1024)  # room for part of the 300 kB chunk: the write fails midway
    r = tc.put(f"/v1/uploads/{uid}/blob?offset=0", content=photo[:300_000], headers=auth)
    part = partial_path(world.hub, uid)
    out["chunk_full"] = [r.status_code, r.json(), part.stat().st_size if part.exists() else 0]
    fill_to(mount, 0)
    rec2 = dict(rec, uuid=str(_uuid.uuid4()), blob=None, kind="unknown_part", payload={"note": "x" * 60_000})
    r = tc.post("/v1/uploads/batch", json={"records": [rec2]}, headers=auth)
    out["record_full"] = [r.status_code, r.json()]
    out["record2_stored"] = world.hub.store.upload(rec2["uuid"]) is not None
    (mount / "filler").unlink()
    r = tc.put(f"/v1/uploads/{uid}/blob?offset=0", content=photo, headers=auth)
    out["chunk_after"] = [r.status_code, r.json()]
    r = tc.post("/v1/uploads/batch", json={"records": [rec2]}, headers=auth)
    out["record_after"] = r.status_code
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()

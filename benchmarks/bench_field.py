"""Field loop: usage-event cost on the device, upload over loopback HTTP, `hub field-stats` on a large log.

A hub with a small synthetic catalogue (the sync benchmark's builder, placeholder model), a real
uvicorn hub process on 127.0.0.1 and an enrolled device. Measured: the outbox insert a tablet
makes after each identification; one sync uploading N usage events plus confirmations with small
photos (records go in batches of up to 200 per request, each photo in its own chunk requests); ``field_stats`` over a large log of usage events (written straight into the hub's uploads
table with received times spread over 28 days, since going through HTTP would only measure the
upload again), in all and for the last 14 days.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import time
from typing import Any

import numpy as np


def _photo(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _usage(bundle: str, i: int) -> dict[str, Any]:
    return {"event": "identify", "bundle_id": bundle, "status": "match" if i % 3 else "no_confident_match",
            "confidence": 0.8, "top": [f"PN{i % 997:06d}", f"PN{(i + 1) % 997:06d}"], "views": 1 + (i % 5 == 0),
            "ms": 5.0 + (i % 7), "asked_to_measure": False, "capture_ids": [f"cap-{i}"], "site": "site_a"}


def run(ctx: Any) -> dict[str, Any]:
    from benchmarks.bench_sync import _device, _make_hub, scratch
    from edge_app.runtime.outbox import Outbox
    from sync.hub.fieldstats import field_stats
    from sync.hub.process import HubProcess

    n_events = 100 if ctx.quick else 500
    n_feedback = 10 if ctx.quick else 50
    n_log = 10_000 if ctx.quick else 100_000
    work = scratch(ctx)
    hub = _make_hub(work, 1_000)
    out: dict[str, Any] = {"usage_events_uploaded": n_events, "confirmations_uploaded": n_feedback,
                           "log_events": n_log}

    # 1) the outbox insert after each identification (WAL, synchronous=FULL), on this disk
    ob = Outbox(work / "outbox-latency.db")
    lat = []
    for i in range(1000):
        t = time.perf_counter()
        ob.add("usage", _usage(hub.bundle_id, i))
        lat.append(1e3 * (time.perf_counter() - t))
    ob.close()
    out["outbox_add_median_ms"] = float(np.median(lat))
    out["outbox_add_p95_ms"] = float(np.percentile(lat, 95))

    # 2) one nightly sync uploading usage events and confirmations with photos, over loopback HTTP
    with HubProcess(hub.root) as server:
        dev = _device(hub, work / "devices", "tab", server.url)
        dev.sync()
        ob = Outbox(dev.paths.root / "outbox.db")
        for i in range(n_events):
            ob.add("usage", _usage(hub.bundle_id, i))
        for i in range(n_feedback):
            photo = work / f"confirm-{i}.jpg"
            photo.write_bytes(_photo(i))
            ob.add("feedback", {"part_number": f"PN{i:06d}", "verdict": "correct", "capture_ids": [f"cap-{i}"],
                                "candidates": [f"PN{i:06d}"], "bundle_id": hub.bundle_id, "site": "site_a"},
                   blob_path=photo)
        ob.close()
        requests: list[str] = []
        opener = dev.transport._open

        def counted(method: str, path: str, **kw: Any) -> Any:
            requests.append(path)
            return opener(method, path, **kw)

        dev.transport._open = counted
        t = time.perf_counter()
        r = dev.sync()
        out["upload_sync_s"] = time.perf_counter() - t
        # HTTP requests carrying outbox records (batches, or one each from an older client) and photo chunks
        out["upload_record_requests"] = sum(p.startswith("/v1/uploads") and not p.endswith("/blob") for p in requests)
        out["upload_chunk_requests"] = sum(p.endswith("/blob") for p in requests)
        out["uploaded"] = r.uploaded
        out["upload_ms_per_item"] = 1e3 * out["upload_sync_s"] / max(r.uploaded, 1)
        out["upload_ok"] = r.uploaded == n_events + n_feedback

    # 3) field-stats over a large log
    stats = field_stats(hub)
    out["stats_matches_uploads"] = (stats["bundles"][0]["identifications"] == n_events
                                    and stats["bundles"][0]["confirmed"] == n_feedback)
    conn = hub.store._db().conn
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM uploads").fetchone()[0]
    now = dt.datetime.now(dt.timezone.utc)
    rows = [(f"log-{i:08d}", seq + 1 + i, "tab", "site_a", "usage", json.dumps(_usage(hub.bundle_id, i)), None, 1, 1,
             (now - dt.timedelta(days=i % 28, hours=1)).isoformat(timespec="seconds")) for i in range(n_log)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO uploads (uuid, seq, device, site, kind, payload, device_created_at, "
                     "device_catalogue_version, hub_version, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    for name, days in (("all", None), ("last_14_days", 14)):
        t = time.perf_counter()
        s = field_stats(hub, days=days)
        out[f"field_stats_{name}_s"] = time.perf_counter() - t
        out[f"field_stats_{name}_identifications"] = sum(b["identifications"] for b in s["bundles"])
    return out

"""Sync: delta vs snapshot size, device apply time, full sync over loopback, many devices at once, HTTPS cost.

Catalogue rows and embeddings are synthetic (random float16 vectors, one catalogue image per
part, no image files); the bundle's model file is a placeholder, so the device smoke test is
replaced by a no-op. Everything else is the real code path: the hub store, signed packages, a
real uvicorn hub process on 127.0.0.1, HttpTransport, one SQLite transaction per package on the
device and the runtime's hnswlib index update.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 256


class _Timer:
    """Wall and process CPU time of a block (CPU << wall means the machine was busy elsewhere)."""

    def __enter__(self) -> "_Timer":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c

    def report(self, name: str) -> dict[str, float]:
        return {f"{name}_s": self.wall, f"{name}_cpu_s": self.cpu}


def _search_ms(index: Any, queries: np.ndarray, n: int = 100) -> float:
    """Median single-query latency (k=10) over ``n`` of ``queries``."""
    lat = []
    for v in np.asarray(queries[:n], np.float32):
        t = time.perf_counter()
        index.search(v[None], 10)
        lat.append(time.perf_counter() - t)
    return 1e3 * float(np.median(lat))


def _found_top1(db: Any, index: Any, pkg: Any, n: int = 200) -> float:
    """Share of the delta's new images whose own vector comes back first."""
    ids = pkg.embedding_ids[:n]
    marks = ",".join("?" * len(ids))
    label_of = dict(db.db.conn.execute(f"SELECT image_id, label FROM embeddings WHERE image_id IN ({marks})", ids))
    labels, _ = index.search(np.asarray(pkg.embeddings[:n], np.float32), 1)
    return float(np.mean([labels[i, 0] == label_of[iid] for i, iid in enumerate(ids)]))


class _NoEmbed:
    def __init__(self, bundle_id: str) -> None:
        self.bundle_id = bundle_id

    def __call__(self, images: Any) -> np.ndarray:
        raise RuntimeError("the benchmark writes embeddings directly")


def scratch(ctx: Any) -> Path:
    """This run's empty scratch folder under the benchmark's work dir (``quick`` or ``full``)."""
    work = ctx.work_dir / ("quick" if ctx.quick else "full")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def _make_hub(root: Path, n_parts: int) -> Any:
    from edge_app.bundle import load_bundle
    from edge_app.preprocess import PreprocessSpec
    from edge_app.signing import SigningKey, init_key
    from export.bundle import build_bundle
    from sync.hub.hub import Hub

    import tempfile

    key_path, _ = init_key(Path(tempfile.mkdtemp(prefix="partlens-bench-keys-")))  # never inside the repo
    key = SigningKey.load(key_path)
    model = root / "model.tflite"
    root.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"placeholder")
    bdir = build_bundle(root / "export", version=1, model_name="bench", model_files={"model.tflite": model},
                        kind="device", preprocess=PreprocessSpec(size=(32, 32)), labels=["a"],
                        embeddings=np.ones((1, DIM), np.float32), catalogue_rows=[{"image_id": "x", "part_number": "a"}],
                        key=key, quantization={}, parity={})
    hub = Hub.init(root / "hub", key_path, url="http://127.0.0.1:1", trust=[key_path.with_suffix(".pub.json")],
                   embedder_factory=lambda d, k: _NoEmbed(load_bundle(d, k).bundle_id))
    hub.set_bundle(bdir)
    thumb = _thumb_file(root)
    rng = np.random.default_rng(0)
    with hub.store.change() as ch:
        for start in range(0, n_parts, 10_000):
            idx = range(start, min(n_parts, start + 10_000))
            ch.upsert_parts([{"part_number": f"PN{i:06d}", "name": f"part {i}", "category": f"c{i % 40}",
                              "manufacturer": "acme", "description": "synthetic", "size_mm": float(i % 300),
                              "look_alike_group": f"g{i % 500}"} for i in idx])
            ch.upsert_inventory([{"part_number": f"PN{i:06d}", "site": s, "stock": i % 17, "bin": f"B{i % 999}",
                                  "as_of": "2024-01-01T00:00:00+00:00"} for i in idx for s in ("site_a", "site_b")])
            ch.upsert_images([{"image_id": f"img{i:06d}", "part_number": f"PN{i:06d}", "path": f"img{i:06d}.jpg",
                               "kind": "catalogue", "sha256": None} for i in idx])
            for i in idx:  # every image has a real thumbnail (one file, hard-linked: no disk per image)
                os.link(thumb, hub.thumb_path(f"img{i:06d}"))
            vec = rng.normal(size=(len(idx), DIM)).astype(np.float32)
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            ch.put_embeddings([f"img{i:06d}" for i in idx], vec, hub.bundle_id)
    return hub


def _thumb_file(root: Path) -> Path:
    """A 160 px JPEG thumbnail like the hub makes (noise, so about as large as a real one)."""
    from PIL import Image, ImageFilter

    path = root / "thumb.jpg"
    pixels = np.random.default_rng(0).integers(60, 200, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)).save(path, quality=85)
    return path


def _change(hub: Any, n: int, seed: int) -> int:
    """Change ``n`` parts: new name, new stock, a new re-embedded image each (with its thumbnail, as the hub makes
    one for every image it stores). Returns the new version."""
    rng = np.random.default_rng(seed)
    total = hub.store.counts()["parts"]
    picks = rng.choice(total, size=n, replace=False)
    with hub.store.change() as ch:
        ch.upsert_parts([{"part_number": f"PN{i:06d}", "name": f"renamed {i} s{seed}", "category": "c1"}
                         for i in picks])
        ch.upsert_inventory([{"part_number": f"PN{i:06d}", "site": "site_a", "stock": 1, "bin": "NEW",
                              "as_of": "2024-02-01T00:00:00+00:00"} for i in picks])
        ids = [f"new{seed}-{i:06d}" for i in picks]
        ch.upsert_images([{"image_id": iid, "part_number": f"PN{i:06d}", "path": f"{iid}.jpg", "kind": "field",
                           "sha256": None} for iid, i in zip(ids, picks)])
        for iid in ids:  # (the 2026-12-06 result's 500 failed thumbnails were these, missing at the hub)
            os.link(hub.root.parent / "thumb.jpg", hub.thumb_path(iid))
        vec = rng.normal(size=(n, DIM)).astype(np.float32)
        ch.put_embeddings(ids, vec / np.linalg.norm(vec, axis=1, keepdims=True), hub.bundle_id)
        return ch.version


def _device(hub: Any, root: Path, name: str, url: str) -> Any:
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    enrol(root / name, add_device(hub, name, "site_a", url))
    return SyncClient(root / name, smoke_test=lambda b: None)


def run(ctx: Any) -> dict[str, Any]:
    from sync.apply import apply_package, index_params, update_index
    from sync.hub.deltas import PackageService
    from sync.hub.process import HubProcess
    from sync.package import read_package

    n_parts = 5_000 if ctx.quick else 50_000
    n_apply = 1_000 if ctx.quick else 10_000
    n_devices = 10 if ctx.quick else 50
    crowd_parts = 2_000 if ctx.quick else 5_000
    work = scratch(ctx)
    out: dict[str, Any] = {"parts": n_parts, "embedding_dim": DIM}

    t = time.perf_counter()
    hub = _make_hub(work, n_parts)
    out["hub_build_s"] = time.perf_counter() - t
    svc = PackageService(hub)
    v0 = hub.store.version()
    t = time.perf_counter()
    snap = svc.package("site_a", 0, v0)
    out["snapshot_build_s"] = time.perf_counter() - t
    out["snapshot_bytes"] = snap["size"]

    # 1) 1% of the catalogue changes
    v1 = _change(hub, n_parts // 100, seed=1)
    delta = svc.package("site_a", v0, v1)
    out["delta_1pct_bytes"] = delta["size"]
    out["delta_1pct_ratio"] = delta["size"] / snap["size"]
    out["delta_1pct_ok(<=3%)"] = out["delta_1pct_ratio"] <= 0.03

    # 2) apply a 10k-row delta on a device holding the full catalogue (incl. index update)
    with HubProcess(hub.root) as server:  # loopback hub API, stopped whatever happens
        url = server.url
        # 3) full sync of a new device over loopback (HTTP download, verify, apply, index build)
        dev = _device(hub, work / "devices", "fresh", url)
        out["full_sync_load1_before"] = os.getloadavg()[0]
        with _Timer() as t_full:
            r = dev.sync(upload=False)
        out.update(t_full.report("full_sync"))
        out.update({f"full_sync_{k}_s": v for k, v in r.timings.items()})
        out["full_sync_load1_after"] = os.getloadavg()[0]
        out["full_sync_bytes"] = r.downloaded_bytes
        out["full_sync_thumbnails_fetched"] = r.thumbnails.get("fetched", 0)
        out["full_sync_thumbnails_failed"] = r.thumbnails.get("failed", 0)
        out["full_sync_thumbnails_ok"] = (out["full_sync_thumbnails_failed"] == 0
                                          and out["full_sync_thumbnails_fetched"] == hub.store.counts()["images"])
        out["thumbnail_file_bytes"] = (work / "thumb.jpg").stat().st_size
        out["full_sync_version_ok"] = r.to_version == hub.store.version()

        v2 = _change(hub, n_apply, seed=2)
        pkg_info = svc.package("site_a", r.to_version, v2)
        pkg = read_package(hub.root / "packages" / "site_a" / pkg_info["name"], pkg_info["signature"], dev.keyring)
        from edge_app.runtime.catalogue import CatalogueDB

        db = CatalogueDB(dev.paths.db)
        try:
            # warm: the index is loaded as the running app holds it
            live = update_index(dev.paths, db, hub.bundle_id, index_params(dev.paths, hub.bundle_id))
            out["apply_rows"] = n_apply
            out["apply_load1_before"] = os.getloadavg()[0]
            with _Timer() as t_db:
                apply_package(db, pkg, site="site_a", bundle_id=hub.bundle_id)
            with _Timer() as t_idx:  # live index in place, new vectors queued (searchable exactly)
                index = update_index(dev.paths, db, hub.bundle_id, index_params(dev.paths, hub.bundle_id),
                                     index=live, defer=True)
            out.update(t_db.report("apply_db"), **t_idx.report("apply_index_searchable"))
            out["apply_total_s"] = t_db.wall + t_idx.wall
            out["apply_ok(<=2s)"] = out["apply_total_s"] <= 2.0
            out["apply_pending_after"] = index.pending_count
            out["apply_search_ms_with_pending"] = _search_ms(index, pkg.embeddings)
            out["apply_new_vectors_found_top1"] = _found_top1(db, index, pkg)
            with _Timer() as t_flush:  # the background part: graph insertion, then the file
                index.flush()
            with _Timer() as t_save:
                index.persist()
            out.update(t_flush.report("apply_graph_insert"), **t_save.report("apply_index_save"))
            out["apply_total_incl_graph_and_save_s"] = out["apply_total_s"] + t_flush.wall + t_save.wall
            out["apply_search_ms_after_flush"] = _search_ms(index, pkg.embeddings)
            out["apply_load1_after"] = os.getloadavg()[0]
        finally:
            db.close()

    # 4) many devices at once (a smaller catalogue: n_devices full syncs share 2 CPU cores)
    crowd = _make_hub(work / "crowd", crowd_parts)  # thumbnails included: each device fetches them all
    with HubProcess(crowd.root) as server:  # loopback hub API, stopped whatever happens
        url = server.url
        clients = [_device(crowd, work / "crowd-devices", f"d{i:02d}", url) for i in range(n_devices)]
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(n_devices) as pool:
            results = list(pool.map(lambda c: c.sync(upload=False), clients))
        wall = time.perf_counter() - t
        secs = np.array([r.seconds for r in results])
        want = crowd.store.version()
        correct = sum(1 for c, r in zip(clients, results)
                      if r.to_version == want and c.status()["parts"] == crowd_parts)
        out.update({"crowd_devices": n_devices, "crowd_parts": crowd_parts, "crowd_wall_s": wall,
                    "crowd_p50_s": float(np.percentile(secs, 50)), "crowd_p95_s": float(np.percentile(secs, 95)),
                    "crowd_correct": correct})
    out.update(_https_cost(hub, dev.device["token"], dev.install_id, work, runs=3 if ctx.quick else 5))
    shutil.rmtree(work, ignore_errors=True)
    return out


def _https_cost(hub: Any, token: str, install_id: str, work: Path, runs: int) -> dict[str, Any]:
    """5) What HTTPS (``hub tls-init``, the pinned certificate) costs against plain HTTP on this machine: the
    current snapshot downloaded from an HTTP and an HTTPS process of the same hub (median of ``runs``), a
    small request on a new connection each time (TLS handshake included), median of 20, and thumbnails
    fetched 200 per request against one request each (network only: no decoding or writing)."""
    from sync.hub.deltas import PackageService
    from sync.hub.process import HubProcess
    from sync.hub.tls import cert_pem, enable_tls, fingerprint
    from sync.transport import HttpTransport

    info = PackageService(hub).package("site_a", 0, hub.store.version())
    url = f"/v1/packages/{info['name']}"
    out: dict[str, Any] = {"https_snapshot_bytes": info["size"]}
    with HubProcess(hub.root) as plain:  # started before the certificate exists: HTTP
        enable_tls(hub, ["127.0.0.1"])
        with HubProcess(hub.root) as secure:  # the same hub folder, now HTTPS
            pin = fingerprint(cert_pem(hub.root))
            # (the device's own install: its enrolment code is bound to it since its first sync)
            for name, transport in (("http", HttpTransport(plain.url, token, install_id=install_id)),
                                    ("https", HttpTransport(secure.url, token, tls_sha256=pin,
                                                            install_id=install_id))):
                secs = []
                for i in range(runs):
                    dest = work / f"dl-{name}-{i}.tar"
                    t = time.perf_counter()
                    transport.download(url, dest, info["size"])
                    secs.append(time.perf_counter() - t)
                    dest.unlink()
                out[f"{name}_snapshot_download_s"] = float(np.median(secs))
                lat = []
                for _ in range(20):
                    t = time.perf_counter()
                    transport.whoami()
                    lat.append(1e3 * (time.perf_counter() - t))
                out[f"{name}_request_ms"] = float(np.median(lat))
                # thumbnails: 200 per request (this client) vs one request each (the client before, or an old hub)
                ids = [f"img{i:06d}" for i in range(1000)]
                t = time.perf_counter()
                got = sum(len(transport.get_thumbnails(ids[j:j + 200], 1 << 20)) for j in range(0, 1000, 200))
                out[f"{name}_thumbnail_batched_ms_each"] = 1e3 * (time.perf_counter() - t) / max(got, 1)
                transport._thumbs_unsupported = True
                t = time.perf_counter()
                got = len(transport.get_thumbnails(ids[:300], 1 << 20))
                out[f"{name}_thumbnail_one_request_each_ms"] = 1e3 * (time.perf_counter() - t) / max(got, 1)
    out["https_download_slowdown"] = out["https_snapshot_download_s"] / out["http_snapshot_download_s"]
    return out

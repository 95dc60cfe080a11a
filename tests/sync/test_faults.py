"""Fault injection: SIGKILL a device mid-sync (delta + bundle swap) at 25 points.

After every kill the device is exactly in the old or exactly in the new state (catalogue rows,
catalogue version, bundle id, index stamp, active bundle pointer, index contents), and the
next sync completes.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import build_world
from .helpers import REPO, HubServer, make_bundle, write_images

NAMED = ["bundle:downloaded", "bundle:installed", "package:downloaded", "apply:begin", "apply:rows",
         "apply:embeddings", "apply:committed", "bundle:before-pointer", "bundle:after-pointer", "index:updated"]
RANDOM_KILLS = 15


def run_and_kill(module: str, args: list[str], mode: str, arg) -> int:
    """Run ``python -m module args`` until it prints "go"; then let it die at kill point ``arg`` (mode "named",
    through ``PARTLENS_SYNC_KILL_AT``) or SIGKILL it ``arg`` seconds later (mode "random"). Its exit code."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if mode == "named":
        env["PARTLENS_SYNC_KILL_AT"] = arg
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go", proc.stderr.read()
    if mode == "random":
        time.sleep(arg)
        proc.send_signal(signal.SIGKILL)
    rc = proc.wait(60)
    if mode == "named":
        assert rc == -signal.SIGKILL, f"kill point {arg} never reached: {proc.stderr.read()[-1500:]}"
    return rc


def device_state(d):
    """The observable state of a device folder, after the repair every open performs."""
    from edge_app.runtime.catalogue import CatalogueDB
    from sync.apply import DevicePaths, read_active, reconcile, update_index

    paths = DevicePaths(d)
    db = CatalogueDB(paths.db)
    try:
        bid = reconcile(paths, db)
        rows = db.db.conn.execute(
            "SELECT p.part_number, p.name, i.image_id, e.bundle_id FROM parts p LEFT JOIN images i USING(part_number)"
            " LEFT JOIN embeddings e USING(image_id) ORDER BY 1, 3").fetchall()
        inv = db.db.conn.execute("SELECT part_number, site, stock FROM inventory ORDER BY 1").fetchall()
        state = {"version": db.catalogue_version, "bundle_id": bid, "index_stamp": db.get_meta("index_stamp"),
                 "active": (read_active(paths) or {}).get("bundle_id"),
                 "rows": hashlib.sha256(repr((rows, inv)).encode()).hexdigest()[:16]}
        index = update_index(paths, db, bid)
        state["index"] = (str(index.stamp), len(index))
        assert len(index) == db.count("embeddings")
        return state
    finally:
        db.close()


@pytest.mark.slow
def test_sigkill_during_delta_and_bundle_swap(tmp_path):
    from sync.client import SyncClient

    world = build_world(tmp_path)
    server = HubServer(world.hub.root)
    try:
        from sync.client import enrol
        from sync.hub.enrol import add_device

        template = tmp_path / "template"
        enrol(template, add_device(world.hub, "faulty", "site_a", server.url))
        SyncClient(template, smoke_test=lambda b: None).sync()
        old = device_state(template)
        # the hub moves on: a new part, a stock change, a deletion and a new bundle (full re-embed)
        world.hub.add_part({"part_number": "LATE", "name": "late"}, inventory={"site_a": (1, "L")},
                           images=write_images(tmp_path / "late", [55]))
        world.hub.set_stock("P1", "site_a", 42, "X")
        world.hub.delete_parts(["P0"])
        world.hub.set_bundle(make_bundle(world.root / "export", world.export_key, 2))
        ref = tmp_path / "ref"
        shutil.copytree(template, ref)
        SyncClient(ref, smoke_test=lambda b: None).sync()
        new = device_state(ref)
        assert new != old and new["bundle_id"] != old["bundle_id"]

        # how long the sync takes in a child process, from "go" to "done" (to aim the random kills)
        probe = tmp_path / "probe"
        shutil.copytree(template, probe)
        proc = subprocess.Popen([sys.executable, "-m", "tests.sync._child_sync", str(probe)], cwd=str(REPO),
                                env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "go"
        t0 = time.perf_counter()
        assert proc.stdout.readline().strip() == "done"
        child_seconds = time.perf_counter() - t0
        proc.wait(30)
        assert device_state(probe) == new
        rng = random.Random(1234)
        plans = [("named", p) for p in NAMED] + [("random", rng.uniform(0, child_seconds * 0.9))
                                                for _ in range(RANDOM_KILLS)]
        outcomes = {"old": 0, "new": 0, "random_killed": 0}
        for i, (mode, arg) in enumerate(plans):
            d = tmp_path / f"run{i}"
            shutil.copytree(template, d)
            rc = run_and_kill("tests.sync._child_sync", [str(d)], mode, arg)
            if mode == "random" and rc == -signal.SIGKILL:
                outcomes["random_killed"] += 1
            state = device_state(d)
            assert state in (old, new), f"run {i} ({mode} {arg}): torn state {state}"
            outcomes["old" if state == old else "new"] += 1
            SyncClient(d, smoke_test=lambda b: None).sync()
            assert device_state(d) == new, f"run {i}: the next sync did not complete"
            # nothing a killed bundle unpack left stays (an audit: a whole bundle's copy stayed for weeks)
            assert not list((d / "bundles").glob(".unpack-*")), f"run {i}: a stopped unpack's folder stayed"
            shutil.rmtree(d)
        print("fault injection outcomes:", outcomes, "child sync seconds:", round(child_seconds, 3))
        assert outcomes["old"] and outcomes["new"], outcomes
        assert outcomes["random_killed"] >= RANDOM_KILLS // 3, outcomes
    finally:
        server.stop()


def hub_state(root):
    """What a hub folder says about its active bundle, read as `hub status` would after a restart."""
    from sync.hub.hub import Hub

    from .helpers import embedder_factory

    hub = Hub(root, embedder_factory=embedder_factory)
    try:
        bid = hub.bundle_id
        row = hub.store.bundle(bid)
        assert row is not None, f"active bundle {bid} has no bundles row (its version is unknown)"
        emb = hub.store._rows("SELECT bundle_id, COUNT(*) AS n FROM embeddings GROUP BY 1")
        assert [(e["bundle_id"], e["n"]) for e in emb] == [(bid, len(hub.store.live_images()))], emb
        assert (hub.bundle_dir(bid) / "manifest.json").exists() and hub.bundle_tar(bid).exists()
        return {"bundle_id": bid, "version": int(row["version"]), "catalogue_version": hub.store.version()}
    finally:
        hub.store.close()


@pytest.mark.slow
def test_sigkill_during_hub_set_bundle(tmp_path):
    """A hub killed while it installs a bundle and re-embeds the catalogue comes back with the old bundle or the new
    one, each with its version on record and all vectors from it; set-bundle then completes. (Before the fix the
    bundle's row was written after the switch committed: killed in between, the hub ran a bundle of unknown
    version, which let an older bundle through the rollback check.)"""
    world = build_world(tmp_path)
    world.hub.store.close()
    new_bundle = make_bundle(world.root / "export", world.export_key, 2)
    template = tmp_path / "template"
    shutil.copytree(world.hub.root, template)
    old = hub_state(template)
    rng = random.Random(99)
    plans = [("named", "hub_set_bundle_embedded"), ("named", "hub_set_bundle_committed")] + [
        ("random", rng.uniform(0.0, 0.25)) for _ in range(4)]
    seen = []
    for i, (mode, arg) in enumerate(plans):
        root = tmp_path / f"hub{i}"
        shutil.copytree(template, root)
        run_and_kill("tests.sync._child_hub_set_bundle", [str(root), str(new_bundle)], mode, arg)
        state = hub_state(root)
        assert state["bundle_id"] in (old["bundle_id"], new_bundle.name), state
        if state["bundle_id"] == old["bundle_id"]:
            assert state == old
        else:
            assert state["version"] == 2 and state["catalogue_version"] == old["catalogue_version"] + 1
        seen.append((mode, arg, state["bundle_id"] == new_bundle.name))
        # the operator runs set-bundle again: it completes (or the bundle is already active)
        from sync.hub.hub import Hub

        from .helpers import embedder_factory

        hub = Hub(root, embedder_factory=embedder_factory)
        try:
            if state["bundle_id"] == old["bundle_id"]:
                hub.set_bundle(new_bundle)
            with pytest.raises(Exception, match="not newer|rollbacks are refused"):
                hub.set_bundle(world.bundle_v1)  # the older bundle stays refused
        finally:
            hub.store.close()
        assert hub_state(root)["bundle_id"] == new_bundle.name
        shutil.rmtree(root)
    print("hub set-bundle kills:", seen)
    assert ("named", "hub_set_bundle_embedded", False) in seen and ("named", "hub_set_bundle_committed", True) in seen

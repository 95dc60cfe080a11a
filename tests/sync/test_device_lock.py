"""One sync or enrolment of a tablet's folder at a time, across processes (the app and the nightly sync)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edge_app.errors import SyncError, UsageError

from .helpers import REPO


def _client(world):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    return SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                      smoke_test=lambda b: None)


def test_a_second_sync_or_an_enrolment_waits_for_the_running_one(world):
    """Another process holds the tablet's sync lock (a nightly sync): the app's sync says so at once, an
    enrolment waits a few seconds and then says so; neither writes anything meanwhile. A killed holder frees it."""
    from sync.client import enrol
    from sync.hub.enrol import add_device
    from sync.lock import SyncBusyError

    _client(world).sync()
    before = (world.device_dir / "device.json").read_text()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom sync.lock import device_lock\n"
        "with device_lock(sys.argv[1], 'test'):\n    print('held', flush=True)\n    time.sleep(60)\n"),
        str(world.device_dir)], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SyncBusyError, match="another sync of this tablet is running"):
            _client(world).sync()
        payload = add_device(world.hub, "tab-new", "site_a")
        t0 = time.perf_counter()
        with pytest.raises(SyncBusyError):
            enrol(world.device_dir, payload)
        assert time.perf_counter() - t0 >= 4.5  # it waited for the running sync before giving up
        assert (world.device_dir / "device.json").read_text() == before
    finally:
        holder.kill()  # a killed holder (SIGKILL): the kernel releases the lock
        holder.wait(10)
    assert _client(world).sync().to_version == world.hub.store.version()


def test_a_sync_set_up_before_a_new_enrolment_does_not_write_the_old_one_back(world):
    from sync.client import enrol
    from sync.hub.enrol import add_device

    stale = _client(world)  # e.g. the nightly service made its client, then the engineer enrolled again
    enrol(world.device_dir, add_device(world.hub, "tab-again", "site_a"))
    with pytest.raises(SyncError, match="enrolled again"):
        stale.sync()
    assert json.loads((world.device_dir / "device.json").read_text())["device"] == "tab-again"


def test_an_enrolment_stopped_between_keyring_and_device_file_is_found(world, monkeypatch):
    from sync import client as client_mod
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device

    real = client_mod._write_device

    def dies(*a, **k):
        raise KeyboardInterrupt

    other = dict(add_device(world.hub, "tab-x", "site_a"))
    import base64

    from edge_app.signing import SigningKey

    extra = SigningKey.generate()  # the new enrolment trusts one more key: another keyring file
    other["keys"] = {**other["keys"], extra.key_id: base64.b64encode(extra.public_raw).decode()}
    monkeypatch.setattr(client_mod, "_write_device", dies)
    with pytest.raises(KeyboardInterrupt):
        enrol(world.device_dir, other)
    monkeypatch.setattr(client_mod, "_write_device", real)
    with pytest.raises(UsageError, match="enrolment was interrupted"):
        SyncClient(world.device_dir)
    enrol(world.device_dir, other)  # enrolling again repairs it
    assert SyncClient(world.device_dir).device["device"] == "tab-x"


def test_sync_running_reports_a_lock_held_by_another_process_and_frees_nothing(tmp_path):
    from sync.lock import device_lock, sync_running

    assert not sync_running(tmp_path)  # no sync ever ran: no lock file
    with device_lock(tmp_path, "test"):
        assert sync_running(tmp_path)  # held in this process (the app's own sync thread) counts too
    assert not sync_running(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom sync.lock import device_lock\n"
        "with device_lock(sys.argv[1], 'test'):\n    print('held', flush=True)\n    time.sleep(60)\n"),
        str(tmp_path)], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sync_running(tmp_path)
        assert sync_running(tmp_path)  # the probe did not take or break the holder's lock
        from sync.lock import SyncBusyError

        with pytest.raises(SyncBusyError):
            with device_lock(tmp_path, "second"):
                pass
    finally:
        holder.kill()
        holder.wait(10)
    assert not sync_running(tmp_path)

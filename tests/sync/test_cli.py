"""The thin CLI: hub init/import/add-device (QR)/serve/status/review and sync enrol/run/status."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time
import urllib.request

import pytest

from .helpers import PY, REPO, free_port, make_key, part_image


def run(*args, env=None, check=True):
    p = subprocess.run([PY, "-m", "edge_app.cli", *args], cwd=str(REPO), capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def write_generated(out):
    """The generated layout of ARCHITECTURE.md, in miniature."""
    (out / "images").mkdir(parents=True)
    with open(out / "parts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["part_number", "name", "category", "manufacturer", "description", "size_mm", "look_alike_group",
                    "stock_site_a", "bin_site_a", "stock_site_b", "bin_site_b"])
        for i in range(3):
            w.writerow([f"G{i}", f"gen {i}", "nut", "acme", "", "12.5", "g", i, f"A{i}", 5, f"B{i}"])
    with open(out / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "part_number", "kind", "scale_ref", "in_hand", "seed"])
        for i in range(3):
            for kind in ("catalogue", "field"):
                rel = f"images/G{i}/{kind}_0000.jpg"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(part_image(i + (100 if kind == "field" else 0)))
                w.writerow([rel, f"G{i}", kind, 0, 0, i])


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    key, _, _ = make_key(tmp_path / "keys")
    hub = tmp_path / "hub"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run("hub", "init", "--hub", str(hub), "--key", str(key), "--url", url)
    write_generated(tmp_path / "gen")
    imp = json.loads(run("hub", "import", "--hub", str(hub), str(tmp_path / "gen/parts.csv"),
                         str(tmp_path / "gen/images.csv")).stdout)
    assert imp["parts"] == 3 and imp["images"] == 3 and imp["inventory"] == 6  # field photos are not catalogue
    bad = run("hub", "import", "--hub", str(hub), str(tmp_path / "nope.csv"), check=False)
    assert bad.returncode == 3 and "nope.csv" in bad.stderr
    p = run("hub", "add-device", "--hub", str(hub), "tab9", "--site", "site_b", "--qr", str(tmp_path / "qr.png"),
            "--ascii", "--sync-window", "22:30-4:00")
    payload = json.loads(p.stdout.strip().splitlines()[-1])
    assert payload["site"] == "site_b" and payload["hub"] == url and payload["token"].startswith("pl1.tab9.")
    assert payload["sync_window"] == "22:30-04:00"
    assert url.startswith("http://") and "travel unencrypted" in p.stderr  # (an audit: no word before)
    bad_window = run("hub", "add-device", "--hub", str(hub), "tab10", "--site", "site_b", "--sync-window", "25:00-1:00",
                     check=False)
    assert bad_window.returncode == 2 and "HH:MM-HH:MM" in bad_window.stderr
    assert (tmp_path / "qr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\u2588" in p.stdout or "#" in p.stdout  # the terminal QR code
    dup = run("hub", "add-device", "--hub", str(hub), "tab9", "--site", "site_b", check=False)
    assert dup.returncode == 2
    dev = tmp_path / "dev"
    run("sync", "enrol", "--data-dir", str(dev), p.stdout.strip().splitlines()[-1])
    assert json.loads((dev / "device.json").read_text())["sync_window"] == "22:30-04:00"
    server = subprocess.Popen([PY, "-m", "edge_app.cli", "hub", "serve", "--hub", str(hub), "--port", str(port)],
                              cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/openapi.json", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        res = json.loads(run("sync", "run", "--data-dir", str(dev)).stdout)
        assert res["to_version"] == imp["version"] and res["package"].startswith("snapshot-")
        st = json.loads(run("sync", "status", "--data-dir", str(dev)).stdout)
        assert st["parts"] == 3 and st["images"] == 3 and st["site"] == "site_b"
        skipped = json.loads(run("sync", "run", "--data-dir", str(dev), "--only-if-allowed",
                                 "--window", "01:00-01:01").stdout)
        assert skipped["outcome"] == "skipped" and skipped["reason"] == "not docked" and skipped["result"] is None
        # One background attempt, as the tablet's sync service makes it: docked, unmetered, any time.
        bg = json.loads(run("sync", "run", "--data-dir", str(dev), "--only-if-allowed", "--charging",
                            "--unmetered", "--window", "always").stdout)
        assert bg["outcome"] == "synced" and bg["result"]["to_version"] == imp["version"], bg
        recorded = json.loads((dev / "sync_status.json").read_text())
        assert recorded["outcome"] == "synced" and recorded["last_success"] == bg["at"]
        # A lost tablet: revoke its token; the next sync is refused with the authentication exit code.
        devices = json.loads(run("hub", "devices", "--hub", str(hub)).stdout)
        assert [(d["name"], d["revoked"]) for d in devices] == [("tab9", 0)]
        rv = run("hub", "revoke-device", "--hub", str(hub), "tab9")
        assert "revoked" in rv.stderr
        assert json.loads(run("hub", "devices", "--hub", str(hub)).stdout)[0]["revoked"] == 1
        refused = run("sync", "run", "--data-dir", str(dev), check=False)
        assert refused.returncode == 7, refused.stderr
        assert run("hub", "revoke-device", "--hub", str(hub), "nobody", check=False).returncode == 2
    finally:
        server.terminate()
        server.wait(10)
    assert run("sync", "should-run", "--now", "2024-01-01T02:00", "--charging", "--unmetered",
               check=False).returncode == 0
    assert run("sync", "should-run", "--now", "2024-01-01T02:00", "--charging", check=False).returncode == 1
    status = json.loads(run("hub", "status", "--hub", str(hub)).stdout)
    assert status["parts"] == 3 and status["bundle_id"] is None

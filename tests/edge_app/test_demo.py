"""The main job, end to end on a tiny model: generate, train, export, bundle, hub, sync, identify."""
from __future__ import annotations

import json

import pytest

from edge_app.demo import DemoConfig, run_demo, split_parts
from edge_app.errors import UsageError


def test_split_parts_is_deterministic_and_disjoint() -> None:
    parts = [f"P{i:02d}" for i in range(20)]
    a = split_parts(parts, 3, 2, seed=1)
    assert a == split_parts(parts, 3, 2, seed=1)
    assert len(a["new"]) == 3 and len(a["outside"]) == 2 and len(a["known"]) == 15
    assert not (set(a["new"]) & set(a["known"])) and not (set(a["outside"]) & set(a["known"]))
    with pytest.raises(UsageError):
        split_parts(parts[:5], 3, 2, seed=0)


def test_demo_refuses_a_non_empty_out_and_bad_options(tmp_path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        run_demo(DemoConfig(out=str(tmp_path)))
    assert (tmp_path / "x").read_text() == "keep me"
    with pytest.raises(UsageError, match="pretrained"):
        run_demo(DemoConfig(out=str(tmp_path / "new"), pretrained="maybe"))


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path) -> None:
    cfg = DemoConfig(out=str(tmp_path / "demo"), model="tiny", pretrained="no", epochs=3, image_size=64,
                     catalogue_per_part=2, field_per_part=3, query_per_part=1, export_format="tflite-fp32",
                     starter_bundle=str(tmp_path / "starter"))
    report = run_demo(cfg)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["bundle"]["bundle_id"] == report["bundle"]["bundle_id"]
    assert (tmp_path / "demo" / "report.md").read_text().startswith("# partlens demo report")
    # The new parts are not in the first catalogue: they can never rank first before the sync.
    assert report["identify_new_before_sync"]["top1"] == 0.0
    # After one sync they are in the device's catalogue and index (no retraining happened).
    assert report["sync_incremental"]["to_version"] > report["sync_incremental"]["from_version"]
    assert report["identify_known"]["queries"] == len(report["parts"]["known"])
    # Model-independent proof that the hub embedded the new parts with the model the tablet runs:
    # each new part's own catalogue photo, identified on the tablet, finds that part first.
    from edge_app.demo import _device_identifier

    ident = _device_identifier(tmp_path / "demo" / "tablet")
    try:
        for pn in report["parts"]["new"]:
            photo = sorted((tmp_path / "demo" / "data" / "new" / "images" / pn).glob("catalogue_*.jpg"))[0]
            res = ident.identify([photo], top=3)
            assert res.matches[0].part_number == pn
            assert res.matches[0].similarity > 0.999
    finally:
        ident.db.close()
    # The starter data the APK ships: catalogue, keyring, active bundle; never the device token.
    starter = tmp_path / "starter"
    assert (starter / "catalogue.db").is_file() and (starter / "keyring.json").is_file()
    assert (starter / "bundles" / report["bundle"]["bundle_id"] / "manifest.json").is_file()
    assert not (starter / "device.json").exists() and not (starter / "outbox.db").exists()
    from edge_app.services import seed_from_starter

    assert seed_from_starter(tmp_path / "fresh-device", starter)
    fresh = _device_identifier(tmp_path / "fresh-device")
    try:
        pn = report["parts"]["new"][0]
        photo = sorted((tmp_path / "demo" / "data" / "new" / "images" / pn).glob("catalogue_*.jpg"))[0]
        assert fresh.identify([photo], top=1).matches[0].part_number == pn
    finally:
        fresh.db.close()


def test_pretrained_auto_uses_local_weights_only_when_present(tmp_path, monkeypatch) -> None:
    from edge_app.demo import _resolve_pretrained

    assert _resolve_pretrained(DemoConfig(model="tiny")) is False  # trained from scratch by design
    assert _resolve_pretrained(DemoConfig(model="mobilenet_v2", pretrained="yes")) is True
    assert _resolve_pretrained(DemoConfig(model="mobilenet_v2", pretrained="no")) is False
    monkeypatch.setenv("PARTLENS_WEIGHTS", str(tmp_path / "empty"))
    assert _resolve_pretrained(DemoConfig(model="mobilenet_v2")) is False
    (tmp_path / "empty").mkdir()
    from training.weights import MOBILENET_V2_FILE

    (tmp_path / "empty" / MOBILENET_V2_FILE).write_bytes(b"present")
    assert _resolve_pretrained(DemoConfig(model="mobilenet_v2")) is True

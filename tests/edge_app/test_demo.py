"""The main job: ``partlens demo --quick`` end to end (CI runs it), plus its scoring and parts rules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_app.demo import DemoConfig, quick, resolve_pretrained, run_demo, split_parts
from edge_app.demo.catalogue import DELIBERATE_SIZE_PAIRS, mixed_catalogue, size_only_groups
from edge_app.demo.config import export_candidates
from edge_app.demo.metrics import Outcome, look_alike_confusion, summarize
from edge_app.demo.pipeline import export_first_passing
from edge_app.errors import GateError, UsageError

REPO = Path(__file__).resolve().parents[2]


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
    with pytest.raises(UsageError, match="catalogue"):
        run_demo(DemoConfig(out=str(tmp_path / "new"), catalogue="some"))
    for bad, match in ((dict(backbone_lr_mult=0.0), "backbone_lr_mult"), (dict(label_smoothing=1.0), "label_smoothing"),
                       (dict(weight_decay=-0.1), "weight_decay"), (dict(gallery_repeats=-1), "gallery_repeats"),
                       (dict(sampler="pk_catalogue"), "gallery_repeats >= 1"), (dict(sampler="pk2"), "sampler"),
                       (dict(reference_weight=1.0), "reference_weight"), (dict(reference_weight=-0.5), "reference_weight"),
                       # (an audit: these three were refused only after generating, or training)
                       (dict(export_format="bogus"), "unknown export format"), (dict(model="nosuch"), "unknown model"),
                       (dict(image_size=100_000), "--image-size must be 32..1024"),
                       (dict(image_size=0), "--image-size must be 32..1024")):
        with pytest.raises(UsageError, match=match):  # refused before anything is generated
            run_demo(DemoConfig(out=str(tmp_path / "new"), **bad))
    with pytest.raises(UsageError, match="needs tiny's ImageNet weights"):  # never dropped silently
        run_demo(DemoConfig(out=str(tmp_path / "new"), model="tiny", reference_weight=0.5))
    assert not (tmp_path / "new").exists()


def test_demo_refuses_an_unwritable_signing_key_folder_before_generating(tmp_path, monkeypatch) -> None:
    import edge_app.signing

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(edge_app.signing, "DEFAULT_KEY_DIR", tmp_path / "a-file" / "keys")
    with pytest.raises(UsageError, match="demo's signing key in .*a-file.*PARTLENS_KEY_DIR"):
        run_demo(DemoConfig(out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # failed in its first second, nothing generated or trained


def test_every_demo_run_reuses_one_demo_key(tmp_path, monkeypatch) -> None:
    import edge_app.signing
    from edge_app.demo.pipeline import DemoRun

    monkeypatch.setattr(edge_app.signing, "DEFAULT_KEY_DIR", tmp_path / "keys")
    first, second = DemoRun(DemoConfig(out=str(tmp_path / "a"))), DemoRun(DemoConfig(out=str(tmp_path / "b")))
    first.make_key()
    second.make_key()
    assert first.key_path == second.key_path and first.key_path.parent == tmp_path / "keys" / "demo"
    assert len(list((tmp_path / "keys" / "demo").glob("*.key"))) == 1  # a new key per run had piled up dozens


def test_quick_is_the_same_chain_smaller() -> None:
    d, q = DemoConfig(), quick(DemoConfig())
    assert (q.model, q.export_format, q.pretrained) == (d.model, d.export_format, d.pretrained)
    assert q.epochs < d.epochs and q.field_per_part < d.field_per_part and q.quick and not d.quick


def test_export_candidates_try_the_other_int8_quantizer_before_fp32() -> None:
    assert export_candidates("tflite-int8") == ["tflite-int8", "tflite-int8-aiq", "tflite-fp32"]
    assert export_candidates("tflite-int8-aiq") == ["tflite-int8-aiq", "tflite-int8", "tflite-fp32"]
    assert export_candidates("onnx-int8") == ["onnx-int8"]  # not a tablet fallback chain: its failure is an error


def test_export_first_passing_ships_the_first_format_the_gate_accepts() -> None:
    calls: list[str] = []

    def export(fail: set[str]):
        def run(fmt: str) -> dict:
            calls.append(fmt)
            if fmt in fail:
                raise GateError(f"parity gate failed for {fmt}: median embedding cosine 0.97 < 0.98")
            return {"format": fmt}
        return run

    chain = export_candidates("tflite-int8")
    out, refused = export_first_passing(chain, export({"tflite-int8"}))
    assert out == {"format": "tflite-int8-aiq"} and calls == ["tflite-int8", "tflite-int8-aiq"]
    assert [r["format"] for r in refused] == ["tflite-int8"] and "cosine 0.97" in refused[0]["reason"]
    calls.clear()
    out, refused = export_first_passing(chain, export(set()))
    assert out == {"format": "tflite-int8"} and refused == [] and calls == ["tflite-int8"]
    with pytest.raises(GateError, match="tflite-fp32"):  # nothing passed: the last refusal is the error
        export_first_passing(chain, export(set(chain)))


def _outcome(truth: str, ranked: list[str], status: str = "match", ms: float = 5.0) -> Outcome:
    return Outcome(f"{truth}.jpg", truth, ranked, [None] * len(ranked), [0.9] * len(ranked), status, 0.9, False, ms)


def test_summary_and_look_alike_confusion_count_what_happened() -> None:
    groups = {"NUT-M8": "nut", "NUT-M10": "nut", "GEAR": "", "FUSE": ""}
    lone = {**groups, "WSH-M8": "washer"}  # its size sibling is not in this catalogue: nothing to confuse
    outs = [_outcome("NUT-M8", ["NUT-M8", "NUT-M10"]), _outcome("NUT-M8", ["NUT-M10", "NUT-M8"]),
            _outcome("NUT-M10", ["NUT-M8", "GEAR"], status="no_confident_match"),
            _outcome("GEAR", ["FUSE", "GEAR"], ms=15.0)]
    s = summarize(outs, groups)
    assert s["queries"] == 4 and s["top1"] == 0.25 and s["top1_up_to_size"] == 0.75 and s["top5"] == 0.75
    assert s["no_confident_match"] == 0.25 and s["precision_when_accepted"] == pytest.approx(1 / 3)
    assert s["median_ms"] == 5.0 and s["p95_ms"] > 5.0
    assert s["top1_after_measurement"] == s["top1"] and s["asked_to_measure"] == 0  # nobody was asked
    from dataclasses import replace

    measured = [replace(outs[1], needs_scale_photo=True, after_measurement="NUT-M8"), *outs[2:]]
    m = summarize(outs[:1] + measured, groups)
    assert m["top1"] == 0.25 and m["top1_after_measurement"] == 0.5 and m["asked_to_measure"] == 0.25
    assert m["asked_for_closeup"] == 0.0
    assert summarize([replace(outs[0], needs_detail_photo=True)], groups)["asked_for_closeup"] == 1.0
    # a same-group look-alike of the SAME size (relays that differ by their label) is still a miss
    relays = {"RLY-12V": "relay", "RLY-24V": "relay"}
    sizes = {"RLY-12V": 28.0, "RLY-24V": 28.0, "NUT-M8": 13.0, "NUT-M10": 17.0}
    r = summarize([_outcome("RLY-24V", ["RLY-12V"]), _outcome("NUT-M8", ["NUT-M10"])], {**groups, **relays}, sizes)
    assert r["top1"] == 0.0 and r["top1_up_to_size"] == 0.5
    (nut,) = look_alike_confusion(outs + [_outcome("WSH-M8", ["GEAR"])], lone)
    assert nut["group"] == "nut" and nut["queries"] == 3 and nut["confused_within_group"] == 2
    assert {(p["truth"], p["answer"], p["count"]) for p in nut["pairs"]} == {("NUT-M8", "NUT-M10", 1),
                                                                          ("NUT-M10", "NUT-M8", 1)}


def test_wear_effect_pairs_each_worn_photo_with_its_clean_twin() -> None:
    from dataclasses import replace

    from edge_app.demo.metrics import wear_effect

    def at(o, root: str, name: str):
        return replace(o, path=f"{root}/images/{o.truth}/{name}")

    clean = [at(_outcome("NUT-M8", ["NUT-M8"]), "q", "field_0000.jpg"), at(_outcome("NUT-M8", ["NUT-M10"]), "q",
                                                                            "field_0001.jpg"),
             at(_outcome("GEAR", ["GEAR"]), "q", "field_0000.jpg")]
    worn = [at(_outcome("GEAR", ["FUSE"]), "w", "field_0000.jpg"),  # order does not matter: paired by file
            at(_outcome("NUT-M8", ["NUT-M8"]), "w", "field_0001.jpg"),
            at(_outcome("NUT-M8", ["NUT-M8"]), "w", "field_0000.jpg")]
    kinds = {"w/images/GEAR/field_0000.jpg": "rust+chipped", "w/images/NUT-M8/field_0001.jpg": "grease",
             "w/images/NUT-M8/field_0000.jpg": "chipped"}
    e = wear_effect(clean, worn, kinds)
    assert e["pairs"] == 3 and e["clean_top1"] == pytest.approx(2 / 3) and e["worn_top1"] == pytest.approx(2 / 3)
    assert e["right_to_wrong"] == 1 and e["wrong_to_right"] == 1
    assert e["by_kind"] == {"chipped": {"queries": 2, "top1": 0.5}, "grease": {"queries": 1, "top1": 1.0},
                            "rust": {"queries": 1, "top1": 0.0}}
    with pytest.raises(ValueError, match="no clean twin"):
        wear_effect(clean[:1], worn, kinds)


def test_mixed_catalogue_keeps_distinct_parts_and_the_named_size_pairs() -> None:
    from training.synth import PARTS

    parts, description = mixed_catalogue()
    assert len(set(parts)) == len(parts) and str(len(parts)) in description
    for a, b in DELIBERATE_SIZE_PAIRS:
        assert a in parts and b in parts
    series = size_only_groups()
    assert "hex-nut" in series and "blade-fuse-ato" not in series  # fuses differ in colour, not size
    for group, members in series.items():
        kept = [m for m in members if m in parts]
        assert len(kept) == (2 if any(m in pair for pair in DELIBERATE_SIZE_PAIRS for m in members) else 1), group
    in_series = {m for ms in series.values() for m in ms}
    assert all(p.part_number in parts for p in PARTS if p.part_number not in in_series)


def test_pretrained_auto_uses_local_weights_only_when_present(tmp_path, monkeypatch) -> None:
    assert resolve_pretrained(DemoConfig(model="tiny")) is False  # trained from scratch by design
    assert resolve_pretrained(DemoConfig(model="mobilenet_v2", pretrained="yes")) is True
    assert resolve_pretrained(DemoConfig(model="mobilenet_v2", pretrained="no")) is False
    monkeypatch.setenv("PARTLENS_WEIGHTS", str(tmp_path / "empty"))
    assert resolve_pretrained(DemoConfig(model="mobilenet_v2")) is False
    (tmp_path / "empty").mkdir()
    from training.weights import MOBILENET_V2_FILE

    (tmp_path / "empty" / MOBILENET_V2_FILE).write_bytes(b"present")
    assert resolve_pretrained(DemoConfig(model="mobilenet_v2")) is True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has exited but its parent has not reaped it yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """``partlens demo --quick`` exactly as a user runs it (CI runs this on every submission)."""
    root = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "edge_app.cli", "demo", "--quick", "--out", str(root / "run"),
                           "--starter-bundle", str(root / "starter")],
                          cwd=str(root), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, json.loads((root / "run" / "report.json").read_text()), proc


@pytest.mark.slow
def test_quick_demo_runs_the_whole_chain(quick_demo) -> None:
    root, report, proc = quick_demo
    run = root / "run"
    # Progress was shown, step by step, and the table and report path were printed.
    assert "[1/9]" in proc.stderr and "[9/9]" in proc.stderr
    assert "| known parts, fresh field photos |" in proc.stdout and str(run / "report.html") in proc.stdout
    assert report["training"]["model"] == "efficientnet_lite0"
    # no reference branch by default (`--reference-weight`): the bundle holds the trained 256-d embedding
    assert report["training"]["reference_weight"] == 0 and "reference branch" not in proc.stdout
    manifest = json.loads((Path(report["bundle"]["path"]) / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 256
    assert report["export"]["format"] in ("tflite-int8", "tflite-int8-aiq", "tflite-fp32")
    refused = report["export"]["refused"]  # each format the gate refused, in the order tried, with why
    tried = [r["format"] for r in refused] + [report["export"]["format"]]
    assert tried == export_candidates("tflite-int8")[:len(tried)]
    assert all("parity gate failed" in r["reason"] for r in refused)
    # the gate judged the calibration photos, never the query photos the report scores
    assert report["export"]["parity"]["n_val"] == report["images"]["calibration"]
    # queries and calibration photos on texture pools of their own, never the training photos' (an audit)
    pools = {d: json.loads((run / "data" / d / "generate.json").read_text())["backgrounds"]
             for d in ("known", "queries", "worn", "calibration")}
    assert pools == {"known": "field", "queries": "query", "worn": "query", "calibration": "calibration"}
    assert "no training photo shows" in (run / "report.md").read_text()
    # The hub was a real server on loopback, and it is gone now.
    assert report["hub"]["url"].startswith("https://127.0.0.1:") and len(report["hub"]["tls_sha256"]) == 64
    assert not _pid_alive(report["hub"]["pid"])
    # The new parts are not in the first catalogue: they can never rank first before the sync ...
    assert report["identify_new_before_sync"]["top1"] == 0.0
    # ... and after one sync they are in the device's catalogue and index (no retraining happened).
    assert report["sync_incremental"]["to_version"] > report["sync_incremental"]["from_version"]
    assert report["identify_known"]["queries"] == 2 * len(report["parts"]["known"])  # --quick: 2 photos a part
    # the second photo of each part fused with the first: one two-view query per part, printed as its own row
    two = report["identify_known_two_views"]
    assert two["queries"] == len(report["parts"]["known"]) and "| known parts, two of those photos" in proc.stdout
    assert 0.0 <= two["top1"] <= 1.0 and two["top5"] >= two["top1"]
    # the same known-part photos again with wear drawn on (grease, rust, dust, a chipped piece): its own row, and a
    # paired count against the clean photos that adds up with the two rows' top-1
    worn, we = report["identify_known_worn"], report["wear"]
    assert worn["queries"] == report["identify_known"]["queries"] == we["pairs"] == report["images"]["worn_queries"]
    assert "| known parts, the same photos worn or broken" in proc.stdout and "Worn or broken parts:" in proc.stdout
    assert we["clean_top1"] == pytest.approx(report["identify_known"]["top1"], abs=1e-9)
    assert we["worn_top1"] == pytest.approx(worn["top1"], abs=1e-9)
    n = we["pairs"]
    assert round(n * we["worn_top1"]) == round(n * we["clean_top1"]) - we["right_to_wrong"] + we["wrong_to_right"]
    assert set(we["by_kind"]) <= {"grease", "rust", "dust", "chipped"} and len(we["by_kind"]) >= 2
    assert sum(k["queries"] for k in we["by_kind"].values()) >= n
    # step 8: the app's own path (capture, identify, "this is the part") for the known-part photos, synced up; the
    # hub's field statistics count exactly what the tablet answered (the same photos scored after the sync)
    fs = report["field_stats"]
    n_known = report["identify_known_after_sync"]["queries"]
    sc = fs["spot_checks"]
    assert fs["identifications"] == fs["confirmed"] == n_known and fs["uploaded"] == 2 * n_known + sc["answered"]
    # spot checks: every one picked was answered ("this is the part" answers it); the hub's top-1 over them is the
    # tablet's own top-1 over the same identifications
    assert sc["asked"] == sc["answered"] and sc["skipped"] == sc["unanswered"] == 0 and sc["answered"] >= 1
    assert sc["top1"] == pytest.approx(fs["spot_check_direct_top1"], abs=1e-4) and fs["spot_check_rate"] == 0.25
    assert "Spot checks (the hub asked for 1 identification in 4" in proc.stdout
    # the hub scores its bundle on the confirmed photos as a tablet ranks (`hub evaluate-bundle`): it agrees with the
    # tablet's own answers up to a photo or two (the uploaded photo is the tablet's re-encoded crop)
    ev = fs["hub_evaluation"]
    assert ev["photos"] == n_known and abs(ev["top1"] - fs["confirmed_top1"]) <= 2 / n_known + 1e-9
    assert ev["spot_check_photos"] == sc["answered"]  # "this is the part" on a picked photo flags it as the sample
    assert "`partlens hub evaluate-bundle` on those" in proc.stdout
    assert fs["confirmed_top1"] == pytest.approx(report["identify_known_after_sync"]["top1"], abs=1e-4)
    assert fs["confirmed_top5"] == pytest.approx(report["identify_known_after_sync"]["top5"], abs=1e-4)
    assert fs["no_confident_match"] == pytest.approx(report["identify_known_after_sync"]["no_confident_match"],
                                                     abs=1e-4)
    assert "Field statistics (`partlens hub field-stats`)" in proc.stdout
    # the known parts are scored again after the sync, with the new parts competing
    assert report["identify_known_after_sync"]["queries"] == report["identify_known"]["queries"]
    assert "| known parts AFTER that sync" in proc.stdout
    # the hub checked the new parts against the catalogue and the table says what it found
    assert isinstance(report["hub_look_alikes"], list) and "Hub look-alike check" in proc.stdout
    assert all(w["part_number"] in report["parts"]["new"] for w in report["hub_look_alikes"])
    for key in ("top1", "top5", "no_confident_match", "median_ms", "p95_ms", "top1_after_measurement"):
        assert key in report["identify_known"]
    html = (run / "report.html").read_text()
    thumbs = list((run / "report_files").glob("*.jpg"))
    assert len(thumbs) > len(report["parts"]["known"]) and thumbs[0].name in html


@pytest.mark.slow
def test_quick_demo_new_parts_are_found_after_one_sync(quick_demo) -> None:
    """Model-independent proof that the hub embedded the new parts with the model the tablet runs:
    each new part's own catalogue photo, identified on the tablet, finds that part first, and the
    vector the sync delivered for it is what the tablet's model makes of that photo (the mean of the
    bundle's catalogue views, as the hub stores reference images)."""
    import numpy as np

    from edge_app.catalogue_views import embed_with_views
    from edge_app.demo import device_identifier

    root, report, _ = quick_demo
    ident = device_identifier(root / "run" / "tablet")
    try:
        assert ident.bundle.catalogue_views == report["config"]["catalogue_views"] == "flip-crop5"
        labels, vectors = ident.db.all_embeddings(ident.bundle_id)
        names = ident.db.embedding_labels(ident.bundle_id)
        for pn in report["parts"]["new"]:
            photo = sorted((root / "run" / "data" / "new" / "images" / pn).glob("catalogue_*.jpg"))[0]
            res = ident.identify([photo], top=3)
            assert res.matches[0].part_number == pn
            images, _ = ident.decode([photo])
            own = embed_with_views(ident.embed, images, ident.bundle.catalogue_views)[0]
            stored = vectors[[names[int(lab)][1] == pn for lab in labels]]
            assert len(stored) and float((stored @ own).max()) > 0.9999
    finally:
        ident.db.close()


@pytest.mark.slow
def test_quick_demo_starter_bundle_carries_no_secrets(quick_demo, tmp_path) -> None:
    from edge_app.demo import device_identifier
    from edge_app.services import seed_from_starter

    root, report, _ = quick_demo
    starter = root / "starter"
    assert (starter / "catalogue.db").is_file() and (starter / "keyring.json").is_file()
    assert (starter / "bundles" / report["bundle"]["bundle_id"] / "manifest.json").is_file()
    assert not (starter / "device.json").exists() and not (starter / "outbox.db").exists()
    from tests.test_build_spec import buildozer_ships

    files = [f"starter_bundle/{p.relative_to(starter).as_posix()}" for p in starter.rglob("*") if p.is_file()]
    assert len(files) >= 7 and all(buildozer_ships(f) for f in files), "the APK would miss starter files"
    assert len(list((starter / "thumbs").glob("*.jpg"))) >= 20  # parts show their pictures before a first sync
    assert seed_from_starter(tmp_path / "fresh-device", starter)
    fresh = device_identifier(tmp_path / "fresh-device")
    try:
        pn = report["parts"]["new"][0]
        photo = sorted((root / "run" / "data" / "new" / "images" / pn).glob("catalogue_*.jpg"))[0]
        assert fresh.identify([photo], top=1).matches[0].part_number == pn
    finally:
        fresh.db.close()


@pytest.mark.slow
def test_demo_stops_its_hub_on_ctrl_c(quick_demo, tmp_path, monkeypatch) -> None:
    """A KeyboardInterrupt in the middle of the hub steps still stops the hub process."""
    from edge_app.demo.pipeline import DemoRun

    root, report, _ = quick_demo
    seen: dict[str, int] = {}

    def interrupted(self: DemoRun) -> None:
        seen["pid"] = self.report["hub"]["pid"]
        assert _pid_alive(seen["pid"])
        raise KeyboardInterrupt

    monkeypatch.setattr(DemoRun, "first_sync", interrupted)
    run = DemoRun(quick(DemoConfig(out=str(tmp_path / "again"))))
    run.data = root / "run" / "data"
    run.bundle_dir = Path(report["bundle"]["path"])
    run.key_path = Path(report["bundle"]["signing_key"])
    with pytest.raises(KeyboardInterrupt):
        run.hub_and_tablet()
    assert seen["pid"] and not _pid_alive(seen["pid"])


def test_cli_quick_and_app_flags_reach_the_library(tmp_path, monkeypatch, capsys) -> None:
    """``--quick`` selects the quick preset; ``--app`` opens the app on the synced device folder afterwards."""
    import edge_app.demo as demo_cli
    from edge_app.cli import main

    seen: dict = {}

    def fake_run(cfg, progress=None):
        seen["cfg"] = cfg
        progress(1, 9, "generate")
        return {"device_dir": str(tmp_path / "tablet"), "fake": True}

    monkeypatch.setattr(demo_cli, "run_demo", fake_run)
    monkeypatch.setattr(demo_cli, "report_markdown", lambda r: "TABLE")
    monkeypatch.setattr(demo_cli, "_open_app", lambda d: seen.setdefault("app", d))
    assert main(["demo", "--quick", "--app", "--out", str(tmp_path / "o"), "--epochs", "1"]) == 0
    assert seen["cfg"].quick and seen["cfg"].epochs == 1 and seen["cfg"].image_size == quick(DemoConfig()).image_size
    assert seen["app"] == tmp_path / "tablet"
    out = capsys.readouterr()
    assert "TABLE" in out.out and "[1/9]" in out.err
    seen.clear()
    assert main(["demo", "--out", str(tmp_path / "p")]) == 0
    assert not seen["cfg"].quick and "app" not in seen


def test_measurement_uses_the_apps_reranking() -> None:
    """When the runtime asks for a measurement, the simulated caliper reading re-ranks the look-alikes."""
    from types import SimpleNamespace

    from edge_app.demo.metrics import identify_photos
    from edge_app.services import IdentifyOutcome, Match

    def match(pn: str, sim: float, size: float) -> SimpleNamespace:
        return SimpleNamespace(part_number=pn, best_image_id=None, similarity=sim, size_mm=size)

    res = SimpleNamespace(matches=[match("NUT-M8", 0.9, 13.0), match("NUT-M10", 0.88, 16.0)], status="match",
                          confidence=0.7, needs_scale_photo=True)
    ident = SimpleNamespace(identify=lambda paths, top: res)

    class Services:
        def outcome_from_result(self, result, capture_ids):
            return IdentifyOutcome([Match(m.part_number, m.part_number, m.similarity, "possible", None, None, None,
                                          None, m.size_mm, "hex-nut", None) for m in result.matches], True, True)

    sizes = {"NUT-M8": 13.0, "NUT-M10": 16.0}
    (o,) = identify_photos(ident, [(Path("q.jpg"), "NUT-M10")], services=Services(), sizes=sizes)
    assert o.first == "NUT-M8" and o.after_measurement == "NUT-M10"
    (plain,) = identify_photos(ident, [(Path("q.jpg"), "NUT-M10")])  # no services: nothing is simulated
    assert plain.after_measurement is None


def test_two_view_queries_pair_photos_of_one_part_and_reach_the_runtime_together() -> None:
    from types import SimpleNamespace

    from edge_app.demo.metrics import identify_photos, view_pairs

    photos = [(Path(f"q/{pn}/{i}.jpg"), pn) for pn in ("B", "A") for i in (3, 1, 2)] + [(Path("q/C/0.jpg"), "C")]
    pairs = view_pairs(photos)
    # parts in order, photos in path order, never two parts in one query; odd leftovers and single photos dropped
    assert pairs == [((Path("q/A/1.jpg"), Path("q/A/2.jpg")), "A"), ((Path("q/B/1.jpg"), Path("q/B/2.jpg")), "B")]
    seen = []

    def identify(paths, top):
        seen.append(list(paths))
        return SimpleNamespace(matches=[SimpleNamespace(part_number="A", best_image_id=None, similarity=0.9)],
                               status="match", confidence=0.8, needs_scale_photo=False)

    out = identify_photos(SimpleNamespace(identify=identify), pairs)
    assert seen == [list(p) for p, _ in pairs]  # both views in ONE call: the runtime fuses them
    assert [o.path for o in out] == ["q/A/1.jpg", "q/B/1.jpg"] and out[0].extra_views == ["q/A/2.jpg"]
    assert [o.first == o.truth for o in out] == [True, False]

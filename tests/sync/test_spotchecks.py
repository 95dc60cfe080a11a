"""Spot checks across hub and tablet: the hub's rate reaches tablets with the sync plan, and field-stats turns
the answers into unbiased accuracy with intervals (see ``edge_app/spotcheck.py``)."""
from __future__ import annotations

import json
import logging

import pytest

from edge_app.errors import UsageError

from .helpers import upload_items


def _sync(world):
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    return SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                      smoke_test=lambda b: None).sync()


def test_hub_policy_reaches_the_tablet_at_its_next_sync(world, capsys, monkeypatch, caplog) -> None:
    from edge_app.cli import main
    from edge_app.spotcheck import DEFAULT_RATE, device_rate

    hub_dir = str(world.hub.root)
    assert world.hub.policy() == {"spot_check_rate": DEFAULT_RATE} == world.hub.status()["policy"]
    assert device_rate(world.device_dir) == 0.0  # enrolled, never synced: no spot checks yet
    _sync(world)
    assert device_rate(world.device_dir) == DEFAULT_RATE

    version = world.hub.store.version()
    assert main(["hub", "policy", "--hub", hub_dir, "--spot-check-rate", "0.2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"spot_check_rate": 0.2}
    assert world.hub.store.version() == version  # a setting, not a catalogue change: no package for it
    for bad in ("1.5", "-0.1", "nan"):
        assert main(["hub", "policy", "--hub", hub_dir, "--spot-check-rate", bad]) == UsageError.exit_code
        assert "from 0 (off) to 1" in capsys.readouterr().err
    assert main(["hub", "policy", "--hub", hub_dir]) == 0  # no option: shows it
    assert json.loads(capsys.readouterr().out) == {"spot_check_rate": 0.2}
    assert device_rate(world.device_dir) == DEFAULT_RATE  # until the tablet syncs
    _sync(world)
    assert device_rate(world.device_dir) == 0.2
    assert json.loads((world.device_dir / "device.json").read_text())["token"] == world.payload["token"]

    # a malformed policy (a buggy hub) is refused with a warning; the tablet keeps its own and the sync succeeds
    monkeypatch.setattr(type(world.hub), "policy", lambda self: {"spot_check_rate": "lots"})
    with caplog.at_level(logging.WARNING, logger="sync.client"):
        assert _sync(world).to_version == world.hub.store.version()
    assert device_rate(world.device_dir) == 0.2 and "field policy this tablet cannot use" in caplog.text
    # a hub too old to send a policy leaves the tablet's as it is
    from sync.hub.deltas import PackageService

    real_plan = PackageService.plan_for_device
    monkeypatch.setattr(PackageService, "plan_for_device", lambda self, *a, **k: {
        k2: v for k2, v in real_plan(self, *a, **k).items() if k2 not in ("policy", "settings")})
    _sync(world)
    assert device_rate(world.device_dir) == 0.2


def _identify(bundle: str, capture: str, top: list[str], status: str = "match", spot: bool = True) -> tuple:
    return ("usage", {"event": "identify", "bundle_id": bundle, "status": status, "confidence": 0.5, "top": top,
                      "views": 1, "ms": 5.0, "asked_to_measure": False, "capture_ids": [capture], "site": "site_a",
                      "spot_check": spot}, None)


def _answer(bundle: str, capture: str, top: list[str], result: str, answer: str | None,
            status: str = "match") -> tuple:
    return ("usage", {"event": "spot_check", "result": result, "answer": answer, "top": top, "status": status,
                      "bundle_id": bundle, "capture_ids": [capture], "views": 1, "site": "site_a"}, None)


def test_field_stats_spot_checks_with_intervals_non_response_and_pruning(world) -> None:
    from sync.hub.fieldstats import field_stats, prune_usage

    b = world.hub.bundle_id
    top = ["P0", "P1", "P2"]
    upload_items(world, [
        *[_identify(b, f"c{i}", top) for i in range(1, 6)],
        _identify(b, "c6", top, spot=False),
        _answer(b, "c1", top, "answered", "P0"),                               # accepted and right
        _answer(b, "c2", top, "answered", "P2"),                               # accepted, wrong: top-5 only
        _answer(b, "c3", top, "none_of_these", None, "no_confident_match"),   # not among the candidates
        _answer(b, "c4", top, "skipped", None),                                # asked, skipped
        # c5: picked, never answered
        _answer(b, "c9", top, "maybe", None),                                  # malformed: counted, left out
        _answer(b, "c9", top, "answered", None),                               # answered without an answer
    ])
    s = field_stats(world.hub)
    (row,) = s["bundles"]
    sc = row["spot_checks"]
    assert (sc["asked"], sc["answered"], sc["skipped"], sc["unanswered"]) == (5, 3, 1, 1)
    assert (sc["top1"], sc["top5"]) == (round(1 / 3, 4), round(2 / 3, 4))
    # Wilson 95% intervals; 1 of 3 and 2 of 3 as in published tables (6.1%-79.2%, 20.8%-93.9%)
    assert sc["top1_ci95"] == [0.0615, 0.7923] and sc["top5_ci95"] == [0.2077, 0.9385]
    assert (sc["accepted"], sc["precision_when_accepted"], sc["precision_when_accepted_ci95"]) == (
        2, 0.5, [0.0945, 0.9055])
    assert sc["no_confident_match"] == round(1 / 3, 4)
    assert row["identifications"] == 6 and s["malformed_uploads_skipped"] == 2
    assert s["spot_check_missed_parts"] == [{"part_number": "P2", "confirmed": 1, "top1_missed": 1,
                                             "ranked_first_instead": {"P0": 1}}]  # c1's P0 was right
    assert s["spot_check_rate"] == world.hub.policy()["spot_check_rate"] and "random sample" in s["note"]
    # the biased figures are unchanged by spot checks (no confirmations here)
    assert row["confirmed"] == 0 and row["confirmed_top1"] is None
    # the lab-to-field gap: the bundle records no validation top-1 here, then one above, inside, below the interval
    assert (row["validation_top1"], row["field_vs_validation"]) == (None, None)
    for val, verdict in ((0.95, "below"), (0.5, "consistent"), (0.05, "above")):
        world.hub.store._db().conn.execute(
            "UPDATE bundles SET manifest=json_set(manifest, '$.accuracy.val_top1', ?) WHERE bundle_id=?", (val, b))
        got = field_stats(world.hub)["bundles"][0]
        assert (got["validation_top1"], got["field_vs_validation"]) == (val, verdict)

    # pruning old usage events keeps the spot-check answers (few, and the only unbiased sample)
    world.hub.store._db().conn.execute("UPDATE uploads SET received_at='2020-01-01T00:00:00+00:00'")
    world.hub.store._db().conn.execute("UPDATE devices SET created_at='2019-06-01T00:00:00+00:00'")  # (enrolled before)
    assert prune_usage(world.hub, 30)["deleted_usage_events"] == 6
    kept = [json.loads(u["payload"])["event"] for u in world.hub.store.list_uploads()]
    assert kept == ["spot_check"] * 6
    after = field_stats(world.hub)["bundles"][0]["spot_checks"]
    # an answer still proves its question was asked: 4 (3 answered, 1 skipped), not 0 below 4 answers (an audit);
    # only c5, picked and never answered, is no longer known once its event is gone
    assert (after["asked"], after["answered"], after["unanswered"], after["top1"]) == (4, 3, 0, sc["top1"])


def test_wilson_interval_edges() -> None:
    from edge_app.spotcheck import check_rate, wilson

    assert wilson(0, 0) is None
    assert wilson(0, 10) == [0.0, 0.2775] and wilson(10, 10) == [0.7225, 1.0]
    lo, hi = wilson(900, 1000)
    assert lo < 0.9 < hi and hi - lo < 0.04
    assert check_rate(0) == 0.0 and check_rate("1") == 1.0
    for bad in (True, None, "x", 2, float("inf")):
        with pytest.raises(UsageError):
            check_rate(bad)


class _Tampering:
    """A man in the middle on a plain-HTTP link: rewrites every sync plan with ``edit``."""

    def __init__(self, inner, edit):
        self.inner, self.edit = inner, edit

    def plan(self, *a, **k):
        return self.edit(self.inner.plan(*a, **k))

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_settings_in_the_plan_are_signed_for_this_device_and_not_replayed(world, caplog) -> None:
    """The field policy and a tablet's settings travel in the sync plan, which over plain HTTP anyone on the path
    could rewrite (spot checks on every photo, a sync window at noon, no space kept free). The hub signs them with
    its package key for that device and counts them; the tablet takes only a verified, current document."""
    import copy

    from edge_app.spotcheck import device_rate
    from sync.client import SyncClient
    from sync.hub.enrol import add_device, set_device
    from sync.transport import InMemoryTransport

    def sync(edit=None):
        t = InMemoryTransport(world.hub, world.payload["token"])
        return SyncClient(world.device_dir, transport=_Tampering(t, edit) if edit else t,
                          smoke_test=lambda b: None).sync()

    def device():
        return json.loads((world.device_dir / "device.json").read_text())

    assert world.payload["hub"].startswith("http://")  # plain HTTP: only the signature protects the settings
    world.hub.set_policy(spot_check_rate=0.1)
    set_device(world.hub, "tab1", keep_free_mb=300)
    sync()
    assert device_rate(world.device_dir) == 0.1 and device()["keep_free_mb"] == 300
    first = device()["settings_stamp"]

    def forged(plan):  # the values changed, the signature kept
        plan = copy.deepcopy(plan)
        plan["settings"]["doc"]["policy"]["spot_check_rate"] = 1.0
        plan["settings"]["doc"]["device_settings"]["keep_free_mb"] = 100000
        plan["policy"], plan["device_settings"] = {"spot_check_rate": 1.0}, {"keep_free_mb": 100000}
        return plan

    def unsigned(plan):
        return {**{k: v for k, v in plan.items() if k != "settings"}, "policy": {"spot_check_rate": 1.0}}

    with caplog.at_level(logging.WARNING, logger="sync.client"):
        sync(forged)
        assert "hub settings do not verify" in caplog.text
        caplog.clear()
        sync(unsigned)
        assert "unsigned settings after signed ones; not taking them" in caplog.text
    assert device_rate(world.device_dir) == 0.1 and device()["keep_free_mb"] == 300  # nothing taken

    # another tablet's genuine settings, replayed to this one: refused
    from sync.hub.deltas import PackageService

    add_device(world.hub, "tab2", "site_a", keep_free_mb=5)
    tab2_settings = PackageService(world.hub).plan_for_device(world.hub.store.device("tab2"), 0, None)["settings"]
    old_doc = None

    def captured(plan):
        nonlocal old_doc
        old_doc = copy.deepcopy(plan["settings"])
        return plan

    sync(captured)  # the current document, kept by the attacker
    with caplog.at_level(logging.WARNING, logger="sync.client"):
        sync(lambda p: {**p, "settings": tab2_settings})
        assert "not 'tab1'" in caplog.text
    assert device()["keep_free_mb"] == 300

    # the hub changes the rate; the old document replayed afterwards does not bring the old rate back
    world.hub.set_policy(spot_check_rate=0.3)
    sync()
    assert device_rate(world.device_dir) == 0.3 and device()["settings_stamp"] > first
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sync.client"):
        sync(lambda p: {**p, "settings": old_doc, "policy": old_doc["doc"]["policy"]})
        assert "a replay?" in caplog.text
    assert device_rate(world.device_dir) == 0.3
    # a hub restored from a backup counts from a new lineage (epoch): its lower count is taken
    db = world.hub.store._db()
    with db.conn:
        db.conn.execute("UPDATE meta SET value='1' WHERE key='settings_serial'")
        db.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('catalogue_epoch', '1')")
    client = SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]))
    plan = PackageService(world.hub).plan_for_device(world.hub.store.device("tab1"), 0, None)
    policy, settings, stamp, _pins = client._settings_of(plan)
    assert stamp == [1, 1] and policy == {"spot_check_rate": 0.3} and settings == {"keep_free_mb": 300}

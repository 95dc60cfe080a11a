"""``partlens hub field-stats``: how bundles do on the tablets, from usage events and confirmations."""
from __future__ import annotations

import json

import pytest

from edge_app.errors import UsageError

from .helpers import part_image, upload_items


def _usage(bundle: str, status: str, top: list[str], capture: str, ms: float, views: int = 1,
           site: str = "site_a") -> tuple[str, dict, None]:
    return ("usage", {"event": "identify", "bundle_id": bundle, "status": status, "confidence": 0.5, "top": top,
                      "views": views, "ms": ms, "asked_to_measure": False, "capture_ids": [capture], "site": site},
            None)


def _confirm(bundle: str, part: str, candidates: list[str], capture: str, verdict: str = "correct",
             site: str = "site_a") -> tuple[str, dict, bytes]:
    return ("feedback", {"part_number": part, "verdict": verdict, "capture_ids": [capture], "candidates": candidates,
                         "bundle_id": bundle, "site": site}, part_image(1, noise=10))


def test_field_stats_per_bundle_with_confirmations_joined_to_their_identification(world, capsys) -> None:
    from edge_app.cli import main
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    upload_items(world, [
        _usage(active, "match", ["P1", "P2"], "c1", 10.0),
        _usage(active, "match", ["P2", "P1"], "c2", 20.0, views=2),
        _usage(active, "no_confident_match", ["P0", "P1"], "c3", 30.0),
        _usage(active, "match", ["P0"], "c4", 40.0),
        _usage("v0-old", "no_confident_match", ["P0"], "c5", 50.0),
        _usage(active, "match", ["P2"], "c6", 5.0, site="site_b"),
        _confirm(active, "P1", ["P1", "P2"], "c1"),          # accepted and right
        _confirm(active, "P1", ["P2", "P1"], "c2"),          # accepted, wrong: top-5 hit only
        _confirm(active, "P1", ["P0", "P1"], "c3"),          # not accepted (no confident match)
        _confirm(active, "P0", ["P0"], "c4", verdict="wrong"),  # "not this one" on the top answer
        _confirm(active, "P2", [], "c7"),                    # confirmed from the catalogue: no ranking to judge
        ("unknown_part", {"note": "x", "capture_ids": ["c9"], "site": "site_a"}, part_image(9)),
    ])
    s = field_stats(world.hub)
    (b, old) = sorted(s["bundles"], key=lambda r: r["bundle_id"] != active)
    assert b["bundle_id"] == active and b["active"] and not old["active"]
    assert (b["identifications"], b["no_confident_match"], b["multi_view"]) == (5, 0.2, 0.2)
    assert b["median_ms"] == 20.0 and b["confirmed"] == 4 and b["confirmed_without_ranking"] == 1
    assert (b["confirmed_top1"], b["confirmed_top5"]) == (round(1 / 3, 4), 1.0)
    assert (b["confirmed_accepted"], b["precision_when_accepted"], b["rejected_top1"]) == (2, 0.5, 1)
    assert (old["identifications"], old["no_confident_match"], old["confirmed"], old["confirmed_top1"]) == (
        1, 1.0, 0, None)
    assert s["unknown_part_reports"] == 1
    assert world.hub.status()["uploads_to_review"] == {"feedback": 5, "unknown_part": 1}  # no usage events
    assert s["missed_parts"] == [{"part_number": "P1", "confirmed": 3, "top1_missed": 2,
                                  "ranked_first_instead": {"P0": 1, "P2": 1}}]
    # filters
    only_b = field_stats(world.hub, site="site_b")
    assert [r["identifications"] for r in only_b["bundles"]] == [1] and only_b["unknown_part_reports"] == 0
    assert [r["bundle_id"] for r in field_stats(world.hub, bundle_id="v0-old")["bundles"]] == ["v0-old"]
    # a time window by hub receipt: everything arrived just now
    assert field_stats(world.hub, days=1)["bundles"] == s["bundles"]
    world.hub.store._db().conn.execute("UPDATE uploads SET received_at='2020-01-01T00:00:00+00:00'")
    world.hub.store._db().conn.execute("UPDATE devices SET created_at='2019-06-01T00:00:00+00:00'")  # (enrolled before)
    old_only = field_stats(world.hub, days=1)
    assert old_only["bundles"] == [] and old_only["filters"]["received_since"] > "2020-01-01"
    with pytest.raises(UsageError):
        field_stats(world.hub, days=0)
    # review lists what a person reviews; the usage events only on request
    assert main(["hub", "review", "list", "--hub", str(world.hub.root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in listed} == {"feedback", "unknown_part"} and len(listed) == 6
    assert main(["hub", "review", "list", "--hub", str(world.hub.root), "--kind", "usage"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
    # the CLI prints the same as JSON
    assert main(["hub", "field-stats", "--hub", str(world.hub.root), "--bundle", active]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bundles"][0]["confirmed_top1"] == b["confirmed_top1"]
    # pruning old usage events keeps everything else
    from sync.hub.fieldstats import prune_usage

    assert prune_usage(world.hub, 30)["deleted_usage_events"] == 6  # all 'received' in 2020 above
    kinds = sorted(u["kind"] for u in world.hub.store.list_uploads())
    assert kinds == ["feedback"] * 5 + ["unknown_part"]
    with pytest.raises(UsageError):
        prune_usage(world.hub, 0)


def test_field_stats_of_a_hub_with_no_uploads(world) -> None:
    from sync.hub.fieldstats import field_stats

    s = field_stats(world.hub)
    assert s["bundles"] == [] and s["unknown_part_reports"] == 0 and s["missed_parts"] == []


def test_field_stats_skips_and_counts_malformed_uploads(world) -> None:
    """A buggy tablet's records (wrong types) are left out and counted; they never break the statistics."""
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    good = _usage(active, "match", ["P1"], "c1", 10.0)
    bad_views = ("usage", dict(good[1], views="two"), None)
    bad_top = ("usage", dict(good[1], top={"P1": 1}), None)
    bad_candidates = ("feedback", dict(_confirm(active, "P1", ["P1"], "c1")[1], candidates="P1"), part_image(1))
    upload_items(world, [good, bad_views, bad_top, bad_candidates, _confirm(active, "P1", ["P1"], "c1")])
    s = field_stats(world.hub)
    assert s["malformed_uploads_skipped"] == 3
    (b,) = s["bundles"]
    assert (b["identifications"], b["confirmed"], b["confirmed_top1"], b["precision_when_accepted"]) == (1, 1, 1.0, 1.0)


def test_field_stats_weekly_shows_a_trend(world, capsys) -> None:
    """--weekly: each bundle's figures per ISO week of the tablets' clocks (drift shows as a trend)."""
    from edge_app.cli import main
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    upload_items(world, [_usage(active, "match", ["P1"], "c1", 10.0), _usage(active, "match", ["P1"], "c2", 12.0),
                         _usage(active, "no_confident_match", ["P0"], "c3", 30.0),
                         _usage(active, "no_confident_match", ["P0"], "c4", 50.0)])
    conn = world.hub.store._db().conn
    conn.execute("UPDATE uploads SET received_at='2026-12-05T08:00:00+00:00'")  # (tablet times are checked against it)
    conn.execute("UPDATE uploads SET device_created_at='2026-11-23T08:00:00+00:00' WHERE payload LIKE '%\"c1\"%' "
                 "OR payload LIKE '%\"c2\"%'")  # a Monday: ISO week 48
    conn.execute("UPDATE uploads SET device_created_at='2026-12-03T08:00:00+00:00' WHERE payload LIKE '%\"c3\"%' "
                 "OR payload LIKE '%\"c4\"%'")  # week 49
    (b,) = field_stats(world.hub, weekly=True)["bundles"]
    assert [(w["week"], w["identifications"], w["no_confident_match"], w["median_ms"]) for w in b["weekly"]] == [
        ("2026-W48", 2, 0.0, 11.0), ("2026-W49", 2, 1.0, 40.0)]
    assert b["identifications"] == 4 and "weekly" not in field_stats(world.hub)["bundles"][0]
    assert main(["hub", "field-stats", "--hub", str(world.hub.root), "--weekly"]) == 0
    assert [w["week"] for w in json.loads(capsys.readouterr().out)["bundles"][0]["weekly"]] == ["2026-W48", "2026-W49"]


def test_weekly_figures_use_the_receipt_week_when_the_tablets_clock_cannot_be_right(world) -> None:
    """Tablets that booted in 1970 or ran in 2040 put five of six identifications in impossible weeks (an audit,
    23rd session): an event dated after its receipt, or half a year before it, counts in its receipt week."""
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    upload_items(world, [_usage(active, "match", ["P1"], f"c{i}", 10.0) for i in range(5)])
    conn = world.hub.store._db().conn
    conn.execute("UPDATE uploads SET received_at='2026-12-03T08:00:00+00:00'")  # week 49
    for cap, when in [("c0", "1970-01-01T00:00:05+00:00"), ("c1", "2040-12-07T10:00:00+00:00"),
                      ("c2", "2026-12-04T09:00:00+00:00"),  # a day after receipt: another clock's skew at most
                      ("c3", "2026-11-23T08:00:00+00:00"),  # ten days in the outbox: its own week, 48
                      ("c4", "garbage")]:
        conn.execute("UPDATE uploads SET device_created_at=? WHERE payload LIKE ?", (when, f'%"{cap}"%'))
    (b,) = field_stats(world.hub, weekly=True)["bundles"]
    assert [(w["week"], w["identifications"]) for w in b["weekly"]] == [("2026-W48", 1), ("2026-W49", 4)]


def test_receipt_times_never_go_backwards_when_the_hub_clock_falls_back(world, monkeypatch) -> None:
    """A hub whose clock fell back to 2000 overnight dated that night's uploads 2000: `review --days 7` hid them
    and `prune-usage` deleted them once the clock was put right (an audit, 23rd session)."""
    import datetime as dt

    from sync.hub import store as store_mod
    from sync.hub.fieldstats import prune_usage

    active = world.hub.bundle_id
    conn = world.hub.store._db().conn
    upload_items(world, [_usage(active, "match", ["P1"], "c1", 10.0)])
    first = conn.execute("SELECT received_at FROM uploads").fetchone()[0]
    real = dt.datetime.fromisoformat(first)
    # a small correction (NTP set the clock back an hour): receipts stay in order
    monkeypatch.setattr(store_mod, "utcnow", lambda: (real - dt.timedelta(hours=1)).isoformat())
    upload_items(world, [_usage(active, "match", ["P1"], "c2", 10.0)])
    # the PC booted in 2000: dated so (nothing carried for years), and `prune-usage` under the right clock keeps
    # it (a receipt from before any tablet was enrolled is a clock error, not an old event)
    monkeypatch.setattr(store_mod, "utcnow", lambda: "2000-12-07T01:00:00+00:00")
    upload_items(world, [_usage(active, "match", ["P1"], "c3", 10.0)])
    monkeypatch.undo()
    rows = [r[0] for r in conn.execute("SELECT received_at FROM uploads ORDER BY seq")]
    assert rows == [first, first, "2000-12-07T01:00:00+00:00"]
    assert prune_usage(world.hub, older_than_days=90)["deleted_usage_events"] == 0
    assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 3
    assert real > dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_one_receipt_under_a_clock_years_ahead_does_not_pin_the_later_ones(world, monkeypatch) -> None:
    """A review: carrying the last receipt time forward pinned every upload after one received under a 2040 clock
    to 2040: `--days` always included them, `prune-usage` never deleted them, tablets never forgot them."""
    from sync.hub import store as store_mod
    from sync.hub.fieldstats import prune_usage

    active = world.hub.bundle_id
    monkeypatch.setattr(store_mod, "utcnow", lambda: "2040-01-01T00:00:00+00:00")
    upload_items(world, [_usage(active, "match", ["P1"], "c1", 10.0)])
    monkeypatch.undo()
    upload_items(world, [_usage(active, "match", ["P1"], "c2", 10.0)])
    rows = [r[0] for r in world.hub.store._db().conn.execute("SELECT received_at FROM uploads ORDER BY seq")]
    assert rows[0].startswith("2040") and rows[1] < "2030"
    assert world.hub.store.count_uploads(kind="usage", since="2039-01-01T00:00:00+00:00") == 1
    assert prune_usage(world.hub, older_than_days=90)["deleted_usage_events"] == 0


def test_a_confirmation_joins_the_identification_it_answers_not_a_later_one_of_the_same_photo(world) -> None:
    """An engineer identified a photo (not accepted), added a second view (accepted), then confirmed the first
    answer: joined by first photo, the confirmation counted as an accepted one (an audit, 23rd session). Tablets
    send the identification's id with a confirmation now; older ones are joined by photo as before."""
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    first = ("usage", dict(_usage(active, "no_confident_match", ["P1"], "c1", 10.0)[1], identification_id="i1"),
             None)
    second = ("usage", dict(_usage(active, "match", ["P1"], "c1", 12.0, views=2)[1], identification_id="i2",
                            capture_ids=["c1", "c2"]), None)
    answer = ("feedback", dict(_confirm(active, "P1", ["P1"], "c1")[1], identification_id="i1"),
              part_image(1, noise=10))
    upload_items(world, [first, second, answer])
    (b,) = field_stats(world.hub)["bundles"]
    assert (b["confirmed"], b["confirmed_accepted"]) == (1, 0)
    upload_items(world, [("feedback", dict(_confirm(active, "P1", ["P1"], "c1")[1], identification_id="i2"),
                          part_image(1, noise=11))])
    (b,) = field_stats(world.hub)["bundles"]
    assert (b["confirmed"], b["confirmed_accepted"], b["precision_when_accepted"]) == (2, 1, 1.0)


def test_a_confirmation_joins_the_identification_of_its_own_bundle(world) -> None:
    """A statistics audit: the same photo identified again after a bundle change made the earlier confirmation join
    the later bundle's identification (its accepted share and precision moved to the wrong bundle)."""
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    upload_items(world, [
        _usage(active, "match", ["P1", "P2"], "c1", 10.0),
        _confirm(active, "P1", ["P1", "P2"], "c1"),
        _usage("v9-newer", "no_confident_match", ["P2", "P1"], "c1", 12.0),  # the same photo, another bundle
    ])
    b = next(r for r in field_stats(world.hub)["bundles"] if r["bundle_id"] == active)
    assert b["precision_when_accepted"] == 1.0, b


def test_review_list_pages_and_filters_instead_of_printing_months_of_uploads(world, capsys) -> None:
    """An audit: `hub review list` printed every upload (3.6 M lines, 0.9 GB of memory for 100,000 usage events):
    it lists a page (default 100), says where the next one starts, and filters by tablet and time."""
    from edge_app.cli import main

    upload_items(world, [_usage(world.hub.bundle_id, "match", ["P1"], f"c{i}", 5.0) for i in range(7)]
                 + [_confirm(world.hub.bundle_id, "P1", ["P1"], "c1")])
    hub = str(world.hub.root)
    seen, after = [], None
    while True:
        args = ["hub", "review", "list", "--hub", hub, "--kind", "usage", "--limit", "3"]
        assert main(args + (["--after", str(after)] if after is not None else [])) == 0
        out = capsys.readouterr()
        page = json.loads(out.out)
        seen += [r["uuid"] for r in page]
        if "--after" not in out.err:
            break
        after = page[-1]["seq"]
        assert f"the next page with --after {after}" in out.err
    assert len(seen) == len(set(seen)) == 7
    assert main(["hub", "review", "list", "--hub", hub, "--kind", "usage", "--all"]) == 0
    assert [r["uuid"] for r in json.loads(capsys.readouterr().out)] == seen
    assert main(["hub", "review", "list", "--hub", hub, "--device", "nobody"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["hub", "review", "list", "--hub", hub, "--device", "tab1", "--days", "1"]) == 0
    assert [r["kind"] for r in json.loads(capsys.readouterr().out)] == ["feedback"]
    for bad in (["--limit", "0"], ["--limit", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(["hub", "review", "list", "--hub", hub, *bad])
        assert exc.value.code == 2
    assert main(["hub", "review", "list", "--hub", hub, "--days", "0"]) == 2


def test_hub_queries_that_grow_with_uploads_use_an_index_and_prune_in_batches(world, monkeypatch) -> None:
    """Every photo chunk asks for its device's unfinished photos: it scanned every upload (180 ms at a million
    rows, an audit). `prune-usage` deleted in one transaction (15 s of blocked tablet syncs at 900,000 rows)."""
    from sync.hub.fieldstats import prune_usage

    conn = world.hub.store._db().conn
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT uuid FROM uploads WHERE device=? AND blob_complete=0 "
                        "AND blob_size IS NOT NULL", ("tab1",)).fetchall()
    assert "USING INDEX uploads_device_unfinished" in " ".join(str(r[-1]) for r in plan)
    upload_items(world, [_usage(world.hub.bundle_id, "match", ["P1"], f"c{i}", 5.0) for i in range(5)]
                 + [("usage", {"event": "spot_check", "bundle_id": world.hub.bundle_id, "status": "match",
                               "top": ["P1"], "answer": "P1", "result": "answered", "capture_ids": ["c0"]}, None)])
    conn.execute("UPDATE uploads SET received_at='2020-01-01T00:00:00+00:00'")
    conn.execute("UPDATE devices SET created_at='2019-06-01T00:00:00+00:00'")  # (the tablets enrolled before)
    store, batches = world.hub.store, []
    real_tx, real_delete = store._tx, type(store).delete_uploads

    def counting_tx(db, *a, **kw):
        batches.append(1)
        return real_tx(db, *a, **kw)

    monkeypatch.setattr(store, "_tx", counting_tx)
    monkeypatch.setattr(type(store), "delete_uploads", lambda self, kind, before: real_delete(self, kind, before, 2))
    assert prune_usage(world.hub, 30)["deleted_usage_events"] == 5
    assert len(batches) == 3  # transactions of 2 + 2 + 1 rows
    assert [json.loads(u["payload"])["event"] for u in world.hub.store.list_uploads()] == ["spot_check"]


def test_field_stats_streams_usage_events(world, monkeypatch) -> None:
    """field-stats held every usage event (3.4 GB at a million, an audit): it reads them through the store's
    streaming iterator once and never lists them."""
    from sync.hub import fieldstats

    upload_items(world, [_usage(world.hub.bundle_id, "match", ["P1"], f"c{i}", float(i)) for i in range(9)])
    monkeypatch.setattr(type(world.hub.store), "list_uploads", lambda *a, **k: pytest.fail("listed every upload"))
    (b,) = fieldstats.field_stats(world.hub)["bundles"]
    assert (b["identifications"], b["median_ms"]) == (9, 4.0)


def test_site_filter_takes_the_device_s_site_when_a_record_names_none(world) -> None:
    """A tablet enrolled in the app sent records naming no site (it read its site only at start), and
    `field-stats --site` lost them all (an audit, 23rd session): the hub's own record of the tablet's site counts
    when the record names none; a record that names one is counted where it says."""
    from sync.hub.fieldstats import field_stats

    active = world.hub.bundle_id
    upload_items(world, [("usage", dict(_usage(active, "match", ["P1"], f"c{i}", 10.0)[1], site=None), None)
                         for i in range(3)] + [_usage(active, "match", ["P1"], "c9", 10.0, site="site_b")])
    assert field_stats(world.hub, site="site_a")["bundles"][0]["identifications"] == 3  # tab1 is a site_a tablet
    assert field_stats(world.hub, site="site_b")["bundles"][0]["identifications"] == 1

"""The field-loop benchmark's quick run works end to end (so the committed benchmark cannot rot)."""
from __future__ import annotations

from types import SimpleNamespace


def test_field_benchmark_quick_run(tmp_path) -> None:
    from benchmarks.bench_field import run

    out = run(SimpleNamespace(quick=True, work_dir=tmp_path))
    assert out["upload_ok"] and out["uploaded"] == 110 and out["stats_matches_uploads"]
    assert out["field_stats_all_identifications"] == 100 + 10_000
    # the log's received times spread over 28 days: the last 14 hold about half of them
    assert 0.4 < out["field_stats_last_14_days_identifications"] / out["field_stats_all_identifications"] < 0.6
    assert 0 < out["outbox_add_median_ms"] <= out["outbox_add_p95_ms"]

"""The benchmark runner writes JSON + Markdown and resumes finished steps."""
from __future__ import annotations

import json

import pytest

from benchmarks import runner
from edge_app.errors import UsageError


@pytest.fixture
def fake_bench(tmp_path, monkeypatch):
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    calls = {"n": 0}

    class Mod:
        __doc__ = "Fake benchmark title"

        @staticmethod
        def run(ctx):
            def expensive():
                calls["n"] += 1
                return {"acc": 0.5}

            r = ctx.step("fold0", expensive)
            return {"acc": r["acc"], "table": [{"model": "m", "acc": r["acc"]}]}

    monkeypatch.setattr(runner, "list_benchmarks", lambda: {"fake": "Fake benchmark title"})
    monkeypatch.setattr(runner.importlib, "import_module", lambda name: Mod)
    monkeypatch.setattr(runner, "WORK_DIR", tmp_path / "work")
    return tmp_path, calls


def test_runner_writes_results_and_resumes(fake_bench) -> None:
    tmp, calls = fake_bench
    res = runner.run_benchmark("fake", results_dir=tmp / "results")
    assert calls["n"] == 1
    data = json.loads((tmp / "results" / "fake.json").read_text())
    assert data["metrics"]["acc"] == 0.5 and data["title"] == "Fake benchmark title"
    md = (tmp / "results" / "fake.md").read_text()
    assert "| model | acc |" in md and "| m | 0.5 |" in md
    assert data["resumed_steps"] == [] and "resumed:" not in md
    again = runner.run_benchmark("fake", results_dir=tmp / "results")
    assert calls["n"] == 1, "a finished step must not run again"
    # a resumed result says which steps an earlier run did (their time is not in 'took')
    assert again["resumed_steps"] == ["fold0"] and "- resumed: fold0" in (tmp / "results" / "fake.md").read_text()
    leftover = tmp / "work" / "fake" / "run" / "last.pt"  # a training step's checkpoint from the earlier run
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"old")
    runner.run_benchmark("fake", results_dir=tmp / "results", fresh=True)
    assert calls["n"] == 2
    assert not leftover.exists(), "--fresh must not leave a checkpoint that a training step would resume"
    assert res["git_sha"]
    # what reproducing the result needs beyond the commit: the command, the CPU and the package versions
    assert res["command"] == {"bench": "fake", "data": res["command"]["data"], "quick": False, "fresh": False,
                              "options": {}}
    assert res["git_dirty"] in (True, False) and res["environment"]["packages"]["numpy"]
    assert "cpu" in res["environment"]


def test_unknown_benchmark_is_a_usage_error(fake_bench) -> None:
    with pytest.raises(UsageError, match="unknown benchmark"):
        runner.run_benchmark("nope")


def test_quick_run_neither_resumes_into_nor_overwrites_a_full_run(fake_bench) -> None:
    tmp, calls = fake_bench
    runner.run_benchmark("fake", results_dir=tmp / "results", quick=True)
    assert (tmp / "results" / "fake.quick.json").is_file() and not (tmp / "results" / "fake.json").exists()
    full = runner.run_benchmark("fake", results_dir=tmp / "results")
    assert calls["n"] == 2 and full["resumed_steps"] == [], "a full run must not resume a quick run's steps"
    runner.run_benchmark("fake", results_dir=tmp / "results", quick=True)
    assert json.loads((tmp / "results" / "fake.json").read_text())["quick"] is False
    assert "QUICK run" in (tmp / "results" / "fake.quick.md").read_text()
    assert "QUICK" not in (tmp / "results" / "fake.md").read_text()


def test_a_step_resumed_from_other_code_is_named(fake_bench, monkeypatch, caplog) -> None:
    """Found by an audit: a resumed step computed under an older commit was stamped with the new commit."""
    tmp, calls = fake_bench
    monkeypatch.setattr(runner, "git_sha", lambda cwd=None: "a" * 40)
    monkeypatch.setattr(runner, "git_dirty", lambda cwd=None: False)
    runner.run_benchmark("fake", results_dir=tmp / "results")
    same = runner.run_benchmark("fake", results_dir=tmp / "results")
    assert same["resumed_from"] == {"fold0": {"git_sha": "a" * 40, "git_dirty": False}}
    assert "OTHER code" not in (tmp / "results" / "fake.md").read_text()
    monkeypatch.setattr(runner, "git_sha", lambda cwd=None: "b" * 40)
    with caplog.at_level("WARNING"):
        other = runner.run_benchmark("fake", results_dir=tmp / "results")
    assert calls["n"] == 1 and other["git_sha"] == "b" * 40
    assert other["resumed_from"]["fold0"]["git_sha"] == "a" * 40
    assert "resumed from commit aaaaaaaaaaaa" in caplog.text
    md = (tmp / "results" / "fake.md").read_text()
    assert "- resumed from OTHER code: fold0 (commit aaaaaaaaaaaa)" in md and "load average" in md
    assert "command: `partlens bench fake`" in md


def test_a_damaged_state_file_and_a_missing_dataset_are_clear_errors(fake_bench, tmp_path) -> None:
    tmp, _ = fake_bench
    state = tmp / "work" / "fake" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"fold0": ')
    with pytest.raises(UsageError, match="cannot be read .*--fresh"):
        runner.run_benchmark("fake", results_dir=tmp / "results")
    runner.run_benchmark("fake", results_dir=tmp / "results", fresh=True)  # --fresh gets past it
    ctx = runner.BenchContext(name="x", work_dir=tmp_path, data=tmp_path / "nowhere")
    with pytest.raises(UsageError, match="nowhere/grocery is not a folder"):
        ctx.require_data("grocery")
    with pytest.raises(UsageError, match="pass --data DIR or set PARTLENS_DATA"):
        runner.BenchContext(name="x", work_dir=tmp_path, data=None).require_data("grocery")

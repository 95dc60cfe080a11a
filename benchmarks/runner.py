"""One benchmark runner: ``partlens bench NAME``.

A benchmark is a module ``benchmarks/bench_<name>.py`` with ``run(ctx) -> dict``. Its
first docstring line is its title. The runner writes ``benchmarks/results/<name>.json``
and ``<name>.md``. Long benchmarks wrap their expensive parts in ``ctx.step(key, fn)``;
finished steps are kept in ``benchmarks/work/<name>/state.json`` (ignored by git), so a
killed run resumes where it stopped.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import os
import pkgutil
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_app.atomic import atomic_write_json, atomic_write_text
from edge_app.errors import UsageError
from training import gitinfo as _gitinfo

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"


def module_name(name: str) -> str:
    return "bench_" + name.replace("-", "_")


def list_benchmarks() -> dict[str, str]:
    """Benchmark name -> title."""
    out: dict[str, str] = {}
    for info in pkgutil.iter_modules([str(BENCH_DIR)]):
        if info.name.startswith("bench_"):
            mod = importlib.import_module(f"benchmarks.{info.name}")
            doc = (mod.__doc__ or "").strip().splitlines()
            out[info.name[len("bench_"):].replace("_", "-")] = doc[0] if doc else ""
    return out


def git_sha(cwd: Path = BENCH_DIR) -> str:
    return _gitinfo.git_sha(cwd)


def git_dirty(cwd: Path = BENCH_DIR) -> bool | None:
    """Whether the code differs from the commit (untracked files count; ignored ones do not); None if unknown."""
    return _gitinfo.git_dirty(cwd)


#: packages whose versions change results (recorded with each result)
RESULT_PACKAGES = ("torch", "torchvision", "ai-edge-litert", "litert-torch", "onnxruntime", "hnswlib", "numpy", "Pillow")


def environment() -> dict[str, Any]:
    """CPU model and the versions of the packages that shape results (what ``machine`` alone did not say)."""
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in RESULT_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "packages": versions, **load()}


def load() -> dict[str, Any]:
    """The 1-minute load average and this process's nice level: a result measured on a busy CPU says so."""
    out: dict[str, Any] = {}
    try:
        out["load_average_1m"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        out["load_average_1m"] = None
    try:
        out["nice"] = os.nice(0)
    except (OSError, AttributeError):
        out["nice"] = None
    return out


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The shared datasets folder: argument, then $PARTLENS_DATA, then ../shared/datasets."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PARTLENS_DATA")
    if env:
        return Path(env)
    guess = BENCH_DIR.parent.parent / "shared" / "datasets"
    return guess if guess.is_dir() else None


@dataclass
class BenchContext:
    name: str
    work_dir: Path
    data: Path | None
    quick: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    _state: dict[str, Any] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)  # steps taken from an earlier run's state
    #: step -> the commit (and dirty flag) it ran under, for the resumed steps
    resumed_from: dict[str, Any] = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.work_dir / "state.json"

    def load_state(self) -> None:
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise UsageError(f"the saved steps of benchmark {self.name} ({self.state_path}) cannot be read "
                                 f"({exc}): run it again with --fresh") from exc
            if not isinstance(state, dict):
                raise UsageError(f"{self.state_path} is not a benchmark state: run it again with --fresh")
            self._state = state

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once; its JSON result is kept so a resumed run skips it.

        The commit each step ran under is kept beside it: a resumed step from other code is named in the result
        and warned about (``--fresh`` runs everything again)."""
        commits = self._state.setdefault(STEP_COMMITS, {})
        if key in self._state:
            ran = commits.get(key) or {"git_sha": "unknown (an older runner)", "git_dirty": None}
            self.resumed.append(key)
            self.resumed_from[key] = ran
            if ran.get("git_sha") != git_sha() or ran.get("git_dirty"):
                log.warning("%s: step %s is resumed from commit %s%s, not this code; --fresh runs it again",
                            self.name, key, str(ran.get("git_sha"))[:12], " (uncommitted changes)"
                            if ran.get("git_dirty") else "")
            else:
                log.info("%s: step %s already done, resuming past it", self.name, key)
            return self._state[key]
        value = fn()
        self._state[key] = value
        commits[key] = {"git_sha": git_sha(), "git_dirty": git_dirty()}
        atomic_write_json(self.state_path, self._state)
        return value

    def require_data(self, sub: str) -> Path:
        if self.data is None:
            raise UsageError(f"benchmark {self.name} needs the dataset {sub!r}: pass --data DIR or set "
                             f"PARTLENS_DATA (no ../shared/datasets beside the project)")
        if not (self.data / sub).is_dir():
            raise UsageError(f"benchmark {self.name} needs the dataset {sub!r}: {self.data / sub} is not a folder "
                             f"(--data / PARTLENS_DATA is {self.data})")
        return self.data / sub


#: the key in state.json under which each step's commit is kept (not a step)
STEP_COMMITS = "__step_commits__"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def to_markdown(result: dict[str, Any]) -> str:
    """Render a result: its ``table`` rows (list of dicts) if any, then scalar metrics."""
    lines = [f"# {result['title']}", "", f"- benchmark: `{result['name']}`",
             f"- when: {result['finished_at']}  git: `{result['git_sha'][:12]}`  took: {result['seconds']:.1f} s",
             f"- machine: {result['machine']}", ""]
    if result.get("quick"):
        lines.insert(-1, "- QUICK run (a smoke test at a tiny scale, not the benchmark's result)")
    if result.get("git_dirty"):
        lines.insert(-1, "- git: the code had uncommitted changes")
    if result.get("git_sha_at_end") and result["git_sha_at_end"] != result["git_sha"]:
        lines.insert(-1, f"- git: HEAD moved to `{result['git_sha_at_end'][:12]}` while it ran (modules imported "
                         f"later may come from there)")
    env = result.get("environment") or {}
    if env:
        lines.insert(-1, f"- cpu: {env.get('cpu') or 'unknown'}; load average {env.get('load_average_1m')} at the "
                         f"start, {result.get('load_average_at_end', 'n/a')} at the end; nice {env.get('nice')}")
    cmd = result.get("command")
    if cmd:
        flags = "".join(f" --{k}" for k in ("quick", "fresh") if cmd.get(k))
        lines.insert(-1, f"- command: `partlens bench {cmd.get('bench')}{flags}`"
                         + (f" with options {cmd['options']}" if cmd.get("options") else ""))
    if result.get("resumed_steps"):
        lines.insert(-1, f"- resumed: {', '.join(result['resumed_steps'])} were finished by an earlier run "
                         f"(their time is not in 'took')")
        other = {k: v for k, v in (result.get("resumed_from") or {}).items()
                 if v.get("git_sha") != result.get("git_sha") or v.get("git_dirty")}
        if other:
            lines.insert(-1, "- resumed from OTHER code: " + ", ".join(
                f"{k} (commit {str(v.get('git_sha'))[:12]}{', uncommitted changes' if v.get('git_dirty') else ''})"
                for k, v in other.items()))
    metrics = result.get("metrics", {})
    table = metrics.get("table")
    if isinstance(table, list) and table:
        cols = list(dict.fromkeys(k for row in table for k in row))
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |" for row in table]
        lines.append("")
    scalars = {k: v for k, v in metrics.items() if k != "table" and not isinstance(v, (list, dict))}
    if scalars:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
    return "\n".join(lines) + "\n"


def run_benchmark(name: str, *, data: str | None = None, quick: bool = False, fresh: bool = False,
                  results_dir: Path | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run benchmark ``name`` and write its JSON and Markdown results; return the result."""
    names = list_benchmarks()
    if name not in names:
        raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(sorted(names)) or 'none'}")
    mod = importlib.import_module(f"benchmarks.{module_name(name)}")
    # A smoke run keeps its own scratch and results: a full run must never resume a quick run's steps, and a
    # quick run must never overwrite a committed full result.
    stem = f"{name}.quick" if quick else name
    work = WORK_DIR / stem
    if fresh and work.exists():
        # start over: finished steps AND their scratch (a training step's last.pt would otherwise be resumed)
        log.info("bench %s: --fresh removes %s", name, work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(name=name, work_dir=work, data=data_root(data), quick=quick, options=options or {})
    ctx.load_state()
    env = environment()  # the load at the start (a busy CPU inflates every timing)
    # the code the run started with: commits made while a long benchmark runs are not its code
    sha, dirty = git_sha(), git_dirty()
    t0 = time.perf_counter()
    metrics = mod.run(ctx)
    sha_end = git_sha()
    result = {
        "name": name,
        "title": names[name],
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - t0,
        "git_sha": sha,
        "git_dirty": dirty,
        "git_sha_at_end": sha_end,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
        "environment": env,
        "load_average_at_end": load()["load_average_1m"],
        "command": {"bench": name, "data": str(ctx.data) if ctx.data else None, "quick": quick, "fresh": fresh,
                    "options": dict(options or {})},
        "quick": quick,
        "resumed_steps": ctx.resumed,
        "resumed_from": ctx.resumed_from,
        "metrics": metrics,
    }
    out = results_dir or RESULTS_DIR
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", to_markdown(result))
    return result

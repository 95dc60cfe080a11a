"""The commit code runs from, and whether it differs from that commit (recorded with runs and benchmark results).

Light on purpose (no torch): the benchmark runner imports it too."""
from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def git_sha(cwd: Path | None = None) -> str:
    """HEAD's commit, or ``"unknown"`` (no git, not a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or HERE, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Whether the code differs from the commit (a result from uncommitted code says so); None if unknown.

    Untracked files count too (a new module not yet committed is uncommitted code); ignored files
    (``benchmarks/work``, ``.venv``) do not."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=cwd or HERE,
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.strip())

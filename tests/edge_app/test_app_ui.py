"""UI tests: drive the Kivy app offscreen, at tablet and phone resolution, each in its own process.

The flow itself lives in ``ui_flow.py``; running it in a child process keeps Kivy's GL context
(Mesa, with its own LLVM) out of the pytest process that also imports torch/triton/TensorFlow.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.ui
@pytest.mark.parametrize("profile", ["tablet", "phone"])
def test_ui_flow_at_profile(profile: str) -> None:
    env = {**os.environ, "PARTLENS_UI_PROFILE": profile}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          str(HERE / "ui_flow.py")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    tail = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, tail
    m = re.search(r"(\d+) passed", out.stdout)
    assert m and int(m.group(1)) >= 7, tail
    assert " failed" not in out.stdout and " error" not in out.stdout, tail


@pytest.mark.ui
def test_ui_on_real_device_services() -> None:
    """The same app on the real services (catalogue, outbox, a tiny ONNX bundle): ``ui_real.py``, tablet profile."""
    env = {**os.environ, "PARTLENS_UI_PROFILE": "tablet"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          str(HERE / "ui_real.py")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, tail
    m = re.search(r"(\d+) passed", out.stdout)
    assert m and int(m.group(1)) == 8 and " failed" not in out.stdout, tail

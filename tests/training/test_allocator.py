"""training.allocator: big buffers stay in the heap (no page faults per allocation), user settings win."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import allocator

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, resource, sys
sys.path.insert(0, {root!r})
import numpy as np
from training.allocator import tune_for_torch
done = tune_for_torch()
a = np.ones(1 << 23); del a
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(1 << 23)  # 64 MB, freed again: a training step's activations
    del a
print(json.dumps({{"set": done, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10}}))
"""

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="needs Linux with glibc (mallopt)")


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MALLOC_", "GLIBC_TUNABLES")) and k != allocator.ENV_SWITCH}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT))], env={**clean, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_process_reuses_freed_buffers_without_page_faults():
    tuned = _probe()
    assert tuned["set"] == {name: value for name, (_param, value) in allocator.SETTINGS.items()}
    untuned = _probe(**{allocator.ENV_SWITCH: "0"})
    assert untuned["set"] == {}
    # untuned glibc maps and unmaps each 64 MB buffer (hundreds of faults each); tuned, it reuses the heap
    assert untuned["faults"] > 100
    assert tuned["faults"] < 0.1 * untuned["faults"]


@glibc_only
def test_user_malloc_settings_win():
    assert _probe(MALLOC_ARENA_MAX="2")["set"] == {}
    assert _probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["set"] == {}


def test_every_setting_fits_a_c_int():
    for _name, (_param, value) in allocator.SETTINGS.items():
        assert 0 < value < 2 ** 31


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    for k in [k for k in os.environ if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))]:
        monkeypatch.delenv(k)
    assert allocator.tune_for_torch() == {}

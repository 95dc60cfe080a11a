"""Project contract: the README's set-up commands, CI, the CLI and import hygiene."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- setup-commands.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert m, "README must hold the set-up block"
    return [line.split("#")[0].strip() for line in m.group(1).splitlines() if line.split("#")[0].strip()]


def test_readme_has_exactly_two_setup_commands() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].startswith("bash setup.sh")


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = readme_commands()[1]
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines, f".ci/run must run the README test command {test_cmd!r}"
    assert "bash setup.sh --install-only" in ci_lines


def test_every_subcommand_has_help() -> None:
    from edge_app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert len(sub.choices) >= 1
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name
        assert p.description or p.format_usage(), name


def test_cli_does_not_import_heavy_packages() -> None:
    code = ("import sys; from edge_app.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'tensorflow', 'kivy', 'onnxruntime', 'ai_edge_litert') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"building the CLI imported {out.stdout.strip()}"


def test_runtime_core_does_not_import_kivy_or_torch() -> None:
    mods = ["edge_app.imageio", "edge_app.preprocess", "edge_app.signing", "edge_app.atomic"]
    for extra in ("edge_app.bundle", "edge_app.runtime", "sync.client"):
        if (ROOT / (extra.replace(".", "/") + ".py")).exists() or (ROOT / extra.replace(".", "/")).is_dir():
            mods.append(extra)
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
            "print(','.join(m for m in ('torch', 'tensorflow', 'kivy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime core imported {out.stdout.strip()}"


@pytest.mark.parametrize("bad", [["--no-such-flag"], ["no-such-command"]])
def test_cli_rejects_bad_usage(bad: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "edge_app.cli", *bad], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()


def test_no_large_or_data_files_tracked() -> None:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    for f in out.stdout.splitlines():
        p = ROOT / f
        assert not f.endswith((".pth", ".pt", ".onnx", ".tflite")), f"model file tracked in git: {f}"
        if p.is_file():
            assert p.stat().st_size < 5_000_000, f"{f} is over 5 MB"

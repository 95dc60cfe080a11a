"""The CLI module stays light and every subcommand has --help."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_commands_module_does_not_import_torch() -> None:
    code = "import sys, training.commands; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("cmd", ["train", "evaluate", "audit", "split"])
def test_help(cmd: str, capsys) -> None:
    from edge_app.cli import main

    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: partlens " + cmd in capsys.readouterr().out


def test_missing_data_is_a_clean_error(tmp_path: Path, capsys) -> None:
    from edge_app.cli import main

    rc = main(["audit", str(tmp_path / "nope")])
    assert rc == 3 and "no such file" in capsys.readouterr().err

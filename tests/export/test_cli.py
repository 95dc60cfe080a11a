"""``partlens export`` and ``partlens bundle build/verify`` end to end on a tiny checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import CLASSES


@pytest.fixture()
def checkpoint(tiny_model, tmp_path: Path) -> Path:
    from training.models import save_checkpoint

    return save_checkpoint(tmp_path / "tiny.pt", tiny_model, CLASSES, metrics={"val_top1": 1.0})


def test_export_refuses_option_the_format_does_not_take(checkpoint: Path, image_dirs, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main

    rc = main(["export", str(checkpoint), "--format", "tflite-fp32", "--calib-images", "5",
               "--calib", str(image_dirs["calib"]), "--val", str(image_dirs["val"]), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "does not take option(s) ['calib_images']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_export_build_verify(checkpoint: Path, image_dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main
    from edge_app.signing import init_key

    out = tmp_path / "exports"
    assert main(["export", str(checkpoint), "--format", "onnx-fp32", "--calib", str(image_dirs["calib"]),
                 "--val", str(image_dirs["val"]), "--catalogue", str(image_dirs["catalogue"]),
                 "--out", str(out)]) == 0
    model = out / "tiny-onnx-fp32.onnx"
    assert "passed" in capsys.readouterr().out and model.is_file()
    key_path, kid = init_key(tmp_path / "keys")
    keyring = tmp_path / "keys" / f"{kid}.pub.json"
    common = ["--model", str(model), "--catalogue", str(image_dirs["catalogue"]), "--key", str(key_path),
              "--out", str(tmp_path / "bundles")]
    assert main(["bundle", "build", *common, "--version", "1", "--kind", "device"]) == 2  # ONNX is desktop-only
    assert main(["bundle", "build", *common, "--version", "1", "--kind", "desktop", "--calibration",
                 '{"threshold": 0.6}', "--archive", str(tmp_path / "b.tar")]) == 0
    bundle_dir = Path(capsys.readouterr().out.splitlines()[0])
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["kind"] == "desktop" and manifest["calibration"] == {"threshold": 0.6}
    assert manifest["parity"]["onnx-fp32"]["passed"] and manifest["catalogue"]["count"] == 8
    assert main(["bundle", "verify", str(bundle_dir), "--keyring", str(keyring)]) == 0
    assert main(["bundle", "verify", str(tmp_path / "b.tar"), "--keyring", str(keyring)]) == 0
    assert main(["bundle", "build", *common, "--version", "1", "--kind", "desktop"]) == 2  # immutable version

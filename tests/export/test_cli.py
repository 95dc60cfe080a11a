"""``partlens export`` and ``partlens bundle build/verify`` end to end on a tiny checkpoint."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import CLASSES

CATALOGUE_PARTS = CLASSES[:3]  # P3 stays outside the catalogue: the calibration's negatives


def calibration_folders(image_dirs: dict[str, Path], root: Path) -> dict[str, Path]:
    """Catalogue (P0-P2), positives (val photos of P0-P2, in part folders) and negatives (photos of P3,
    directly in the folder, as a user's "other parts" folder would be), as symlinks."""
    out = {k: root / k for k in ("catalogue", "positives", "negatives")}
    for part in CATALOGUE_PARTS:
        for kind, src in (("catalogue", "catalogue"), ("positives", "val")):
            (out[kind] / part).mkdir(parents=True)
            for f in sorted((image_dirs[src] / part).glob("*.jpg")):
                (out[kind] / part / f.name).symlink_to(f)
    out["negatives"].mkdir(parents=True)
    for src in ("val", "calib"):
        for f in sorted((image_dirs[src] / "P3").glob("*.jpg")):
            (out["negatives"] / f"{src}_{f.name}").symlink_to(f)
    return out


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


def test_export_refuses_a_negative_number_of_val_images(checkpoint: Path, image_dirs, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main

    rc = main(["export", str(checkpoint), "--format", "onnx-fp32", "--val-images", "-1",
               "--calib", str(image_dirs["calib"]), "--val", str(image_dirs["val"]), "--out", str(tmp_path / "o")])
    assert rc == 2 and "val images must be >= 1" in capsys.readouterr().err
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
    folders = calibration_folders(image_dirs, tmp_path / "cal")
    assert main(["calibrate", str(model), "--catalogue", str(folders["catalogue"]), "--positives",
                 str(folders["positives"]), "--negatives", str(folders["negatives"]), "--out",
                 str(tmp_path / "cal.json")]) == 0
    capsys.readouterr()
    common[3] = str(folders["catalogue"])  # the catalogue the calibration was fitted with
    assert main(["bundle", "build", *common, "--version", "1", "--kind", "desktop", "--calibration",
                 str(tmp_path / "cal.json"), "--archive", str(tmp_path / "b.tar")]) == 0
    bundle_dir = Path(capsys.readouterr().out.splitlines()[0])
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["kind"] == "desktop" and manifest["calibration"] == json.loads((tmp_path / "cal.json").read_text())
    assert manifest["parity"]["onnx-fp32"]["passed"] and manifest["catalogue"]["count"] == 6
    assert main(["bundle", "verify", str(bundle_dir), "--keyring", str(keyring)]) == 0
    assert main(["bundle", "verify", str(tmp_path / "b.tar"), "--keyring", str(keyring)]) == 0
    assert main(["bundle", "build", *common, "--version", "1", "--kind", "desktop"]) == 2  # immutable version
    # an existing --archive is refused BEFORE anything is built (was: built, then refused, then "version exists")
    capsys.readouterr()
    assert main(["bundle", "build", *common, "--version", "7", "--kind", "desktop", "--archive",
                 str(tmp_path / "b.tar")]) == 2
    assert "nothing was built" in capsys.readouterr().err
    assert not any(p.name.startswith("v7-") for p in (tmp_path / "bundles").iterdir())
    # the model file must be the one its sidecar describes, of the type it names, and loadable
    side = model.with_name(model.name + ".json")
    doc = json.loads(side.read_text())
    assert doc["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    good = model.read_bytes()
    capsys.readouterr()
    model.write_bytes(good[: len(good) // 2])  # e.g. replaced, or an export stopped between the two files
    assert main(["bundle", "build", *common, "--version", "2", "--kind", "desktop"]) == 4
    assert "not the one its sidecar describes" in capsys.readouterr().err
    doc_nosha = {k: v for k, v in doc.items() if k != "sha256"}  # an older sidecar: the file cannot be checked
    side.write_text(json.dumps(doc_nosha))
    assert main(["calibrate", str(model), "--catalogue", str(folders["catalogue"]), "--positives",
                 str(folders["positives"]), "--negatives", str(folders["negatives"]), "--out",
                 str(tmp_path / "cal2.json")]) == 4  # refused, not used unchecked (it was only warned about)
    assert "does not record the model file's sha256" in capsys.readouterr().err
    model.write_bytes(good)
    side.write_text(json.dumps({**doc, "format": "tflite-fp32"}))  # a sidecar that names another file type
    assert main(["bundle", "build", *common, "--version", "2", "--kind", "desktop"]) == 4
    assert "is a .tflite file" in capsys.readouterr().err
    side.write_text(json.dumps({k: v for k, v in doc.items() if k != "preprocess"}))
    assert main(["bundle", "build", *common, "--version", "2", "--kind", "desktop"]) == 3
    assert "missing or malformed: preprocess" in capsys.readouterr().err
    side.write_text("[1, 2]")
    assert main(["bundle", "build", *common, "--version", "2", "--kind", "desktop"]) == 3
    assert not [p.name for p in (tmp_path / "bundles").iterdir() if "v2" in p.name]  # nothing built, nothing claimed

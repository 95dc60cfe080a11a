"""``partlens calibrate`` and the calibration checks of ``partlens bundle build`` on a tiny exported model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import CLASSES
from .test_cli import CATALOGUE_PARTS, calibration_folders


@pytest.fixture(scope="module")
def setup(tiny_model, image_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An onnx-fp32 export of the tiny model and the calibration folders (made once for the module)."""
    from export.pipeline import export_model

    root = tmp_path_factory.mktemp("calibrate")
    side = export_model(tiny_model, CLASSES, "onnx-fp32", root / "exports", calib_dir=image_dirs["calib"],
                        val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"])
    return {"model": Path(side["path"]), **calibration_folders(image_dirs, root / "folders")}


def _args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["calibrate", str(setup["model"]), "--catalogue", str(setup["catalogue"]), "--positives",
            str(setup["positives"]), "--negatives", str(setup["negatives"]), "--out", str(out), *extra]


def _with(args: list[str], flag: str, value: Path) -> list[str]:
    """``args`` with the value after ``flag`` replaced."""
    i = args.index(flag) + 1
    return [*args[:i], str(value), *args[i + 1:]]


def test_calibrate_fits_what_the_device_loads(setup: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.bundle import sha256_file
    from edge_app.cli import main
    from edge_app.runtime.calibration import Calibration
    from export.calibrate import part_scores
    from export.catalogue import catalogue_from_dir, embed_catalogue, images_from_dir
    from export.runners import file_runner
    from edge_app.preprocess import PreprocessSpec
    from export.pipeline import read_sidecar

    out = tmp_path / "cal.json"
    assert main(_args(setup, out)) == 0
    printed = capsys.readouterr().out
    d = json.loads(out.read_text())
    cal = Calibration.from_dict(d)  # exactly what the runtime does with a bundle's section
    info = cal.info
    n_pos = sum(1 for _ in setup["positives"].rglob("*.jpg"))
    n_neg = sum(1 for _ in setup["negatives"].glob("*.jpg"))
    assert (info["positives"], info["negatives"]) == (n_pos, n_neg) == (18, 14)
    assert info["negative_parts"] == ["(outside the catalogue)"]
    assert info["model_sha256"] == sha256_file(setup["model"]) and info["catalogue_views"] == "flip-crop5"
    assert cal.target_precision == 0.9 and 0.5 <= cal.threshold <= 1.0
    assert f"threshold {cal.threshold:.3f}" in printed and "in-sample" in printed

    # recompute the in-sample figures independently: embed as the device does and apply the saved calibration
    spec = PreprocessSpec.from_dict(read_sidecar(setup["model"])["preprocess"])
    run = file_runner(setup["model"])
    cat, rows = embed_catalogue(run, catalogue_from_dir(setup["catalogue"]), spec, views="flip-crop5")
    photos = [*images_from_dir(setup["positives"], kind="field"),
              *images_from_dir(setup["negatives"], kind="field", flat_part="x")]
    q, qrows = embed_catalogue(run, photos, spec)
    names, scores = part_scores(q, cat, [r["part_number"] for r in rows])
    s = -np.sort(-scores, axis=1)
    conf = cal.confidence(s[:, 0], s[:, 1])
    right = np.array([names[i] == r["part_number"] for i, r in zip(scores.argmax(1), qrows)])
    known = np.array([r["part_number"] in CATALOGUE_PARTS for r in qrows])
    assert info["fit_top1"] == pytest.approx(right[known].mean())
    accepted = conf >= cal.threshold
    assert info["fit_accepted_fraction"] == pytest.approx(accepted.mean())
    assert info["fit_negatives_accepted"] == pytest.approx(accepted[~known].mean())
    # the confidence ranks right answers above the unknown part's photos
    assert conf[right].mean() > conf[~known].mean()


def test_calibrate_refuses_bad_requests_and_keeps_the_old_file(setup: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main

    out = tmp_path / "cal.json"
    out.write_text("keep me")
    assert main(_args(setup, out)) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(_args(setup, tmp_path / "a.json", "--target-precision", "1.0")) == 2
    assert "target precision must be in [0.5, 1)" in capsys.readouterr().err
    # negatives holding a catalogue part, positives of a part outside the catalogue
    bad = tmp_path / "bad"
    (bad / "P0").mkdir(parents=True)
    (bad / "P0" / "x.jpg").symlink_to(next((setup["positives"] / "P0").glob("*.jpg")))
    args = _args(setup, tmp_path / "b.json")
    assert main(_with(args, "--negatives", bad)) == 3
    assert "negatives must be parts outside the catalogue" in capsys.readouterr().err
    (bad / "P9").mkdir()
    (bad / "P9" / "y.jpg").symlink_to(next(setup["negatives"].glob("*.jpg")))
    assert main(_with(args, "--positives", bad)) == 3
    assert "not in the catalogue: ['P9']" in capsys.readouterr().err
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "z.jpg").symlink_to(next(setup["negatives"].glob("*.jpg")))
    assert main(_with(args, "--positives", flat)) == 3  # positives need their part folder
    assert "folder named by part number" in capsys.readouterr().err
    # a model without its export sidecar
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(setup["model"].read_bytes())
    assert main(["calibrate", str(lone), *args[2:]]) == 3
    assert "missing export sidecar" in capsys.readouterr().err
    assert not any(tmp_path.glob("[ab].json"))


def test_bundle_build_refuses_a_calibration_the_device_could_not_use(setup: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main
    from edge_app.signing import init_key

    assert main(_args(setup, tmp_path / "cal.json")) == 0
    good = json.loads((tmp_path / "cal.json").read_text())
    key, _ = init_key(tmp_path / "keys")
    build = ["bundle", "build", "--model", str(setup["model"]), "--catalogue", str(setup["catalogue"]),
             "--key", str(key), "--version", "1", "--kind", "desktop", "--out", str(tmp_path / "bundles")]
    cases = {
        "malformed": ({"threshold": 0.6}, "unknown calibration format"),
        "other model": ({**good, "info": {**good["info"], "model_sha256": "0" * 64}}, "fitted with another model"),
        "other views": ({**good, "info": {**good["info"], "catalogue_views": "none"}}, "catalogue views 'none'"),
    }
    for name, (cal, message) in cases.items():
        capsys.readouterr()
        assert main([*build, "--calibration", json.dumps(cal)]) == 2, name
        assert message in capsys.readouterr().err, name
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())
    # the same views on both sides is accepted; a view set the calibration was not fitted with is not
    assert main([*build, "--calibration", json.dumps(good), "--catalogue-views", "none"]) == 2
    assert main([*build, "--calibration", json.dumps(good)]) == 0


def test_calibrate_scores_the_result_on_photos_kept_out_of_the_fit(setup: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main
    from edge_app.preprocess import PreprocessSpec
    from edge_app.runtime.calibration import Calibration
    from export.calibrate import calibration_metrics, part_scores
    from export.catalogue import catalogue_from_dir, embed_catalogue, images_from_dir
    from export.pipeline import read_sidecar
    from export.runners import file_runner

    from .conftest import make_image_folder

    fresh = make_image_folder(tmp_path / "fresh", 5, seed=7)  # photos neither fitted nor in the catalogue
    check_neg = tmp_path / "check_neg"
    (fresh / "P3").rename(check_neg)  # P3 is outside the catalogue; P0-P2 stay as the check positives
    out = tmp_path / "cal.json"
    args = _args(setup, out, "--check-positives", str(fresh), "--check-negatives", str(check_neg))
    assert main(args) == 0
    printed = capsys.readouterr().out
    cal = Calibration.from_dict(json.loads(out.read_text()))
    check = cal.info["check"]
    assert (check["known"], check["unknown"], check["photos"]) == (15, 5, 20)
    assert "check photos (not fitted; 15 of catalogue parts, 5 of other parts)" in printed
    # the same numbers from the photos scored independently
    spec = PreprocessSpec.from_dict(read_sidecar(setup["model"])["preprocess"])
    run = file_runner(setup["model"])
    cat, rows = embed_catalogue(run, catalogue_from_dir(setup["catalogue"]), spec, views="flip-crop5")
    photos = [*images_from_dir(fresh, kind="field"), *images_from_dir(check_neg, kind="field", flat_part="x")]
    q, qrows = embed_catalogue(run, photos, spec)
    names, scores = part_scores(q, cat, [r["part_number"] for r in rows])
    s = -np.sort(-scores, axis=1)
    right = np.array([names[i] == r["part_number"] for i, r in zip(scores.argmax(1), qrows)])
    known = np.array([r["part_number"] in CATALOGUE_PARTS for r in qrows])
    assert check == pytest.approx(calibration_metrics(cal.confidence(s[:, 0], s[:, 1]), cal.threshold, right, known))
    # refused: only one check folder; a photo both fitted and checked
    assert main(_args(setup, tmp_path / "x.json", "--check-positives", str(fresh))) == 2
    assert "go together" in capsys.readouterr().err
    assert main(_args(setup, tmp_path / "y.json", "--check-positives", str(setup["positives"]),
                      "--check-negatives", str(check_neg))) == 2
    assert "both fitted and checked" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_a_calibration_that_names_no_model_is_accepted_with_a_warning(caplog) -> None:
    from edge_app.errors import UsageError
    from edge_app.runtime.calibration import Calibration
    from export.calibrate import check_calibration

    cal = Calibration(coef=(8.0, 20.0), intercept=-6.0, threshold=0.42).to_dict()
    with caplog.at_level("WARNING", logger="export.calibrate"):
        check_calibration(cal, model_sha256="a" * 64, catalogue_views="none")
    assert "cannot be checked against this bundle's model" in caplog.text
    named = Calibration(coef=(8.0, 20.0), intercept=-6.0, threshold=0.42, info={"model_sha256": "b" * 64}).to_dict()
    with pytest.raises(UsageError, match="fitted with another model"):
        check_calibration(named, model_sha256="a" * 64, catalogue_views="none")


def test_a_calibration_whose_unknown_parts_joined_the_catalogue_is_warned_about(caplog) -> None:
    """An audit: a part whose photos the calibration treated as unknown was later added to the catalogue, and
    `bundle build` did not notice (the threshold was fitted counting them as not in the catalogue)."""
    from edge_app.runtime.calibration import Calibration
    from export.calibrate import check_calibration

    cal = Calibration(coef=(8.0, 20.0), intercept=-6.0, threshold=0.42,
                      info={"model_sha256": "a" * 64, "negative_parts": ["monitor", "webcam"]}).to_dict()
    with caplog.at_level("WARNING", logger="export.calibrate"):
        check_calibration(cal, model_sha256="a" * 64, catalogue_views="none", catalogue_parts={"cpu", "gpu"})
    assert "NOT in the catalogue" not in caplog.text
    with caplog.at_level("WARNING", logger="export.calibrate"):
        check_calibration(cal, model_sha256="a" * 64, catalogue_views="none", catalogue_parts={"cpu", "monitor"})
    assert "photos of monitor as parts NOT in the catalogue" in caplog.text

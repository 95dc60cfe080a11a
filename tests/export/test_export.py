"""Export formats, the parity gate, and exported files end to end with the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_app.errors import GateError, InputError, UsageError
from export.formats import FORMATS, resolve_options
from export.parity import Thresholds, compare_outputs, enforce

from .conftest import CLASSES


def test_formats_table_and_options() -> None:
    assert set(FORMATS) == {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "tflite-int8-aiq"}
    assert resolve_options("tflite-int8") == {"calib_images": 200, "metadata": True, "per_channel": True, "seed": 0,
                                              "weight_tuning": True}
    assert resolve_options("onnx-int8", {"calib_method": "entropy", "opset": None})["calib_method"] == "entropy"
    with pytest.raises(UsageError, match="does not take"):
        resolve_options("tflite-fp32", {"calib_images": 50})  # never silently ignored
    with pytest.raises(UsageError, match="does not take"):
        resolve_options("onnx-fp32", {"per_channel": False})
    with pytest.raises(UsageError, match="unknown export option"):
        resolve_options("onnx-int8", {"calib_imgs": 5})
    with pytest.raises(UsageError, match="unknown export format"):
        resolve_options("coreml")
    with pytest.raises(UsageError, match="calib_method"):
        resolve_options("onnx-int8", {"calib_method": "magic"})


def test_compare_outputs_numbers() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    cat = rng.normal(size=(20, 8)).astype(np.float32)
    same = compare_outputs("x", {"logits": logits, "embedding": emb}, {"logits": logits, "embedding": 3 * emb},
                           cat, 2 * cat)
    assert same.top1_agreement == 1.0 and same.neighbour_agreement == 1.0 == same.neighbour_agreement_strict
    assert same.median_cosine == pytest.approx(1.0) and same.passed
    flipped = logits.copy()
    flipped[:5] = -flipped[:5]  # 5 of 50 change their argmax
    rep = compare_outputs("onnx-int8", {"logits": logits, "embedding": emb},
                          {"logits": flipped, "embedding": emb}, cat, cat)
    assert rep.top1_agreement == pytest.approx(0.9) and not rep.passed
    with pytest.raises(GateError, match=r"onnx-int8.*top-1 agreement 90\.00% < 98%"):
        enforce(rep)
    assert rep.top1_agreement_strict == pytest.approx(0.9)


def test_nan_or_infinite_outputs_fail_the_gate() -> None:
    """A model that gives NaN (e.g. trained with a diverged loss) must not pass: NaN compares false to every
    threshold, so the gate checks finiteness itself."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(20, 4)).astype(np.float32)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    cat = rng.normal(size=(10, 8)).astype(np.float32)
    one_nan = emb.copy()
    one_nan[3] = np.nan  # one photo of twenty: the median cosine alone would still look fine
    rep = compare_outputs("t", {"logits": logits, "embedding": emb}, {"logits": logits, "embedding": one_nan},
                          cat, cat)
    assert rep.non_finite == 1 and not rep.passed
    with pytest.raises(GateError, match="1 photo.*NaN or infinite"):
        enforce(rep)
    all_nan = {"logits": np.full_like(logits, np.nan), "embedding": np.full_like(emb, np.nan)}
    both = compare_outputs("t", all_nan, all_nan, np.full_like(cat, np.nan), np.full_like(cat, np.nan))
    assert both.non_finite == 30 and not both.passed
    assert any("median embedding cosine nan" in f for f in both.failures)  # NaN fails each threshold too
    inf_cat = cat.copy()
    inf_cat[0, 0] = np.inf
    assert compare_outputs("t", {"logits": logits, "embedding": emb}, {"logits": logits, "embedding": emb},
                           cat, inf_cat).non_finite == 1


def test_top1_agreement_tolerates_only_near_ties() -> None:
    """int8 rounding may flip a near-tied pick (PyTorch itself could not tell the two classes apart);
    a flip of a confident pick still fails the gate."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    cat = rng.normal(size=(20, 8)).astype(np.float32)
    ref = np.zeros((50, 3), np.float32)
    ref[:, 0] = 5.0  # confident class 0 ...
    ref[:10] = [2.0, 1.98, -3.0]  # ... except 10 near ties between 0 and 1 (probabilities 0.50 / 0.49)
    near = ref.copy()
    near[:10] = [1.98, 2.0, -3.0]  # the export flips the near ties
    rep = compare_outputs("t", {"logits": ref, "embedding": emb}, {"logits": near, "embedding": emb}, cat, cat)
    assert rep.top1_agreement_strict == pytest.approx(0.8) and rep.top1_agreement == 1.0 and rep.passed
    confident = ref.copy()
    confident[10:20] = [0.0, 5.0, 0.0]  # 10 confident picks flip
    bad = compare_outputs("t", {"logits": ref, "embedding": emb}, {"logits": confident, "embedding": emb}, cat, cat)
    assert bad.top1_agreement == pytest.approx(0.8) and not bad.passed
    assert any("top-1 agreement 80.00%" in f for f in bad.failures)


def test_compare_outputs_embedding_checks() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    cat = rng.normal(size=(20, 8)).astype(np.float32)
    noisy = compare_outputs("t", {"logits": logits, "embedding": emb},
                            {"logits": logits, "embedding": emb + rng.normal(0, 2, emb.shape).astype(np.float32)},
                            cat, cat, Thresholds())
    assert noisy.median_cosine < 0.98 and any("median embedding cosine" in f for f in noisy.failures)
    # a duplicated catalogue image: picking either copy is not a disagreement, anything else is
    dup = np.concatenate([cat, cat[:1] + 1e-3 * rng.normal(size=(1, 8)).astype(np.float32)])  # near-duplicate
    q = {"logits": np.repeat(logits[:1], 5, 0), "embedding": np.repeat(cat[:1], 5, 0)}  # the gate's minimum
    cand = dup.copy()
    cand[0] += 0.3 * rng.normal(size=8).astype(np.float32)  # the export now prefers the copy (20)
    tied = compare_outputs("t", q, q, dup, cand)
    assert tied.neighbour_agreement == 1.0 and tied.neighbour_agreement_strict == 0.0
    swapped = cat.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    moved = compare_outputs("t", q, q, cat, swapped)
    assert moved.neighbour_agreement == 0.0 and moved.neighbour_agreement_strict == 0.0


def test_neighbour_agreement_is_part_level_when_the_catalogue_has_parts() -> None:
    """Two photos of the SAME part trading places is not a disagreement; a different part is."""
    rng = np.random.default_rng(1)
    cat = rng.normal(size=(6, 8)).astype(np.float32)
    labels = ["A", "A", "B", "B", "C", "C"]
    q_emb = cat[[0, 2, 4]] + 0.05 * rng.normal(size=(3, 8)).astype(np.float32)
    q = {"logits": np.tile(np.eye(3, dtype=np.float32), (2, 1)), "embedding": np.tile(q_emb, (2, 1))}  # 6 photos
    same_part = cat.copy()
    same_part[[0, 1]] = same_part[[1, 0]]  # the export now finds A's other photo first
    rep = compare_outputs("t", q, q, cat, same_part, Thresholds(), labels)
    assert rep.neighbour_level == "part" and rep.neighbour_agreement == 1.0
    assert rep.neighbour_agreement_image == pytest.approx(2 / 3) and rep.neighbour_agreement_strict == pytest.approx(2 / 3)
    other_part = cat.copy()
    other_part[[0, 2]] = other_part[[2, 0]]  # queries A and B now land on the other part: real disagreements
    bad = compare_outputs("t", q, q, cat, other_part, Thresholds(), labels)
    assert bad.neighbour_agreement == pytest.approx(1 / 3) and not bad.passed
    assert any("nearest-catalogue-part agreement" in f for f in bad.failures)
    assert compare_outputs("t", q, q, cat, same_part).neighbour_level == "image"  # no labels: image level
    with pytest.raises(UsageError, match="labels"):
        compare_outputs("t", q, q, cat, cat, Thresholds(), labels[:3])


def test_catalogue_labels_only_when_the_folder_says_so(tmp_path: Path) -> None:
    from export.pipeline import catalogue_labels

    for part in ("A", "B"):
        (tmp_path / "folder" / part).mkdir(parents=True)
        (tmp_path / "folder" / part / "x.jpg").write_bytes(b"")
    paths = [tmp_path / "folder" / "A" / "x.jpg", tmp_path / "folder" / "B" / "x.jpg"]
    assert catalogue_labels(tmp_path / "folder", paths) == ["A", "B"]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"")
    assert catalogue_labels(flat, [flat / "a.jpg"]) is None  # no folders: nothing says what the part is
    assert catalogue_labels(tmp_path / "folder", paths[:1]) is None  # one folder could be anything
    links = tmp_path / "links"  # a folder of symlinks into a dataset elsewhere (benchmarks build these)
    for part, target in (("C", paths[0]), ("D", paths[1])):
        (links / part).mkdir(parents=True)
        (links / part / "y.jpg").symlink_to(target)
    assert catalogue_labels(links, [links / "C" / "y.jpg", links / "D" / "y.jpg"]) == ["C", "D"]
    gen = tmp_path / "gen"
    (gen / "images" / "P1").mkdir(parents=True)
    (gen / "images" / "P1" / "f.jpg").write_bytes(b"")
    (gen / "images.csv").write_text("path,part_number,kind\nimages/P1/f.jpg,P1,field\n")
    assert catalogue_labels(gen, [gen / "images" / "P1" / "f.jpg"]) == ["P1"]


def test_a_small_calibration_folder_is_used_whole_unless_a_count_was_asked(tiny_model, image_dirs, tmp_path: Path,
                                                                          caplog) -> None:
    """The default of 200 calibration images stopped anyone training on fewer photos (the message named an
    internal temporary folder and no option); a count the user asked for is never quietly lowered."""
    from export.pipeline import export_model

    with pytest.raises(UsageError, match="--calib-images 500, but the calibration images .* are only 32; pass "
                                         "--calib-images 32"):
        export_model(tiny_model, CLASSES, "onnx-int8", tmp_path, calib_dir=image_dirs["calib"],
                     val_dir=image_dirs["val"], options={"calib_images": 500})
    res = export_model(tiny_model, CLASSES, "onnx-int8", tmp_path, calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"])
    assert "int8 calibration on all 32 images" in caplog.text
    assert res["quantization"]["calibration_images"] == 32 and res["quantization"]["options"]["calib_images"] == 32


@pytest.mark.slow
def test_onnx_fp32_export_passes_gate(tiny_model, image_dirs, tmp_path: Path) -> None:
    from export.pipeline import export_model
    from export.runners import onnx_runner

    res = export_model(tiny_model, CLASSES, "onnx-fp32", tmp_path, calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"])
    path = Path(res["path"])
    assert path.name == "tiny-onnx-fp32.onnx" and path.is_file()
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["parity"]["passed"] and side["parity"]["top1_agreement"] == 1.0
    assert side["parity"]["n_val"] == 24 and side["labels"] == CLASSES
    out = onnx_runner(path)(np.zeros((3, 3, 64, 64), np.float32))  # dynamic batch, outputs by name
    assert out["logits"].shape == (3, 4) and out["embedding"].shape == (3, 16)
    with pytest.raises(UsageError, match="exists"):
        export_model(tiny_model, CLASSES, "onnx-fp32", tmp_path, calib_dir=image_dirs["calib"],
                     val_dir=image_dirs["val"])


@pytest.mark.slow
def test_gate_fails_on_perturbed_export_and_writes_nothing(tiny_model, image_dirs, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import numpy_helper

    import export.pipeline as pipeline

    original = pipeline._write_export

    def broken(model, labels, fmt, opts, path, calib, name):  # export, then corrupt the exported weights
        info = original(model, labels, fmt, opts, path, calib, name)
        m = onnx.load(str(path))
        rng = np.random.default_rng(0)
        for init in m.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.ndim >= 2:
                init.CopyFrom(numpy_helper.from_array(
                    (w + rng.normal(0, 2 * (w.std() + 1e-3), w.shape)).astype(np.float32), init.name))
        onnx.save(m, str(path))
        return info

    monkeypatch.setattr(pipeline, "_write_export", broken)
    with pytest.raises(GateError, match=r"parity gate failed for onnx-fp32: .*(top-1 agreement|cosine)"):
        pipeline.export_model(tiny_model, CLASSES, "onnx-fp32", tmp_path, calib_dir=image_dirs["calib"],
                              val_dir=image_dirs["val"])
    assert [p.name for p in tmp_path.iterdir()] == []  # no model, no sidecar, no temp folder


@pytest.mark.slow
def test_onnx_int8_export(tiny_model, image_dirs, tmp_path: Path) -> None:
    import onnx

    from export.pipeline import export_model

    res = export_model(tiny_model, CLASSES, "onnx-int8", tmp_path, calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"],
                       options={"calib_images": 32})
    m = onnx.load(res["path"])
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert sorted(o.name for o in m.graph.output) == ["embedding", "logits"]
    assert res["quantization"]["calibration_images"] == 32 and res["parity"]["passed"]


@pytest.mark.slow
def test_ai_edge_quantizer_int8_export_is_gated_and_carries_metadata(tiny_model, image_dirs, tmp_path: Path) -> None:
    from export.metadata import read_metadata
    from export.pipeline import export_model
    from export.runners import tflite_runner

    res = export_model(tiny_model, CLASSES, "tflite-int8-aiq", tmp_path / "out", calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"],
                       options={"calib_images": 32})
    assert res["format"] == "tflite-int8-aiq" and res["parity"]["passed"]
    assert res["metadata"]["status"] == "embedded" and read_metadata(Path(res["path"]).read_bytes())["labels"] == CLASSES
    out = tflite_runner(res["path"])(np.zeros((1, 3, 64, 64), np.float32))
    assert out["logits"].dtype == np.float32 and out["embedding"].shape == (1, tiny_model.embed_dim)
    with pytest.raises(UsageError, match="weight_tuning"):
        export_model(tiny_model, CLASSES, "tflite-int8-aiq", tmp_path / "x", calib_dir=image_dirs["calib"],
                     val_dir=image_dirs["val"], options={"weight_tuning": False})


@pytest.mark.slow
def test_tflite_int8_export_with_metadata_and_bundle(tiny_model, image_dirs, tmp_path: Path, caplog) -> None:
    from edge_app.bundle import load_bundle
    from edge_app.signing import Keyring, SigningKey
    from export.catalogue import catalogue_from_dir, embed_catalogue
    from export.metadata import read_metadata
    from export.pipeline import bundle_from_exports, export_model
    from export.runners import tflite_runner

    res = export_model(tiny_model, CLASSES, "tflite-int8", tmp_path / "out", calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"],
                       options={"calib_images": 32})
    # the quantised graph comes from the eval-mode wrapper: litert-torch must not tell users to call .eval()
    assert not [r for r in caplog.records if "training mode" in r.getMessage()]
    path = Path(res["path"])
    assert res["metadata"]["status"] == "embedded"
    assert res["io"]["input"]["shape"] == [1, 3, 64, 64]
    assert res["parity"]["passed"] and res["parity"]["median_cosine"] >= 0.98
    data = path.read_bytes()
    md = read_metadata(data)
    assert md["labels"] == CLASSES
    norm = md["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"][0]["options"]
    assert norm["mean"] == [127.5] * 3 and norm["std"] == [127.5] * 3
    # output metadata is attached by tensor name: the entry in the "logits" tensor's slot is named logits
    from tensorflow_lite_support.metadata.python.metadata_writers import writer_utils

    from export.metadata import _signature_tensor_names

    order = writer_utils.get_output_tensor_names(bytearray(data))
    names = _signature_tensor_names(data)
    out_md = md["metadata"]["subgraph_metadata"][0]["output_tensor_metadata"]
    assert out_md[order.index(names["logits"])]["name"] == "logits"
    assert out_md[order.index(names["embedding"])]["name"] == "embedding"
    # float interface on a fully int8 graph
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    ops = {d["op_name"] for d in interp._get_ops_details()}
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D"} <= ops
    conv_in = [d for d in interp._get_ops_details() if d["op_name"] == "CONV_2D"][0]["inputs"][0]
    assert interp.get_tensor_details()[conv_in]["dtype"] == np.int8

    from edge_app.runtime.calibration import Calibration

    key = SigningKey.generate()
    cal = Calibration(coef=(8.0, 20.0), intercept=-6.0, threshold=0.42).to_dict()
    bundle_dir = bundle_from_exports(tmp_path / "bundles", [path], catalogue_dir=image_dirs["catalogue"], key=key,
                                     version=1, calibration=cal)
    b = load_bundle(bundle_dir, Keyring({key.key_id: key.public_raw}))
    assert b.manifest["quantization"]["tflite-int8"]["calibration_images"] == 32
    assert b.manifest["parity"]["tflite-int8"]["passed"] and b.manifest["calibration"] == cal
    # catalogue embeddings are those of the exported TFLite model, normalised, made with the default views
    assert b.catalogue_views == "flip-crop5"
    runner, items = tflite_runner(b.model_path("tflite")), catalogue_from_dir(image_dirs["catalogue"])
    expect, rows = embed_catalogue(runner, items, b.preprocess, views="flip-crop5")
    np.testing.assert_allclose(np.linalg.norm(expect, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(b.load_embeddings(), expect, atol=1e-6)
    assert b.load_catalogue_rows() == rows and rows[0]["part_number"] == "P0"
    single, _ = embed_catalogue(runner, items, b.preprocess)
    assert np.abs(single - expect).max() > 1e-3  # the views really change the stored vectors
    # a sidecar edited to another normalisation than the one embedded in the model is refused
    from edge_app.errors import IntegrityError

    side_path = path.with_name(path.name + ".json")
    good = side_path.read_text()
    doc = json.loads(good)
    doc["preprocess"].update(mean=[0.6] * 3, std=[0.4] * 3)
    side_path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="normalisation .* is not the one embedded in the model"):
        bundle_from_exports(tmp_path / "bundles", [path], catalogue_dir=image_dirs["catalogue"], key=key, version=2)
    # and so are edited labels (found by an audit: reversed labels went into the signed manifest)
    doc = json.loads(good)
    doc["labels"] = list(reversed(doc["labels"]))
    side_path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="labels .* are not the ones embedded in the model"):
        bundle_from_exports(tmp_path / "bundles", [path], catalogue_dir=image_dirs["catalogue"], key=key, version=2)


def test_metadata_writer_failure_is_reported() -> None:
    pytest.importorskip("tensorflow_lite_support")
    from edge_app.preprocess import PreprocessSpec
    from export.metadata import embed_metadata

    data, status = embed_metadata(b"not a tflite model", model_name="tiny", labels=CLASSES,
                                  spec=PreprocessSpec(size=(64, 64)))
    assert data == b"not a tflite model"
    assert status["status"] == "failed" and "metadata writer failed" in status["reason"]


@pytest.mark.slow
def test_tflite_fp32_export_without_metadata(tiny_model, image_dirs, tmp_path: Path) -> None:
    from export.pipeline import export_model

    res = export_model(tiny_model, CLASSES, "tflite-fp32", tmp_path, calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"], options={"metadata": False})
    assert res["metadata"] == {"status": "skipped", "reason": "metadata=False"}
    assert res["parity"]["top1_agreement"] == 1.0 and res["parity"]["median_cosine"] > 0.9999
    assert res["io"]["outputs"] == {"embedding": {"shape": [1, 16]}, "logits": {"shape": [1, 4]}}


def _relu6_net(torch, neck_bn: bool = False):
    """conv-ReLU6 x2 -> global pool -> flatten -> neck (Linear[+BN1d]) -> classifier, like the real heads."""
    from edge_app.preprocess import PreprocessSpec

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(),
                                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU6(),
                                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.neck = (torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False), torch.nn.BatchNorm1d(4))
                         if neck_bn else torch.nn.Linear(8, 4))
            self.classifier = torch.nn.Linear(4, 2)
            self.preprocess = PreprocessSpec(size=(16, 16))

    torch.manual_seed(0)
    net = Net()
    if neck_bn:  # trained-looking BN statistics, so the folded bias matters
        net.train()
        with torch.no_grad():
            for _ in range(20):
                net.neck(net.features(torch.rand(8, 3, 16, 16) * 2 - 1))
    return net.eval()


@pytest.mark.slow
def test_int8_conv_relu6_gets_the_fused_range() -> None:
    """conv -> ReLU6 is quantised on [0, 6] (scale 6/255), not on the wider pre-clamp conv range."""
    torch = pytest.importorskip("torch")
    from ai_edge_litert.interpreter import Interpreter

    from export.tflite_export import convert_int8

    net = _relu6_net(torch)
    with torch.no_grad():
        net.features[0].weight.mul_(20)  # pre-clamp outputs far beyond 6
    calib = np.random.default_rng(0).uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    scales = {}
    for fix in (True, False):
        interp = Interpreter(model_content=convert_int8(net, calib, relu6_fix=fix))
        ops = interp._get_ops_details()
        convs = [d for d in ops if d["op_name"] == "CONV_2D"]
        out = interp.get_tensor_details()[convs[0]["outputs"][0]]
        scales[fix] = out["quantization"][0]
    assert scales[True] == pytest.approx(6 / 255, rel=1e-6)
    assert scales[False] > 2 * scales[True]


def _fc_bias_scale_errors(data: bytes) -> list[float]:
    """Per FULLY_CONNECTED op: max relative error of bias scale vs input scale x weight scale.

    TFLite's int8 kernels assume bias_scale == input_scale * weight_scale and ignore the bias
    tensor's own scale, so any error here is an error in every output of that layer.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    td = {t["index"]: t for t in interp.get_tensor_details()}
    errors = []
    for op in interp._get_ops_details():
        if op["op_name"] != "FULLY_CONNECTED" or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        x, w, b = (td[i] for i in op["inputs"][:3])
        want = x["quantization"][0] * w["quantization_parameters"]["scales"]
        errors.append(float(np.max(np.abs(b["quantization_parameters"]["scales"] / want - 1))))
    return errors


@pytest.mark.slow
def test_int8_linear_after_pool_has_no_requantize_and_a_consistent_bias() -> None:
    """The pooled features enter the neck's FULLY_CONNECTED at one scale, and its bias is quantised for it.

    Without the fix, litert-torch folds the flatten's quantize -> quantize chain into one tensor at the
    first scale but quantises the bias for the second: the TFLite embedding drifts from PyTorch
    (median cosine 0.978 on a fine-tuned EfficientNet-Lite0) while the fake-quantised graph looks fine.
    """
    torch = pytest.importorskip("torch")
    from ai_edge_litert.interpreter import Interpreter

    from export.tflite_export import SIGNATURE, convert_int8
    from export.wrapper import export_module

    net = _relu6_net(torch, neck_bn=True)
    calib = np.random.default_rng(0).uniform(-1, 1, (32, 3, 16, 16)).astype(np.float32)
    val = np.random.default_rng(1).uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = export_module(net)(torch.from_numpy(val))["embedding"].numpy()
    results = {}
    for fix in (True, False):
        data = convert_int8(net, calib, requant_fix=fix, weight_tuning=False)
        runner = Interpreter(model_content=data).get_signature_runner(SIGNATURE)
        name = next(iter(runner.get_input_details()))
        emb = np.concatenate([runner(**{name: val[i:i + 1]})["embedding"] for i in range(len(val))])
        cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
        results[fix] = (_fc_bias_scale_errors(data), float(np.median(cos)))
    errors, cos = results[True]
    assert len(errors) == 2 and max(errors) < 1e-4, errors
    assert cos > 0.99, cos
    assert max(results[False][0]) > 0.05  # the converter's inconsistency this guards against


def test_quantizer_prints_and_warnings_go_to_the_debug_log(capsys: pytest.CaptureFixture[str], caplog) -> None:
    import logging
    import sys
    import warnings

    from export.tflite_export import _to_debug_log

    caplog.set_level(logging.DEBUG, logger="export.tflite_export")
    with pytest.raises(RuntimeError, match="boom"), _to_debug_log("lib"):
        print("Original model size: 14 MiB")
        sys.stderr.write("Running Calibration::  50%\r")
        warnings.warn("preserve_all_tensors is for debugging", UserWarning)
        raise RuntimeError("boom")  # an error still propagates, and what was printed before it is kept
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Original model size: 14 MiB" in logged and "Running Calibration::  50%" in logged
    assert "lib: UserWarning: preserve_all_tensors is for debugging" in logged


def test_model_with_reference_exports_its_fused_embedding(tiny_model, image_dirs, tmp_path: Path) -> None:
    import copy

    import torch

    from export.inputs import load_inputs
    from export.pipeline import export_model
    from export.runners import file_runner
    from training.models import add_reference

    model = add_reference(copy.deepcopy(tiny_model), 0.5, allow_random=True)
    res = export_model(model, CLASSES, "onnx-fp32", tmp_path, calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"])
    assert res["embedding_dim"] == model.embed_dim == 16 + 64 and res["parity"]["passed"]
    x, _ = load_inputs(sorted(image_dirs["val"].rglob("*.jpg"))[:3], model.preprocess)
    out = file_runner(res["path"])(x)
    emb = out["embedding"] / np.linalg.norm(out["embedding"], axis=1, keepdims=True)
    with torch.no_grad():
        expect = model.embedding(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(emb, expect, atol=1e-5)


def test_gate_checks_that_could_not_fail_now_can() -> None:
    """Found by fault injection: a model broken on 10 of 24 photos kept a median cosine of 1.0; swapped outputs
    crashed with an IndexError; 1-3 photos or a one-part catalogue made the figures say nothing."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(24, 4)).astype(np.float32)
    emb = rng.normal(size=(24, 16)).astype(np.float32)
    cat = rng.normal(size=(12, 16)).astype(np.float32)
    labels = [f"P{i % 4}" for i in range(12)]
    broken = emb.copy()
    broken[:10] = rng.normal(size=(10, 16))  # scrambled on the brightest 10 photos, say
    rep = compare_outputs("t", {"logits": logits, "embedding": emb}, {"logits": logits, "embedding": broken},
                          cat, cat, Thresholds(), labels)
    assert rep.median_cosine == pytest.approx(1.0) and rep.p05_cosine < 0.5
    assert any("5th-percentile embedding cosine" in f for f in rep.failures) and not rep.passed
    with pytest.raises(GateError, match="logits output is \\(24, 16\\), the PyTorch model's is \\(24, 4\\)"):
        compare_outputs("t", {"logits": logits, "embedding": emb}, {"logits": emb, "embedding": logits}, cat, cat)
    few = {"logits": logits[:3], "embedding": emb[:3]}
    with pytest.raises(GateError, match="only 3 validation photo"):
        compare_outputs("t", few, few, cat, cat)
    with pytest.raises(GateError, match="one part"):
        compare_outputs("t", {"logits": logits, "embedding": emb}, {"logits": logits, "embedding": emb},
                        cat, cat, Thresholds(), ["P0"] * 12)
    with pytest.raises(GateError, match="one image"):
        compare_outputs("t", {"logits": logits, "embedding": emb}, {"logits": logits, "embedding": emb},
                        cat[:1], cat[:1])


def _fake_export(path: Path, fmt: str, **side) -> Path:
    from edge_app.bundle import sha256_file
    from edge_app.preprocess import PreprocessSpec

    path.write_bytes(b"model bytes of " + path.name.encode())
    doc = {"format": fmt, "model_name": "tiny", "file": path.name, "sha256": sha256_file(path), "labels": CLASSES,
           "preprocess": PreprocessSpec(size=(64, 64)).to_dict(), "embedding_dim": 16, "quantization": {},
           "source_weights_sha256": "a" * 64,
           "parity": {"passed": True, "thresholds": {"top1_agreement": 0.98, "median_cosine": 0.98,
                                                     "neighbour_agreement": 0.95}}}
    doc.update(side)
    (path.parent / (path.name + ".json")).write_text(json.dumps(doc))
    return path


def test_a_bundle_refuses_exports_of_two_checkpoints_and_unchecked_sidecars(tmp_path: Path, image_dirs) -> None:
    """Found by fault injection: a TFLite export of one checkpoint and an ONNX export of another made one desktop
    bundle (retrieval top-1 1.0 with one runtime, 0.125 with the other); a sidecar without the model's sha256,
    or one gated at looser thresholds, was used."""
    from edge_app.signing import SigningKey
    from export.pipeline import SIDECAR_SUFFIX, bundle_from_exports

    assert SIDECAR_SUFFIX == ".json"
    key = SigningKey.generate()
    kw = dict(catalogue_dir=image_dirs["catalogue"], key=key, version=1, kind="desktop")
    a = _fake_export(tmp_path / "m.tflite", "tflite-fp32")
    b = _fake_export(tmp_path / "m.onnx", "onnx-fp32", source_weights_sha256="b" * 64)
    with pytest.raises(UsageError, match="exported from other weights"):
        bundle_from_exports(tmp_path / "bundles", [a, b], **kw)
    old = _fake_export(tmp_path / "old.onnx", "onnx-fp32", sha256=None)
    with pytest.raises(Exception, match="does not record the model file's sha256"):
        bundle_from_exports(tmp_path / "bundles", [old], **kw)
    failed = _fake_export(tmp_path / "failed.onnx", "onnx-fp32", parity={"passed": False})
    with pytest.raises(UsageError, match="does not record a passed parity gate"):
        bundle_from_exports(tmp_path / "bundles", [failed], **kw)
    loose = _fake_export(tmp_path / "loose.onnx", "onnx-fp32", parity={"passed": True, "thresholds": {
        "top1_agreement": 0.0, "median_cosine": -1.0, "neighbour_agreement": 0.95}})
    with pytest.raises(UsageError, match="looser thresholds.*top1_agreement, median_cosine"):
        bundle_from_exports(tmp_path / "bundles", [loose], **kw)
    # the other three thresholds too (an audit: p05 -1 and tie tolerances 2 / 1 forgave every flip)
    loose2 = _fake_export(tmp_path / "loose2.onnx", "onnx-fp32", parity={"passed": True, "thresholds": {
        "top1_agreement": 0.98, "median_cosine": 0.98, "neighbour_agreement": 0.95, "p05_cosine": -1.0,
        "tie_tolerance": 2.0, "logit_tie_tolerance": 1.0}})
    with pytest.raises(UsageError, match="looser thresholds.*p05_cosine, tie_tolerance, logit_tie_tolerance"):
        bundle_from_exports(tmp_path / "bundles", [loose2], **kw)
    assert not (tmp_path / "bundles").exists() or not list((tmp_path / "bundles").iterdir())


def test_the_device_smoke_test_compares_the_probe_with_the_export_machine(tiny_model, image_dirs, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """The smoke test checked shapes and finiteness only: an all-zero or permuted embedding passed."""
    from edge_app.bundle import load_bundle, probe_input
    from edge_app.errors import IntegrityError
    from edge_app.runtime import backends
    from edge_app.signing import Keyring, SigningKey
    from export.pipeline import bundle_from_exports, export_model
    from export.runners import file_runner
    from sync.client import default_smoke_test

    res = export_model(tiny_model, CLASSES, "onnx-fp32", tmp_path / "out", calib_dir=image_dirs["calib"],
                       val_dir=image_dirs["val"], catalogue_dir=image_dirs["catalogue"])
    key = SigningKey.generate()
    bdir = bundle_from_exports(tmp_path / "bundles", [res["path"]], catalogue_dir=image_dirs["catalogue"], key=key,
                               version=1, kind="desktop")
    bundle = load_bundle(bdir, Keyring({key.key_id: key.public_raw}))
    probe = np.asarray(bundle.manifest["probe"]["embedding"])
    ref = file_runner(res["path"])(probe_input(bundle.preprocess))["embedding"][0]
    assert probe.shape == (tiny_model.embed_dim,) and np.allclose(probe, ref / np.linalg.norm(ref), atol=1e-5)
    default_smoke_test(bundle)  # the same interpreter: passes
    real_run = backends.Backend.run
    for broken in (lambda e: np.zeros_like(e), lambda e: e[:, ::-1].copy()):
        def run(self, x, layout="NCHW", _b=broken):
            out = real_run(self, x, layout=layout)
            return {**out, "embedding": _b(out["embedding"])}

        monkeypatch.setattr(backends.Backend, "run", run)
        with pytest.raises(IntegrityError, match="another embedding for the probe image"):
            default_smoke_test(bundle)

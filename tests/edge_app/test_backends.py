"""Backends: ONNX Runtime, TFLite (quantized, NHWC, signatures), Android via a fake jnius."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_app.errors import IntegrityError, UsageError
from edge_app.runtime.backends import create_backend, dequantize, quantize

from . import fake_jnius
from . import synthetic as syn

CORAL = Path(__file__).resolve().parents[3] / "shared" / "weights" / "mobilenet_v2_1.0_224_quant.tflite"


def test_onnx_backend_reads_outputs_by_name(tmp_path):
    path = syn.make_onnx_model(tmp_path / "m.onnx", 5)
    be = create_backend(path)  # .onnx picks onnxruntime
    assert be.name == "onnx" and be.input_layout == "NCHW" and be.input_size == (32, 32)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    out = be.run(x)
    assert out["embedding"].shape == (3, syn.DIM) and out["logits"].shape == (3, 5)
    # NHWC input is transposed by the backend, same answer
    np.testing.assert_allclose(be.run(x.transpose(0, 2, 3, 1), layout="NHWC")["embedding"], out["embedding"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(IntegrityError, match="no output named 'feat'"):
        create_backend(path, outputs={"embedding": {"name": "feat"}})
    with pytest.raises(UsageError):
        create_backend(path, prefer="tflite")  # no silent fallback
    with pytest.raises(UsageError):
        create_backend(path, prefer="gpu")


def test_quantize_round_trip():
    x = np.linspace(-1, 1, 11, dtype=np.float32)
    q = quantize(x, np.dtype(np.int8), 1 / 127, 0)
    assert q.dtype == np.int8 and q.min() == -127 and q.max() == 127
    np.testing.assert_allclose(dequantize(q, 1 / 127, 0), x, atol=1 / 254)
    assert quantize(np.array([10.0]), np.dtype(np.uint8), 0.01, 128)[0] == 255  # clipped


@pytest.mark.slow
def test_tflite_int8_signature_nhwc_matches_onnx(tmp_path):
    """An int8 TFLite model with a signature and NHWC input, same weights as the ONNX model."""
    tf = pytest.importorskip("tensorflow")
    onnx_path = syn.make_onnx_model(tmp_path / "m.onnx", 7)
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    # ONNX flattens pooled NCHW (c, h, w); TF flattens NHWC (h, w, c): reorder rows
    W = w["W"].reshape(3, 8, 8, -1).transpose(1, 2, 0, 3).reshape(192, -1)
    Wt, Wc = tf.constant(W), tf.constant(w["Wc"])

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32, name="image")])
        def serve(self, image):
            e = tf.reshape(tf.nn.avg_pool2d(image, 4, 4, "VALID"), [-1, 192]) @ Wt
            return {"embedding": e, "logits": e @ Wc}

    m = M()
    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.serve.get_concrete_function()], m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, 32, 32, 3)).astype("f4")] for _ in range(30))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(conv.convert())

    be = create_backend(tfl)
    assert be.name == "tflite" and be.input_layout == "NHWC" and be.runner is not None
    assert be.in_dtype == np.int8
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)  # NCHW, batch 3 > 1
    got = be.run(x)
    ref = create_backend(onnx_path).run(x)
    for role in ("embedding", "logits"):
        assert got[role].dtype == np.float32 and got[role].shape == ref[role].shape
    cos = np.sum(got["embedding"] * ref["embedding"], 1) / (
        np.linalg.norm(got["embedding"], axis=1) * np.linalg.norm(ref["embedding"], axis=1))
    assert cos.min() > 0.99, cos
    # LiteRT prints its XNNPACK line once per process at the first allocation: a fresh process shows whether
    # `partlens identify` keeps it off the console (debug log only)
    child = ("import logging, sys, numpy as np; logging.basicConfig(level=int(sys.argv[2]), format='%(message)s');"
             "from edge_app.runtime.backends import create_backend;"
             "create_backend(sys.argv[1]).run(np.zeros((1, 3, 32, 32), np.float32))")
    for level in (logging.WARNING, logging.DEBUG):
        err = subprocess.run([sys.executable, "-c", child, str(tfl), str(level)], capture_output=True, text=True,
                             timeout=120, cwd=Path(__file__).resolve().parents[2]).stderr
        assert ("m.tflite: INFO: Created TensorFlow Lite XNNPACK delegate" in err) == (level == logging.DEBUG), err
        assert err.count("XNNPACK") == (level == logging.DEBUG), err


@pytest.mark.data
def test_tflite_uint8_model_without_signature():
    if not CORAL.is_file():
        pytest.skip(f"{CORAL} not present (shared weights)")
    out_name = "MobilenetV2/Predictions/Softmax"
    be = create_backend(CORAL, outputs={"logits": {"name": out_name}, "embedding": {"name": out_name}})
    assert be.runner is None and be.input_layout == "NHWC" and be.input_size == (224, 224)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    out = be.run(x)
    assert out["logits"].shape == (2, 1001) and out["logits"].dtype == np.float32
    # the same by hand: NHWC, uint8 with the input's scale/zero-point, dequantized output
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(CORAL))
    it.allocate_tensors()
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = d_in["quantization"], d_out["quantization"]
    for i in range(2):
        q = np.clip(np.rint(x[i:i + 1].transpose(0, 2, 3, 1) / s_in) + z_in, 0, 255).astype(np.uint8)
        it.set_tensor(d_in["index"], q)
        it.invoke()
        ref = (it.get_tensor(d_out["index"]).astype(np.float32) - z_out) * s_out
        np.testing.assert_array_equal(out["logits"][i], ref[0])


@pytest.fixture()
def fake_java(monkeypatch):
    monkeypatch.setitem(sys.modules, "jnius", fake_jnius.module())
    fake_jnius.Interpreter.instances.clear()
    fake_jnius.ByteBuffer.allocations.clear()
    fake_jnius.LOADED.clear()
    yield fake_jnius
    fake_jnius.Interpreter.with_signature = True


def test_android_backend_opens_on_a_worker_thread_only_after_the_main_thread_preloaded(fake_java, tmp_path,
                                                                                      monkeypatch):
    """The app opens the model on its worker thread, whose JVM class loader cannot see LiteRT's classes."""
    import threading

    from edge_app.runtime import android_backend
    from edge_app.runtime.android_backend import preload_java_classes
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 fake")
    seen: list = []

    def open_model() -> None:
        try:
            seen.append(create_backend(model, prefer="android"))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            seen.append(exc)

    def open_on_worker():
        seen.clear()
        t = threading.Thread(target=open_model)
        t.start()
        t.join()
        return seen[0]

    assert "ClassNotFoundException" in str(open_on_worker())
    # the 20th session's list: setNumThreads's return type (InterpreterApi$Options, a bridge method) was missing
    old = ("org.tensorflow.lite.Interpreter", "org.tensorflow.lite.Interpreter$Options", "org.tensorflow.lite.Tensor",
           "org.tensorflow.lite.Tensor$QuantizationParams", "org.tensorflow.lite.DataType")
    real = android_backend.APP_CLASSES
    monkeypatch.setattr(android_backend, "APP_CLASSES", old)
    preload_java_classes()
    assert "ClassNotFoundException: org.tensorflow.lite.InterpreterApi$Options" in str(open_on_worker())
    monkeypatch.setattr(android_backend, "APP_CLASSES", real)
    fake_java.LOADED.clear()
    preload_java_classes()  # what device_main does on the main thread
    backend = open_on_worker()
    assert backend.name == "android", backend
    # the worker thread then runs it (each tensor and data type pyjnius wraps was looked up at start)
    seen.clear()
    t = threading.Thread(target=lambda: seen.append(backend.run(np.zeros((1, 3, 8, 8), np.float32))))
    t.start()
    t.join()
    assert set(seen[0]) == {"embedding", "logits"}
    backend.close()
    backend.close()  # once only: the fake refuses a second Interpreter.close()
    assert fake_java.Interpreter.instances[-1].closed


@pytest.mark.parametrize("with_signature", [True, False])
def test_android_backend_drives_java_interpreter(fake_java, tmp_path, with_signature):
    fake_java.Interpreter.with_signature = with_signature
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 fake")
    be = create_backend(model, prefer="android")
    assert be.name == "android" and be.input_layout == "NHWC" and be.input_size == (8, 8)
    assert fake_java.Interpreter.instances[0].options.threads == 2
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    out = be.run(x)
    assert fake_java.Interpreter.instances[0].runs == 2  # batch 2 on a batch-1 model: two runs
    # expected: quantize the NHWC input like the Java side sees it, run the reference, dequantize
    q = quantize(x.transpose(0, 2, 3, 1), np.dtype(np.int8), fake_java.IN_SCALE, fake_java.IN_ZP)
    emb, logits = fake_java.reference((q.astype(np.float32) - fake_java.IN_ZP) * fake_java.IN_SCALE)
    np.testing.assert_allclose(out["embedding"], emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], logits, atol=fake_java.LOGIT_SCALE / 2 + 1e-6)
    assert all(b.direct and b.byte_order == fake_java.NATIVE for b in fake_java.ByteBuffer.allocations)


def test_android_backend_refuses_missing_output_name(fake_java, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 fake")
    with pytest.raises(IntegrityError, match="no output named"):
        create_backend(model, prefer="android", outputs={"embedding": {"name": "feature"}})


def test_android_backend_without_jnius_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jnius", None)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 fake")
    with pytest.raises(UsageError, match="pyjnius"):
        create_backend(model, prefer="android")


def test_runtime_imports_no_heavy_frameworks():
    import subprocess

    code = ("import sys, edge_app.runtime.identify, edge_app.runtime.backends, edge_app.runtime.android_backend, "
            "edge_app.commands; bad=[m for m in ('torch','tensorflow','kivy','onnxruntime','ai_edge_litert','jnius') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stdout + r.stderr

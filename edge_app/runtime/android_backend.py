"""The Android backend: the Java LiteRT/TFLite ``org.tensorflow.lite.Interpreter`` through pyjnius.

The Java interpreter reads and writes *direct, native-order* ``java.nio.ByteBuffer`` s of exactly
the tensor's byte size; a heap buffer or a big-endian one gives garbage or an exception. Inputs
are quantized here when the model's input is int8/uint8; outputs are read by NAME
(``runSignature`` with an outputs map keyed by signature output name, or, without signatures,
``runForMultipleInputsOutputs`` with the output index found by tensor name) and dequantized.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import IntegrityError, UsageError
from .backends import DEFAULT_THREADS, ROLES, Backend, dequantize, layout_from_shape, quantize

log = logging.getLogger(__name__)

_DTYPES = {"FLOAT32": np.dtype("<f4"), "INT8": np.dtype("i1"), "UINT8": np.dtype("u1"), "INT32": np.dtype("<i4")}


#: The app's own Java classes the backend uses, directly or as the types of returned objects. On Android a
#: Python thread attached to the JVM (the app's worker thread) looks classes up with the SYSTEM class loader,
#: which does not know the app's gradle dependencies ("FAQ: Why didn't FindClass find my class?", Android's
#: JNI tips; python-for-android issue 2242): they must be looked up once on the main thread, where pyjnius
#: caches them, before a worker thread opens a model (:func:`preload_java_classes`).
#: ``InterpreterApi$Options`` is the return type of ``Interpreter.Options.setNumThreads`` as pyjnius sees it: the
#: Java compiler adds a bridge method returning the interface's type (``Interpreter.Options`` narrows the return
#: type of ``InterpreterApi.Options.setNumThreads``), pyjnius lists bridge methods (``getDeclaredMethods``) and picks
#: the longer signature on a tie, then looks that class up for the returned object (found by an audit, 21st
#: session; without it, opening the model on the worker thread raised ClassNotFoundException on every Identify).
APP_CLASSES = ("org.tensorflow.lite.Interpreter", "org.tensorflow.lite.Interpreter$Options",
               "org.tensorflow.lite.InterpreterApi", "org.tensorflow.lite.InterpreterApi$Options",
               "org.tensorflow.lite.InterpreterImpl$Options",
               "org.tensorflow.lite.Tensor", "org.tensorflow.lite.Tensor$QuantizationParams",
               "org.tensorflow.lite.DataType")


def preload_java_classes() -> None:
    """Look up :data:`APP_CLASSES` now; call it on the app's main thread at start (Android only)."""
    jnius = _jnius()
    for name in APP_CLASSES:
        jnius.autoclass(name)


def _jnius() -> Any:
    try:
        import jnius
    except ImportError as exc:
        raise UsageError(f"the android backend needs pyjnius and a JVM (Android) ({exc})") from None
    return jnius


class _Tensor:
    """What we need from an ``org.tensorflow.lite.Tensor``."""

    def __init__(self, t: Any, what: str) -> None:
        self.name = str(t.name())
        dt = str(t.dataType().name())
        if dt not in _DTYPES:
            raise IntegrityError(f"{what}: unsupported tensor type {dt} for {self.name}")
        self.dtype = _DTYPES[dt].newbyteorder("=") if _DTYPES[dt].itemsize > 1 else _DTYPES[dt]
        self.shape = [int(x) for x in t.shape()]
        self.num_bytes = int(t.numBytes())
        q = t.quantizationParams()
        self.scale = float(q.getScale())
        self.zero_point = int(q.getZeroPoint())


class AndroidBackend(Backend):
    """``org.tensorflow.lite.Interpreter`` via pyjnius; batch size is the model's (usually 1)."""

    name = "android"

    def __init__(self, model_path: Path, outputs: Mapping[str, Any] | None = None, *,
                 num_threads: int = DEFAULT_THREADS) -> None:
        super().__init__(model_path, outputs)
        jnius = _jnius()
        Interpreter = jnius.autoclass("org.tensorflow.lite.Interpreter")
        Options = jnius.autoclass("org.tensorflow.lite.Interpreter$Options")
        File = jnius.autoclass("java.io.File")
        self._ByteBuffer = jnius.autoclass("java.nio.ByteBuffer")
        self._ByteOrder = jnius.autoclass("java.nio.ByteOrder")
        self._HashMap = jnius.autoclass("java.util.HashMap")
        self._Integer = jnius.autoclass("java.lang.Integer")
        opts = Options()
        opts.setNumThreads(int(num_threads))
        try:
            self.interp = Interpreter(File(str(self.model_path)), opts)
        except Exception as exc:  # a JavaException
            raise IntegrityError(f"{self.model_path}: the Java interpreter refused the model ({exc})") from None
        what = str(self.model_path)
        keys = [str(k) for k in (self.interp.getSignatureKeys() or [])]
        self.signature = ("serving_default" if "serving_default" in keys else sorted(keys)[0]) if keys else None
        if self.signature is not None:
            in_names = [str(n) for n in self.interp.getSignatureInputs(self.signature)]
            if len(in_names) != 1:
                raise IntegrityError(f"{what}: signature {self.signature!r} has {len(in_names)} inputs, expected 1")
            self.input_name = in_names[0]
            self.input = _Tensor(self.interp.getInputTensorFromSignature(self.input_name, self.signature), what)
            out_names = [str(n) for n in self.interp.getSignatureOutputs(self.signature)]
            self._pick(out_names)
            self.outputs = {r: _Tensor(self.interp.getOutputTensorFromSignature(n, self.signature), what)
                            for r, n in self.output_names.items()}
            self.output_index: dict[str, int] = {}
        else:
            if int(self.interp.getInputTensorCount()) != 1:
                raise IntegrityError(f"{what}: {self.interp.getInputTensorCount()} inputs, expected 1")
            self.input = _Tensor(self.interp.getInputTensor(0), what)
            by_name = {}
            for i in range(int(self.interp.getOutputTensorCount())):
                t = _Tensor(self.interp.getOutputTensor(i), what)
                by_name[t.name] = (i, t)
            self._pick(list(by_name))
            self.outputs = {r: by_name[n][1] for r, n in self.output_names.items()}
            self.output_index = {r: by_name[n][0] for r, n in self.output_names.items()}
        self.input_layout = layout_from_shape(self.input.shape, what)
        s = self.input.shape
        self.input_size = (s[2], s[3]) if self.input_layout == "NCHW" else (s[1], s[2])
        self.batch = s[0]

    def _direct(self, nbytes: int) -> Any:
        return self._ByteBuffer.allocateDirect(int(nbytes)).order(self._ByteOrder.nativeOrder())

    def _input_buffer(self, x: np.ndarray) -> Any:
        t = self.input
        if t.dtype.kind in "iu":
            x = quantize(x, t.dtype, t.scale, t.zero_point)
        else:
            x = x.astype(t.dtype, copy=False)
        data = np.ascontiguousarray(x).tobytes()
        if len(data) != t.num_bytes:
            raise IntegrityError(f"{self.model_path.name}: input is {len(data)} bytes, tensor needs {t.num_bytes}")
        buf = self._direct(t.num_bytes)
        buf.put(data)
        buf.rewind()
        return buf

    def _read(self, role: str, buf: Any) -> np.ndarray:
        t = self.outputs[role]
        buf.rewind()
        raw = bytearray(t.num_bytes)
        buf.get(raw)  # pyjnius copies the Java byte[] back into the bytearray
        arr = np.frombuffer(bytes(raw), dtype=t.dtype).reshape(t.shape)
        if t.dtype.kind in "iu":
            if not t.scale:
                raise IntegrityError(f"{self.model_path.name}: integer output {role} without quantization")
            return dequantize(arr, t.scale, t.zero_point)
        return arr.astype(np.float32)

    def _invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        inp = self._input_buffer(x)
        bufs = {r: self._direct(t.num_bytes) for r, t in self.outputs.items()}
        if self.signature is not None:
            inputs = self._HashMap()
            inputs.put(self.input_name, inp)
            outputs = self._HashMap()
            for r, n in self.output_names.items():
                outputs.put(n, bufs[r])
            self.interp.runSignature(inputs, outputs, self.signature)
        else:
            outputs = self._HashMap()
            for r, i in self.output_index.items():
                outputs.put(self._Integer(i), bufs[r])
            self.interp.runForMultipleInputsOutputs([inp], outputs)
        return {r: self._read(r, bufs[r]) for r in ROLES}

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if len(batch) == self.batch:
            return self._invoke(batch)
        if self.batch != 1:
            raise IntegrityError(f"{self.model_path.name}: model takes batches of {self.batch}")
        parts = [self._invoke(batch[i:i + 1]) for i in range(len(batch))]
        return {r: np.concatenate([p[r] for p in parts]) for r in ROLES}

    def close(self) -> None:
        """``Interpreter.close()``: its instances "own resources that must be explicitly freed" (the javadoc);
        once only (a second run would meet a closed interpreter)."""
        interp, self.interp = getattr(self, "interp", None), None
        if interp is not None:
            interp.close()

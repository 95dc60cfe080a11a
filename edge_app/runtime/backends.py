"""Inference backends behind one interface.

``Backend.run(batch)`` takes float32 NCHW (the layout of :func:`edge_app.preprocess.preprocess_image`
unless told otherwise) and returns ``{"logits": (B,C), "embedding": (B,D)}`` as float32, the outputs
read by NAME (``outputs[role]["name"]`` in the bundle manifest, default the role name itself).
Layout (NHWC vs NCHW), quantized inputs/outputs (scale/zero-point) and fixed batch size are the
backend's business.

- ``tflite``: ``ai_edge_litert.interpreter`` (signature runner when the model has one), 2 threads;
- ``onnx``: ``onnxruntime`` (desktops and tests);
- ``android``: the Java LiteRT/TFLite interpreter via pyjnius (:mod:`.android_backend`).

Nothing heavy is imported until a backend is created.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError, IntegrityError, UsageError
from ..nativelog import native_stderr_logged

log = logging.getLogger(__name__)

ROLES = ("logits", "embedding")
BACKENDS = ("tflite", "onnx", "android")
DEFAULT_THREADS = 2


def output_names(outputs: Mapping[str, Any] | None) -> dict[str, str]:
    """role -> tensor name from a manifest ``outputs`` section (default: the role name)."""
    names = {}
    for role in ROLES:
        spec = (outputs or {}).get(role, {})
        names[role] = str(spec.get("name", role)) if isinstance(spec, Mapping) else str(spec or role)
    return names


def layout_from_shape(shape: Sequence[int], what: str) -> str:
    """NCHW or NHWC from a 4-d image input shape (channels 1 or 3)."""
    if len(shape) != 4:
        raise IntegrityError(f"{what}: expected a 4-d image input, got shape {list(shape)}")
    if shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise IntegrityError(f"{what}: cannot tell the layout of input shape {list(shape)}")


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """float -> integer tensor with the tensor's scale/zero-point (round half to even, clipped)."""
    info = np.iinfo(dtype)
    q = np.rint(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class Backend:
    """Runs a model on a float32 batch; outputs by name."""

    name = "base"
    #: the layout the model itself takes ("NCHW" or "NHWC")
    input_layout = "NCHW"
    #: (H, W) the model takes
    input_size: tuple[int, int] = (0, 0)

    def __init__(self, model_path: Path, outputs: Mapping[str, Any] | None = None) -> None:
        self.model_path = Path(model_path)
        self.output_names = output_names(outputs)

    def run(self, batch: np.ndarray, layout: str = "NCHW") -> dict[str, np.ndarray]:
        """``batch`` float32 (B,C,H,W) (or (B,H,W,C) with ``layout='NHWC'``) -> {"logits", "embedding"}."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise InputError(f"{self.model_path.name}: batch must be 4-d, got shape {batch.shape}")
        if layout not in ("NCHW", "NHWC"):
            raise UsageError(f"layout must be NCHW or NHWC, got {layout!r}")
        if layout != self.input_layout:
            batch = batch.transpose(0, 2, 3, 1) if layout == "NCHW" else batch.transpose(0, 3, 1, 2)
        hw = batch.shape[2:4] if self.input_layout == "NCHW" else batch.shape[1:3]
        if tuple(hw) != tuple(self.input_size):
            raise InputError(f"{self.model_path.name}: model takes {self.input_size[0]}x{self.input_size[1]} "
                             f"images, got {hw[0]}x{hw[1]}")
        out = self._run(np.ascontiguousarray(batch))
        return {role: np.asarray(out[role], dtype=np.float32) for role in ROLES}

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pick(self, available: Sequence[str]) -> None:
        missing = {r: n for r, n in self.output_names.items() if n not in available}
        if missing:
            raise IntegrityError(f"{self.model_path.name}: model has no output named "
                                 f"{', '.join(f'{n!r} ({r})' for r, n in missing.items())}; "
                                 f"its outputs are {sorted(available)}")

    def close(self) -> None:
        """Free what the model holds outside Python's reach (the Android backend's Java interpreter)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_path.name, "input_layout": self.input_layout,
                "input_size": list(self.input_size)}


class TFLiteBackend(Backend):
    """``ai_edge_litert`` interpreter; signature runner when present, else tensors by name."""

    name = "tflite"

    def __init__(self, model_path: Path, outputs: Mapping[str, Any] | None = None, *,
                 num_threads: int = DEFAULT_THREADS) -> None:
        super().__init__(model_path, outputs)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise UsageError(f"the tflite backend needs ai_edge_litert ({exc})") from None
        try:
            self.interp = Interpreter(model_path=str(self.model_path), num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise IntegrityError(f"{self.model_path}: not a loadable TFLite model ({exc})") from None
        sigs = self.interp.get_signature_list()
        self.runner = None
        if sigs:
            key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
            self.runner = self.interp.get_signature_runner(key)
            ins = self.runner.get_input_details()
            if len(ins) != 1:
                raise IntegrityError(f"{self.model_path}: signature {key!r} has {len(ins)} inputs, expected 1")
            self.input_name, self.in_detail = next(iter(ins.items()))
            out_details = self.runner.get_output_details()
            self._pick(list(out_details))
            self.out_details = {r: out_details[n] for r, n in self.output_names.items()}
        else:
            self.interp.allocate_tensors()
            ins = self.interp.get_input_details()
            if len(ins) != 1:
                raise IntegrityError(f"{self.model_path}: {len(ins)} inputs, expected 1")
            self.in_detail = ins[0]
            by_name = {d["name"]: d for d in self.interp.get_output_details()}
            self._pick(list(by_name))
            self.out_details = {r: by_name[n] for r, n in self.output_names.items()}
        shape = [int(x) for x in self.in_detail["shape"]]
        self.input_layout = layout_from_shape(shape, str(self.model_path))
        self.input_size = (shape[2], shape[3]) if self.input_layout == "NCHW" else (shape[1], shape[2])
        sig = self.in_detail.get("shape_signature", self.in_detail["shape"])
        self.dynamic_batch = int(sig[0]) == -1
        self.fixed_batch = None if self.dynamic_batch else int(shape[0])
        self.in_dtype = np.dtype(self.in_detail["dtype"])
        self.in_quant = tuple(self.in_detail.get("quantization", (0.0, 0)))
        if self.in_dtype.kind in "iu" and not self.in_quant[0]:
            raise IntegrityError(f"{self.model_path}: integer input without quantization parameters")
        self._batch_allocated: int | None = None
        self._ran = False

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.in_dtype.kind in "iu":
            return quantize(x, self.in_dtype, float(self.in_quant[0]), int(self.in_quant[1]))
        return x.astype(self.in_dtype, copy=False)

    def _out(self, role: str, value: np.ndarray) -> np.ndarray:
        d = self.out_details[role]
        value = np.asarray(value)
        if value.dtype.kind in "iu":
            scale, zp = d.get("quantization", (0.0, 0))
            if not scale:
                raise IntegrityError(f"{self.model_path}: integer output {role} without quantization parameters")
            return dequantize(value, float(scale), int(zp))
        return value.astype(np.float32)

    def _invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if not self._ran:  # the first run allocates and LiteRT prints its XNNPACK line: to the log, not the console
            with native_stderr_logged(log, self.model_path.name):
                out = self._invoke_once(x)
            self._ran = True
            return out
        return self._invoke_once(x)

    def _invoke_once(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = self._prepare(x)
        if self.runner is not None:
            res = self.runner(**{self.input_name: x})
            return {r: self._out(r, res[n]) for r, n in self.output_names.items()}
        if self.dynamic_batch and self._batch_allocated != len(x):
            self.interp.resize_tensor_input(self.in_detail["index"], list(x.shape))
            self.interp.allocate_tensors()
            self._batch_allocated = len(x)
        self.interp.set_tensor(self.in_detail["index"], x)
        self.interp.invoke()
        return {r: self._out(r, self.interp.get_tensor(self.out_details[r]["index"]).copy())
                for r in self.output_names}

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.fixed_batch is not None and len(batch) != self.fixed_batch:
            if self.fixed_batch != 1:
                raise InputError(f"{self.model_path.name}: model takes batches of {self.fixed_batch}")
            parts = [self._invoke(batch[i:i + 1]) for i in range(len(batch))]
            return {r: np.concatenate([p[r] for p in parts]) for r in ROLES}
        return self._invoke(batch)


class OnnxBackend(Backend):
    """ONNX Runtime (CPU), 2 intra-op threads."""

    name = "onnx"

    def __init__(self, model_path: Path, outputs: Mapping[str, Any] | None = None, *,
                 num_threads: int = DEFAULT_THREADS) -> None:
        super().__init__(model_path, outputs)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UsageError(f"the onnx backend needs onnxruntime ({exc})") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise IntegrityError(f"{self.model_path}: not a loadable ONNX model ({exc})") from None
        ins = self.session.get_inputs()
        if len(ins) != 1:
            raise IntegrityError(f"{self.model_path}: {len(ins)} inputs, expected 1")
        self.input_name = ins[0].name
        shape = [d if isinstance(d, int) else -1 for d in ins[0].shape]
        self.input_layout = layout_from_shape(shape, str(self.model_path))
        self.input_size = (shape[2], shape[3]) if self.input_layout == "NCHW" else (shape[1], shape[2])
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self._pick([o.name for o in self.session.get_outputs()])
        self._fetch = [self.output_names[r] for r in ROLES]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.fixed_batch == 1 and len(batch) != 1:
            parts = [self._run(batch[i:i + 1]) for i in range(len(batch))]
            return {r: np.concatenate([p[r] for p in parts]) for r in ROLES}
        res = self.session.run(self._fetch, {self.input_name: batch})
        return dict(zip(ROLES, res))


def _kind_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    raise UsageError(f"{path}: unknown model type {suffix!r} (expected .tflite or .onnx)")


def default_backend() -> str:
    """``$PARTLENS_BACKEND`` if set, ``android`` on Android, else ``tflite``."""
    env = os.environ.get("PARTLENS_BACKEND")
    if env:
        return env
    return "android" if "ANDROID_ARGUMENT" in os.environ or "ANDROID_PRIVATE" in os.environ else "tflite"


def create_backend(model: Any, prefer: str | None = None, *, outputs: Mapping[str, Any] | None = None,
                   num_threads: int = DEFAULT_THREADS) -> Backend:
    """A backend for a model file or a verified :class:`~edge_app.bundle.Bundle`.

    ``prefer``: ``tflite`` (default), ``onnx`` or ``android``; ``None`` picks automatically (the
    bundle's TFLite model with ai_edge_litert, the Java interpreter on Android, ONNX Runtime for an
    ``.onnx`` file or a bundle that only has ONNX). Asking for a backend the model or machine
    cannot provide is an error, never silently replaced.
    """
    if prefer is not None and prefer not in BACKENDS:
        raise UsageError(f"backend must be one of {BACKENDS}, got {prefer!r}")
    if hasattr(model, "model_path") and hasattr(model, "manifest"):  # a Bundle
        outputs = outputs if outputs is not None else model.manifest.get("outputs")
        kinds = list(model.model_kinds)
        choice = prefer or default_backend()
        if choice == "onnx":
            path = model.model_path("onnx")
        elif "tflite" in kinds:
            path = model.model_path("tflite")
        elif prefer is None:
            choice, path = "onnx", model.model_path("onnx")
        else:
            path = model.model_path("tflite")  # raises: this bundle has no tflite model
    else:
        path = Path(model)
        if not path.is_file():
            raise InputError(f"{path}: no such model file")
        kind = _kind_for(path)
        choice = prefer or (kind if kind == "onnx" else default_backend())
        if choice in ("tflite", "android") and kind != "tflite":
            raise UsageError(f"{path}: the {choice} backend needs a .tflite model")
        if choice == "onnx" and kind != "onnx":
            raise UsageError(f"{path}: the onnx backend needs a .onnx model")
    log.debug("backend %s for %s", choice, path)
    if choice == "tflite":
        return TFLiteBackend(path, outputs, num_threads=num_threads)
    if choice == "onnx":
        return OnnxBackend(path, outputs, num_threads=num_threads)
    from .android_backend import AndroidBackend

    return AndroidBackend(path, outputs, num_threads=num_threads)

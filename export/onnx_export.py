"""ONNX export: float32 via ``torch.onnx.export``; int8 via onnxruntime static QDQ quantisation.

Inputs ``input`` (float32 NCHW, dynamic batch), outputs ``logits`` and ``embedding``
(float32, embedding before L2 normalisation).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.atomic import atomic_copy
from edge_app.errors import UsageError

from .wrapper import export_module, sample_input

log = logging.getLogger(__name__)

INPUT_NAME = "input"


def export_onnx_fp32(model: Any, out: str | os.PathLike[str], *, opset: int = 18) -> Path:
    """Export ``model`` (a PartModel, eval mode) to a float32 ONNX file."""
    import onnx
    import torch

    spec = model.preprocess
    wrapped = export_module(model, as_dict=False)
    x = sample_input(spec, batch=2)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(wrapped, (x,), str(tmp), input_names=[INPUT_NAME],
                              output_names=["logits", "embedding"], opset_version=opset,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), dynamo=True,
                              external_data=False, verbose=False)
        m = onnx.load(str(tmp))
        onnx.checker.check_model(m)
        names = [o.name for o in m.graph.output]
        if sorted(names) != ["embedding", "logits"]:
            raise UsageError(f"ONNX export produced outputs {names}, expected logits and embedding")
        return atomic_copy(tmp, out)


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed real images (one image per call)."""

    def __init__(self, arrays: np.ndarray) -> None:
        self._arrays = arrays
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._arrays):
            return None
        x = self._arrays[self._i:self._i + 1]
        self._i += 1
        return {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self._i = 0


def quantize_onnx_int8(fp32_path: str | os.PathLike[str], out: str | os.PathLike[str], calib: np.ndarray, *,
                       per_channel: bool = True, calib_method: str = "minmax") -> Path:
    """Static int8 QDQ quantisation (activations and weights int8) calibrated on ``calib`` arrays."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calib_method]
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calib)
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        q = Path(td) / "int8.onnx"
        quantize_static(str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return atomic_copy(q, out)

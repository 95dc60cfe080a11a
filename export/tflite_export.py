"""TFLite export with litert-torch: float32, or static int8 through PT2E calibration.

The int8 model is quantised throughout (weights per channel, activations per tensor) and then
given a float32 interface (:mod:`export.tflite_io`) so the device feeds the normalised float
image and reads float ``logits`` and ``embedding`` by signature output name.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.atomic import atomic_write_bytes
from edge_app.errors import IntegrityError

from .tflite_io import float_interface
from .wrapper import export_module, sample_input

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


def _convert_bytes(module: Any, args: tuple, quant_config: Any = None) -> bytes:
    import litert_torch

    edge = litert_torch.convert(module, args, quant_config=quant_config)
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "m.tflite"
        edge.export(str(p))
        return p.read_bytes()


def convert_fp32(model: Any) -> bytes:
    """Float32 TFLite bytes of ``model`` (batch 1)."""
    return _convert_bytes(export_module(model, as_dict=True), (sample_input(model.preprocess),))


def convert_int8(model: Any, calib: np.ndarray, *, per_channel: bool = True) -> bytes:
    """Static int8 TFLite bytes: PT2E observers calibrated on ``calib`` (N,C,H,W) real images."""
    import torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    wrapped = export_module(model, as_dict=True)
    args = (sample_input(model.preprocess),)
    graph = torch.export.export(wrapped, args).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):  # the exported graph has a fixed batch of 1
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + 1], dtype=np.float32)))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    raw = _convert_bytes(converted, args, quant_config.QuantConfig(pt2e_quantizer=quantizer))
    data, changed = float_interface(raw)
    log.info("int8 TFLite: %d calibration images, float interface for %s", len(calib), changed or "nothing")
    return data


def convert_int8_aiq(model: Any, calib: np.ndarray) -> bytes:
    """Candidate (not in the formats table): ai-edge-quantizer static int8 (a8w8) on the float TFLite.

    Kept for the export benchmark, which decides whether it earns a place in
    :data:`export.formats.FORMATS` (it must measure better than the PT2E path).
    """
    from ai_edge_quantizer import quantizer, recipe

    fp32 = convert_fp32(model)
    qt = quantizer.Quantizer(bytearray(fp32), recipe.static_wi8_ai8())
    from ai_edge_litert.interpreter import Interpreter

    in_name = Interpreter(model_content=fp32).get_signature_list()[SIGNATURE]["inputs"][0]
    result = qt.calibrate({SIGNATURE: [{in_name: calib[i:i + 1]} for i in range(len(calib))]}, num_threads=1)
    data, _ = float_interface(bytes(qt.quantize(result).quantized_model))
    return data


def check_signature(data: bytes, what: str) -> dict[str, Any]:
    """Check a TFLite model has one signature with one float32 input and float32 logits/embedding."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    sigs = interp.get_signature_list()
    if list(sigs) != [SIGNATURE]:
        raise IntegrityError(f"{what}: expected the signature {SIGNATURE!r}, found {list(sigs)}")
    runner = interp.get_signature_runner(SIGNATURE)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    if sorted(outs) != ["embedding", "logits"]:
        raise IntegrityError(f"{what}: outputs {sorted(outs)}, expected embedding and logits")
    bad = [n for n, d in {**ins, **outs}.items() if d["dtype"] != np.float32]
    if bad or len(ins) != 1:
        raise IntegrityError(f"{what}: needs one float32 input and float32 outputs (not float: {bad})")
    (in_name, in_d), = ins.items()
    return {"signature": SIGNATURE, "input": {"name": in_name, "shape": [int(s) for s in in_d["shape"]]},
            "outputs": {n: {"shape": [int(s) for s in d["shape"]]} for n, d in outs.items()}}


def write_tflite(data: bytes, out: str | os.PathLike[str]) -> Path:
    return atomic_write_bytes(out, data)

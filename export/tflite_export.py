"""TFLite export with litert-torch: float32, or static int8 through PT2E calibration.

The int8 model is quantised throughout (weights per channel, activations per tensor) and then
given a float32 interface (:mod:`export.tflite_io`) so the device feeds the normalised float
image and reads float ``logits`` and ``embedding`` by signature output name.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_app.atomic import atomic_write_bytes
from edge_app.errors import IntegrityError, UsageError

from .int8_weights import tune_int8_weights
from .tflite_io import float_interface
from .wrapper import export_module, sample_input

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


@contextlib.contextmanager
def _to_debug_log(what: str) -> Iterator[None]:
    """Route a library's prints, progress bars and Python warnings to this module's debug log (the
    ai-edge-quantizer prints model sizes to stdout and draws progress bars on the console)."""
    out = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            warnings.simplefilter("always")
            yield
    finally:
        for w in caught:
            log.debug("%s: %s: %s", what, w.category.__name__, w.message)
        text = out.getvalue().replace("\r", "\n").strip()
        if text:
            log.debug("%s printed:\n%s", what, text)


def _convert_bytes(module: Any, args: tuple, quant_config: Any = None) -> bytes:
    import litert_torch

    if "LITERT_TORCH_SHOW_PROGRESS" not in os.environ:  # its progress lines go to the console
        litert_torch.config.show_progress = log.isEnabledFor(logging.DEBUG)

    edge = litert_torch.convert(module, args, quant_config=quant_config)
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "m.tflite"
        edge.export(str(p))
        return p.read_bytes()


def convert_fp32(model: Any) -> bytes:
    """Float32 TFLite bytes of ``model`` (batch 1)."""
    return _convert_bytes(export_module(model, as_dict=True), (sample_input(model.preprocess),))


def _fixed_quantizer(base: Any, *, relu6_fix: bool = True, requant_fix: bool = True) -> Any:
    """``base`` (litert-torch's PT2E quantizer) with two annotation fixes for what TFLite computes.

    ``relu6_fix``: litert-torch's quantizer fuses conv+ReLU but not conv+ReLU6 (hardtanh): the
    hardtanh then shares the observer of the *pre-clamp* conv output, whose range can be several
    times wider than [0, 6], wasting most of the 256 int8 levels (MobileNetV2 and EfficientNet-Lite
    are all ReLU6). Such conv outputs get the fixed range [0, 6] (scale 6/255, zero point -128),
    exactly what TFLite's fused RELU6 activation computes.

    ``requant_fix``: a ``linear`` whose input is already quantised by its producer (the pooled
    features after ``flatten``) reads it at the producer's scale instead of requantising it. The
    converter folds such a quantize -> quantize chain in front of FULLY_CONNECTED into ONE int8
    tensor at the first scale but keeps the bias quantised for the second one, so the int8 model
    adds a wrongly scaled bias: on a fine-tuned EfficientNet-Lite0 the embedding's median cosine
    to PyTorch fell from 0.999 (the fake-quantised graph, and the same int8 tensors multiplied out
    in float) to 0.978. The global pool keeps its own output observer, so the pooled features
    (mostly far below 6) are not stuck with the clamp's [0, 6] grid.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, SharedQuantizationSpec

    fixed = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=6.0 / 255.0, zero_point=-128, quant_min=-128,
                                         quant_max=127, qscheme=torch.per_tensor_affine)
    hardtanh = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    linear = (torch.ops.aten.linear.default,)
    pools = (torch.ops.aten.adaptive_avg_pool2d.default, torch.ops.aten.mean.dim)

    def annotation(node: Any) -> Any:
        return node.meta.get("quantization_annotation") if isinstance(node, torch.fx.Node) else None

    class FixedQuantizer(type(base)):
        def annotate(self, model):  # noqa: ANN001, ANN201
            model = super().annotate(model)
            for n in model.graph.nodes:
                if n.op != "call_function":
                    continue
                if relu6_fix and n.target in hardtanh:
                    lo, hi = (list(n.args[1:3]) + [-1.0, 1.0])[:2]
                    prev = n.args[0]
                    ann = annotation(prev)
                    if (lo, hi) == (0.0, 6.0) and ann is not None and ann.output_qspec is not None \
                            and len(prev.users) == 1:
                        ann.output_qspec = fixed
                        for user in n.users:  # consumers read the clamped tensor with the same qparams
                            uann = annotation(user)
                            if uann is not None and n in uann.input_qspec_map:
                                uann.input_qspec_map[n] = SharedQuantizationSpec(n)
                if requant_fix and n.target in pools:
                    ann = annotation(n)
                    if ann is not None and isinstance(ann.output_qspec, SharedQuantizationSpec):
                        ann.output_qspec = self.global_config.output_activation
                if requant_fix and n.target in linear:
                    ann, src = annotation(n), n.args[0]
                    src_ann = annotation(src)
                    if ann is not None and src in ann.input_qspec_map and src_ann is not None \
                            and src_ann.output_qspec is not None:
                        ann.input_qspec_map[src] = SharedQuantizationSpec(src)
            return model

    q = FixedQuantizer()
    q.global_config = base.global_config
    return q


def quantize_int8_graph(model: Any, calib: np.ndarray, *, per_channel: bool = True, relu6_fix: bool = True,
                        weight_tuning: bool = True, requant_fix: bool = True) -> tuple[Any, Any]:
    """PT2E fake-quantised graph of the export module (batch 1) and its quantizer.

    The graph computes in float what the int8 TFLite model computes in integers, so its outputs
    (``graph(x)``) are a fast way to inspect int8 error before conversion.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    if weight_tuning and not per_channel:
        raise UsageError("int8 weight tuning needs per-channel weights (per_channel=True)")
    # the exported graph shares its tensors with the module it was traced from, and weight tuning rewrites
    # them in place: trace a copy, so the caller's model (the parity gate's reference, the source-weights
    # fingerprint, a later fp32/ONNX export of the same model) stays the checkpoint's
    model = copy.deepcopy(model)
    wrapped = export_module(model, as_dict=True)
    graph = torch.export.export(wrapped, (sample_input(model.preprocess),)).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
    if relu6_fix or requant_fix:
        quantizer = _fixed_quantizer(quantizer, relu6_fix=relu6_fix, requant_fix=requant_fix)
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):  # the exported graph has a fixed batch of 1
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + 1], dtype=np.float32)))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    # The graph was traced from the eval-mode wrapper (BatchNorm folded, no dropout), but the GraphModule
    # torch.export hands back says training=True, and litert-torch then warns users to call .eval() (which
    # exported modules refuse). The flag is all that is wrong; clear it.
    for m in converted.modules():
        m.training = False
    if weight_tuning:
        tune_int8_weights(converted, calib)
    return converted, quantizer


def convert_int8(model: Any, calib: np.ndarray, *, per_channel: bool = True, relu6_fix: bool = True,
                 weight_tuning: bool = True, requant_fix: bool = True) -> bytes:
    """Static int8 TFLite bytes: PT2E observers calibrated on ``calib`` (N,C,H,W) real images.

    ``weight_tuning``: re-round per-channel int8 weights against the calibration activations and
    correct the biases (:mod:`export.int8_weights`); needs ``per_channel``.
    """
    from litert_torch.quantize import quant_config

    converted, quantizer = quantize_int8_graph(model, calib, per_channel=per_channel, relu6_fix=relu6_fix,
                                               weight_tuning=weight_tuning, requant_fix=requant_fix)
    raw = _convert_bytes(converted, (sample_input(model.preprocess),),
                         quant_config.QuantConfig(pt2e_quantizer=quantizer))
    data, changed = float_interface(raw)
    log.info("int8 TFLite: %d calibration images, float interface for %s", len(calib), changed or "nothing")
    return data


def convert_int8_aiq(model: Any, calib: np.ndarray) -> bytes:
    """Format ``tflite-int8-aiq``: ai-edge-quantizer static int8 (a8w8) on the float TFLite model,
    calibrated on ``calib`` (NCHW float32), with a float32 interface like ``tflite-int8``."""
    from ai_edge_quantizer import quantizer, recipe

    fp32 = convert_fp32(model)
    qt = quantizer.Quantizer(bytearray(fp32), recipe.static_wi8_ai8())
    from ai_edge_litert.interpreter import Interpreter

    in_name = Interpreter(model_content=fp32).get_signature_list()[SIGNATURE]["inputs"][0]
    with _to_debug_log("ai-edge-quantizer"):
        result = qt.calibrate({SIGNATURE: [{in_name: calib[i:i + 1]} for i in range(len(calib))]}, num_threads=1)
        quantized = bytes(qt.quantize(result).quantized_model)
    data, _ = float_interface(quantized)
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

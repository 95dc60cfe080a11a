"""The export formats and the options each one accepts (one table).

An option a format does not take is a :class:`~edge_app.errors.UsageError`; nothing is
silently dropped or changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edge_app.errors import UsageError

#: Every option any format knows, with its default and a check.
OPTION_DEFAULTS: dict[str, Any] = {
    "opset": 18,  # ONNX opset
    "calib_images": 200,  # real training images used to calibrate int8 activations
    "per_channel": True,  # per-output-channel int8 weights
    "calib_method": "minmax",  # onnxruntime calibration: minmax | entropy | percentile
    "seed": 0,  # which calibration images are drawn
    "metadata": True,  # TFLite: embed labels + normalisation with tflite-support's metadata writer
    "weight_tuning": True,  # TFLite int8: calibration-aware weight rounding + bias correction
}
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class ExportFormat:
    """One export format: runtime, precision, file name in a bundle, accepted options."""

    name: str
    runtime: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "int8"
    file_name: str
    options: frozenset[str]
    description: str
    quantizer: str | None = None  # int8 only: "onnxruntime" | "pt2e" (litert-torch) | "ai-edge-quantizer"

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx-fp32", "onnx", "fp32", "model.onnx", frozenset({"opset"}),
                     "ONNX float32 (torch.onnx exporter)"),
        ExportFormat("onnx-int8", "onnx", "int8", "model.onnx",
                     frozenset({"opset", "calib_images", "per_channel", "calib_method", "seed"}),
                     "ONNX static int8, QDQ, onnxruntime calibration on real training images", "onnxruntime"),
        ExportFormat("tflite-fp32", "tflite", "fp32", "model.tflite", frozenset({"metadata"}),
                     "TFLite float32 (litert-torch)"),
        ExportFormat("tflite-int8", "tflite", "int8", "model.tflite",
                     frozenset({"calib_images", "per_channel", "seed", "metadata", "weight_tuning"}),
                     "TFLite static int8 (litert-torch PT2E, calibrated on real training images), "
                     "float32 interface", "pt2e"),
        ExportFormat("tflite-int8-aiq", "tflite", "int8", "model.tflite",
                     frozenset({"calib_images", "seed", "metadata"}),
                     "TFLite static int8 by ai-edge-quantizer (a8w8) on the float TFLite model, float32 "
                     "interface; as accurate as tflite-int8 on EfficientNet-Lite0 here, less accurate on "
                     "MobileNetV2 (benchmarks/results/export.md)", "ai-edge-quantizer"),
    )
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UsageError(f"unknown export format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def resolve_options(fmt: ExportFormat | str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check ``options`` against what ``fmt`` accepts; return them completed with defaults.

    ``None`` values mean "not given" (what argparse passes for unset flags).
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(OPTION_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown export option(s) {unknown}")
    refused = sorted(set(given) - fmt.options)
    if refused:
        raise UsageError(f"format {fmt.name} does not take option(s) {refused} "
                         f"(it takes: {', '.join(sorted(fmt.options)) or 'none'})")
    out = {k: given.get(k, OPTION_DEFAULTS[k]) for k in sorted(fmt.options)}
    if "calib_images" in out and (not isinstance(out["calib_images"], int) or out["calib_images"] < 1):
        raise UsageError(f"calib_images must be a positive integer, got {out['calib_images']!r}")
    if "calib_method" in out and out["calib_method"] not in CALIB_METHODS:
        raise UsageError(f"calib_method must be one of {CALIB_METHODS}, got {out['calib_method']!r}")
    if out.get("weight_tuning") and not out.get("per_channel", True):
        raise UsageError("weight_tuning needs per_channel weights (pass --no-weight-tuning with --no-per-channel)")
    if "opset" in out and not (isinstance(out["opset"], int) and 13 <= out["opset"] <= 23):
        raise UsageError(f"opset must be an integer in 13..23, got {out['opset']!r}")
    return out

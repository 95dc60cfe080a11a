"""Run a PyTorch model or an exported file on a float32 NCHW batch -> outputs by name.

Every runner returns ``{"logits": (B, C), "embedding": (B, D)}`` float32, with the embedding
*before* normalisation (compare with cosine). Outputs are always matched by name.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edge_app.errors import IntegrityError, UsageError

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("logits", "embedding")
Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def _check(out: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    missing = [n for n in OUTPUT_NAMES if n not in out]
    if missing:
        raise IntegrityError(f"{what}: no output named {', '.join(missing)} (has: {', '.join(out)})")
    return {n: np.asarray(out[n], dtype=np.float32) for n in OUTPUT_NAMES}


def torch_runner(model: Any) -> Runner:
    """The PyTorch reference (pre-normalisation embedding, like the exports)."""
    import torch

    from .wrapper import export_module

    wrapped = export_module(model, as_dict=True)

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = wrapped(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return _check({k: v.numpy() for k, v in out.items()}, "pytorch")

    return run


def onnx_runner(path: str | os.PathLike[str], threads: int = 2) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise IntegrityError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise IntegrityError(f"{path}: expected one input, found {len(inputs)}")
    in_name = inputs[0].name
    names = [o.name for o in sess.get_outputs()]

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        res = sess.run(None, {in_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return _check(dict(zip(names, res)), str(path))

    return run


def tflite_runner(path: str | os.PathLike[str], threads: int = 2) -> Runner:
    """ai_edge_litert signature runner; a model with a fixed batch of 1 is run image by image."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as exc:  # "The model is not a valid Flatbuffer buffer", ...
        raise IntegrityError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0][:200]})") from None
    sigs = interp.get_signature_list()
    if len(sigs) != 1:
        raise IntegrityError(f"{path}: expected one signature, found {list(sigs)}")
    key = next(iter(sigs))
    runner = interp.get_signature_runner(key)
    in_names = sigs[key]["inputs"]
    if len(in_names) != 1:
        raise IntegrityError(f"{path}: expected one input, found {in_names}")
    in_name = in_names[0]
    in_detail = runner.get_input_details()[in_name]
    if in_detail["dtype"] != np.float32:
        raise IntegrityError(f"{path}: input is {in_detail['dtype'].__name__}, the contract is float32")
    fixed_batch = int(in_detail["shape"][0])

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if fixed_batch == batch.shape[0]:
            return _check(runner(**{in_name: batch}), str(path))
        if fixed_batch != 1:
            raise UsageError(f"{path}: model takes batches of {fixed_batch}, got {batch.shape[0]}")
        outs = [_check(runner(**{in_name: batch[i:i + 1]}), str(path)) for i in range(batch.shape[0])]
        return {n: np.concatenate([o[n] for o in outs]) for n in OUTPUT_NAMES}

    return run


def file_runner(path: str | os.PathLike[str], threads: int = 2) -> Runner:
    """Runner for an exported file, by suffix (.onnx or .tflite)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return onnx_runner(path, threads)
    if suffix == ".tflite":
        return tflite_runner(path, threads)
    raise UsageError(f"{path}: unknown model file type {suffix!r} (expected .onnx or .tflite)")


def run_batched(run: Runner, x: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    outs = [run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return {n: np.concatenate([o[n] for o in outs]) for n in OUTPUT_NAMES}

"""TFLite model metadata (labels, input normalisation) with tflite-support's metadata writer.

Output metadata is attached by tensor name (looked up from the signature's output names),
never by position. If the writer cannot run or fails for a model, :func:`embed_metadata`
says so in its returned status (and the log) instead of pretending it worked.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

from edge_app.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def _signature_tensor_names(data: bytes) -> dict[str, str]:
    """Signature output name -> model tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    key = next(iter(interp.get_signature_list()))
    runner = interp.get_signature_runner(key)
    by_index = {d["index"]: d["name"] for d in interp.get_output_details()}
    return {name: by_index[d["index"]] for name, d in runner.get_output_details().items()}


def embed_metadata(data: bytes, *, model_name: str, labels: Sequence[str], spec: PreprocessSpec,
                   description: str = "") -> tuple[bytes, dict[str, str]]:
    """Return (model bytes with metadata, status). On failure the original bytes and the reason."""
    try:
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as mfb
        from tensorflow_lite_support.metadata.python import metadata as md
        from tensorflow_lite_support.metadata.python.metadata_writers import metadata_info, metadata_writer
    except Exception as exc:  # ImportError, or a missing shared library (libusb) behind it
        reason = f"tflite-support metadata writer unavailable: {exc.__class__.__name__}: {exc}"
        log.error("TFLite metadata NOT embedded: %s", reason)
        return data, {"status": "failed", "reason": reason}
    try:
        tensors = _signature_tensor_names(data)
        with tempfile.TemporaryDirectory() as td:
            label_path = Path(td) / "labels.txt"
            label_path.write_text("\n".join(labels) + "\n", encoding="utf-8")
            input_md = metadata_info.InputImageTensorMd(
                name="image", description=f"RGB image, {spec.size[0]}x{spec.size[1]}, {spec.layout}, "
                                          f"resize={spec.resize}, normalised as (pixel - mean) / std",
                norm_mean=[m * 255.0 for m in spec.mean], norm_std=[s * 255.0 for s in spec.std],
                color_space_type=mfb.ColorSpaceType.RGB, tensor_type=mfb_tensor_float32())
            logits_md = metadata_info.ClassificationTensorMd(
                name="logits", description="class scores before softmax",
                label_files=[metadata_info.LabelFileMd(str(label_path))], tensor_type=mfb_tensor_float32(),
                tensor_name=tensors["logits"])
            emb_md = metadata_info.TensorMd(
                name="embedding", description="pre-normalisation embedding; L2-normalise before cosine search",
                tensor_name=tensors["embedding"])
            writer = metadata_writer.MetadataWriter.create_from_metadata_info(
                bytearray(data),
                general_md=metadata_info.GeneralMd(name=model_name, description=description or
                                                   "partlens spare-part classifier + embedding"),
                input_md=[input_md], output_md=[logits_md, emb_md], associated_files=[str(label_path)])
            out = bytes(writer.populate())
        shown = md.MetadataDisplayer.with_model_buffer(out)
        if "labels.txt" not in shown.get_packed_associated_file_list():
            raise ValueError("labels file not packed")
    except Exception as exc:  # the writer raises ValueError/RuntimeError/KeyError for models it cannot describe
        reason = f"metadata writer failed: {exc.__class__.__name__}: {exc}"
        log.error("TFLite metadata NOT embedded for %s: %s", model_name, reason)
        return data, {"status": "failed", "reason": reason}
    return out, {"status": "embedded", "files": "labels.txt"}


def mfb_tensor_float32() -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.TensorType.FLOAT32


def read_metadata(data: bytes) -> dict:
    """The embedded metadata as a dict (JSON) plus the packed files; raises if there is none."""
    import json

    from tensorflow_lite_support.metadata.python import metadata as md

    shown = md.MetadataDisplayer.with_model_buffer(data)
    return {"metadata": json.loads(shown.get_metadata_json()), "files": shown.get_packed_associated_file_list(),
            "labels": shown.get_associated_file_buffer("labels.txt").decode().splitlines()}

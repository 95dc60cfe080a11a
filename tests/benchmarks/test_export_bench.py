"""The export benchmark's summary over its table (a review found it raised on the PyTorch reference rows)."""
from __future__ import annotations

from benchmarks.bench_export import find_checkpoint, is_int8


def test_int8_rows_are_every_quantized_export_format_and_never_the_reference() -> None:
    assert [f for f in ("pytorch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "tflite-int8-aiq")
            if is_int8(f)] == ["onnx-int8", "tflite-int8", "tflite-int8-aiq"]


def test_a_quick_runs_checkpoint_is_never_the_benchmarks(tmp_path, monkeypatch) -> None:
    import benchmarks.bench_export as be

    monkeypatch.setattr(be, "REPO", tmp_path)
    quick = tmp_path / "benchmarks" / "work" / "train-pcparts-efficientnet-lite0.quick" / "run" / "last.pt"
    quick.parent.mkdir(parents=True)
    quick.write_bytes(b"1 epoch")
    assert find_checkpoint("efficientnet_lite0") is None
    full = tmp_path / "benchmarks" / "work" / "train-pcparts-efficientnet-lite0" / "run" / "last.pt"
    full.parent.mkdir(parents=True)
    full.write_bytes(b"the run")
    assert find_checkpoint("efficientnet_lite0") == full

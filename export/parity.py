"""The parity gate: an export must behave like its PyTorch model on real photos.

Compared on validation photos decoded and preprocessed exactly as on the device, outputs
matched by name:
- top-1 agreement of ``logits`` (>= 98%); a different pick also counts as agreement when PyTorch itself
  is nearly tied between the two classes (its softmax probabilities within ``logit_tie_tolerance`` = 0.05).
  The runtime ranks by embeddings only, so near-tied logits flipping under int8 rounding is not a
  behaviour change the device would show; a confident prediction that flips is. The strict number
  (``top1_agreement_strict``, no tolerance) is always reported,
- median cosine between the exported and the PyTorch embedding (>= 0.98), and its 5th percentile (>= 0.90: a
  model broken on a subset of photos, up to half of them, kept a perfect median),
- nearest-catalogue-neighbour agreement (>= 95%): each validation photo's nearest catalogue
  neighbour (cosine) must be the same with exported embeddings on both sides as with PyTorch ones.
  When the catalogue images carry part labels (the folder they sit in), the neighbour is the
  nearest image's *part*, which is what the device shows (results are parts, not images): two
  photos of the same part trading places is not a disagreement. Without labels it is the nearest
  image. Either way a different pick also counts as agreement when PyTorch itself cannot tell the
  two apart (their PyTorch cosines to the photo within ``tie_tolerance`` = 1e-3). The image-level
  number (``neighbour_agreement_image``) and the strict image-level number (no tie tolerance) are
  always reported.
Below any threshold: :class:`~edge_app.errors.GateError` naming the format and the numbers. So are outputs of
the wrong shape, fewer than :data:`MIN_VAL_IMAGES` validation photos, and a parity catalogue of one part (or one
image): there the nearest-neighbour check agrees whatever the export does. Below :data:`ADVISED_VAL_IMAGES`
photos the gate runs but says how coarse it is (one photo is more than 2% of an agreement figure).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from edge_app.errors import GateError, UsageError

from .runners import Runner, run_batched

log = logging.getLogger(__name__)


#: fewer validation photos than this: the gate refuses to judge (a figure of 3 photos says nothing)
MIN_VAL_IMAGES = 5
#: fewer than this: the gate runs and warns that one photo moves a figure by more than 2 points
ADVISED_VAL_IMAGES = 50


@dataclass(frozen=True)
class Thresholds:
    top1_agreement: float = 0.98
    median_cosine: float = 0.98
    neighbour_agreement: float = 0.95
    p05_cosine: float = 0.90
    tie_tolerance: float = 1e-3
    logit_tie_tolerance: float = 0.05


@dataclass(frozen=True)
class ParityReport:
    format: str
    n_val: int
    n_catalogue: int
    top1_agreement: float
    median_cosine: float
    p05_cosine: float
    neighbour_agreement: float
    neighbour_agreement_strict: float
    thresholds: Thresholds
    neighbour_level: str = "image"  # "part" when catalogue labels were given
    neighbour_agreement_image: float | None = None
    top1_agreement_strict: float | None = None
    #: photos (val or catalogue) whose outputs are NaN or infinite on either side; any fails the gate
    non_finite: int = 0

    @property
    def failures(self) -> list[str]:
        t, out = self.thresholds, []
        if self.non_finite:
            out.append(f"{self.non_finite} photo(s) with NaN or infinite outputs")
        # written as "not >=" so that a NaN figure fails too
        if not self.top1_agreement >= t.top1_agreement:
            out.append(f"top-1 agreement {self.top1_agreement:.2%} < {t.top1_agreement:.0%}")
        if not self.median_cosine >= t.median_cosine:
            out.append(f"median embedding cosine {self.median_cosine:.4f} < {t.median_cosine}")
        if not self.p05_cosine >= t.p05_cosine:
            out.append(f"5th-percentile embedding cosine {self.p05_cosine:.4f} < {t.p05_cosine} (the export is off "
                       "on some photos)")
        if not self.neighbour_agreement >= t.neighbour_agreement:
            out.append(f"nearest-catalogue-{self.neighbour_level} agreement {self.neighbour_agreement:.2%} "
                       f"< {t.neighbour_agreement:.0%}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        strict = "" if self.top1_agreement_strict is None else f" (strict {self.top1_agreement_strict:.2%})"
        return (f"{self.format}: top-1 agreement {self.top1_agreement:.2%}{strict}, median cosine {self.median_cosine:.4f} "
                f"(p05 {self.p05_cosine:.4f}), nearest-{self.neighbour_level} agreement "
                f"{self.neighbour_agreement:.2%} (image level {self.neighbour_agreement_image:.2%}, "
                f"strict {self.neighbour_agreement_strict:.2%}) "
                f"on {self.n_val} val / {self.n_catalogue} catalogue images")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN rows stay NaN; the gate counts them (``non_finite``)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare_outputs(fmt: str, ref_val: dict[str, np.ndarray], cand_val: dict[str, np.ndarray],
                    ref_cat: np.ndarray, cand_cat: np.ndarray, thresholds: Thresholds = Thresholds(),
                    cat_labels: Sequence[str] | None = None) -> ParityReport:
    """Parity numbers from outputs already computed (val outputs by name; catalogue embeddings).

    ``cat_labels``: the part of each catalogue image; the neighbour agreement is then part-level.
    """
    n = len(ref_val["logits"])
    if n == 0 or len(cand_val["logits"]) != n or len(ref_cat) != len(cand_cat) or len(ref_cat) == 0:
        raise UsageError("parity needs the same non-empty validation and catalogue sets on both sides")
    if cat_labels is not None and len(cat_labels) != len(ref_cat):
        raise UsageError(f"{len(cat_labels)} catalogue labels for {len(ref_cat)} catalogue images")
    for key, ref_out, cand_out in (("logits", ref_val["logits"], cand_val["logits"]),
                                   ("embedding", ref_val["embedding"], cand_val["embedding"]),
                                   ("catalogue embedding", ref_cat, cand_cat)):
        if np.shape(ref_out) != np.shape(cand_out):  # e.g. outputs swapped by name: a clear refusal, not a crash
            raise GateError(f"parity gate failed for {fmt}: {key} output is {np.shape(cand_out)}, the PyTorch "
                            f"model's is {np.shape(ref_out)} (outputs swapped or another model?)")
    if n < MIN_VAL_IMAGES:
        raise GateError(f"parity gate for {fmt}: only {n} validation photo(s); it needs at least {MIN_VAL_IMAGES} "
                        f"to judge (advised: {ADVISED_VAL_IMAGES} or more)")
    groups = len(set(map(str, cat_labels))) if cat_labels is not None else len(ref_cat)
    if groups < 2:
        raise GateError(f"parity gate for {fmt}: the parity catalogue holds one {'part' if cat_labels is not None else 'image'}: "
                        "the nearest-catalogue check would agree whatever the export does; give it at least 2")
    if n < ADVISED_VAL_IMAGES:
        log.warning("parity gate for %s on %d validation photos: one photo moves each agreement figure by %.1f "
                    "points (advised: %d or more)", fmt, n, 100 / n, ADVISED_VAL_IMAGES)
    bad_val = np.zeros(n, bool)
    for side in (ref_val, cand_val):
        for key in ("logits", "embedding"):
            bad_val |= ~np.isfinite(np.asarray(side[key], np.float64)).all(axis=1)
    bad_cat = ~(np.isfinite(np.asarray(ref_cat, np.float64)).all(axis=1)
                & np.isfinite(np.asarray(cand_cat, np.float64)).all(axis=1))
    non_finite = int(bad_val.sum() + bad_cat.sum())
    top1, top1_strict = _top1_agreement(ref_val["logits"], cand_val["logits"], thresholds.logit_tie_tolerance)
    cos = np.sum(_unit(ref_val["embedding"]) * _unit(cand_val["embedding"]), axis=1)
    ref_sim = _unit(ref_val["embedding"]) @ _unit(ref_cat).T
    cand_sim = _unit(cand_val["embedding"]) @ _unit(cand_cat).T
    nn_ref, nn_cand = ref_sim.argmax(1), cand_sim.argmax(1)
    rows = np.arange(n)
    tie = ref_sim[rows, nn_cand] >= ref_sim[rows, nn_ref] - thresholds.tie_tolerance
    image_agree = float(np.mean((nn_ref == nn_cand) | tie))
    level, agree = "image", image_agree
    if cat_labels is not None:
        names, idx = np.unique(np.asarray(cat_labels, dtype=str), return_inverse=True)
        ref_part, cand_part = _part_scores(ref_sim, idx, len(names)), _part_scores(cand_sim, idx, len(names))
        p_ref, p_cand = ref_part.argmax(1), cand_part.argmax(1)
        p_tie = ref_part[rows, p_cand] >= ref_part[rows, p_ref] - thresholds.tie_tolerance
        level, agree = "part", float(np.mean((p_ref == p_cand) | p_tie))
    return ParityReport(format=fmt, n_val=n, n_catalogue=len(ref_cat), top1_agreement=top1,
                        median_cosine=float(np.median(cos)), p05_cosine=float(np.percentile(cos, 5)),
                        neighbour_agreement=agree, neighbour_agreement_strict=float(np.mean(nn_ref == nn_cand)),
                        thresholds=thresholds, neighbour_level=level, neighbour_agreement_image=image_agree,
                        top1_agreement_strict=top1_strict, non_finite=non_finite)


def _top1_agreement(ref: np.ndarray, cand: np.ndarray, tolerance: float) -> tuple[float, float]:
    """(tie-aware, strict) top-1 agreement of two logit arrays; see the module docstring."""
    ref = np.asarray(ref, dtype=np.float64)
    p_ref, p_cand = ref.argmax(1), np.asarray(cand).argmax(1)
    z = ref - ref.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    rows = np.arange(len(ref))
    same = p_ref == p_cand
    tied = prob[rows, p_cand] >= prob[rows, p_ref] - tolerance
    return float(np.mean(same | tied)), float(np.mean(same))


def _part_scores(sim: np.ndarray, part_index: np.ndarray, n_parts: int) -> np.ndarray:
    """(queries, parts): each part's best image similarity (the runtime's ``max`` aggregation)."""
    out = np.full((len(sim), n_parts), -np.inf)
    for j in range(n_parts):
        out[:, j] = sim[:, part_index == j].max(axis=1)
    return out


def measure_parity(fmt: str, reference: Runner, candidate: Runner, val: np.ndarray, catalogue: np.ndarray,
                   thresholds: Thresholds = Thresholds(), batch_size: int = 16,
                   cat_labels: Sequence[str] | None = None) -> ParityReport:
    """Run both models on preprocessed val and catalogue arrays and compare (see :func:`compare_outputs`)."""
    ref_val, cand_val = run_batched(reference, val, batch_size), run_batched(candidate, val, batch_size)
    ref_cat = run_batched(reference, catalogue, batch_size)["embedding"]
    cand_cat = run_batched(candidate, catalogue, batch_size)["embedding"]
    return compare_outputs(fmt, ref_val, cand_val, ref_cat, cand_cat, thresholds, cat_labels)


def enforce(report: ParityReport) -> ParityReport:
    """Raise :class:`GateError` unless the report passes; log and return it otherwise."""
    if not report.passed:
        raise GateError(f"parity gate failed for {report.format}: {'; '.join(report.failures)} "
                        f"({report.summary()})")
    log.info("parity gate passed: %s", report.summary())
    return report


def parity_gate(fmt: str, reference: Runner, candidate: Runner, val: np.ndarray, catalogue: np.ndarray,
                thresholds: Thresholds = Thresholds()) -> ParityReport:
    """:func:`measure_parity` then :func:`enforce`."""
    return enforce(measure_parity(fmt, reference, candidate, val, catalogue, thresholds))

"""Confidence calibration and the "no confident match" threshold.

Confidence that the top-ranked part is right is a logistic function of two features of the
part ranking: the top part's similarity ``s1`` and its margin to the next part ``s1 - s2``.
:func:`fit` learns it (L2-regularised logistic regression by Newton's method, NumPy only) from
scored queries of products DISJOINT from the ones it will be judged on; queries of products that
are not in the catalogue are negatives, so the same model rejects unknown parts. The threshold
is chosen on the fitting data to reach a target precision of accepted answers; nothing is
hard-coded. Metrics (ECE, AUROC with a bootstrap CI, precision at a recall) live here too.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError, IntegrityError

log = logging.getLogger(__name__)

FEATURES = ("top_similarity", "margin")
FORMAT = "logistic/1"


def features(top: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N,2) feature matrix from top-part and second-part similarities (second may be NaN: no 2nd part)."""
    top = np.asarray(top, np.float64)
    second = np.asarray(second, np.float64)
    second = np.where(np.isfinite(second), second, -1.0)
    return np.stack([top, top - second], axis=1)


#: the largest confidence: below 1, so a threshold of 1.0 ("accept nothing") accepts nothing
MAX_CONFIDENCE = float(np.nextafter(1.0, 0.0))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.minimum(1.0 / (1.0 + np.exp(-np.clip(z, -40, 40))), MAX_CONFIDENCE)


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(coef . [s1, s1-s2] + intercept)``; ``p < threshold`` means no confident match."""

    coef: tuple[float, float]
    intercept: float
    threshold: float
    target_precision: float | None = None
    n_fit: int = 0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def confidence(self, top: np.ndarray | float, second: np.ndarray | float) -> np.ndarray:
        """Calibrated confidence per query; 0 where there is no second part (NaN): with nothing to compare the
        top part with, the margin is undefined and no answer is confident."""
        second = np.atleast_1d(np.asarray(second, np.float64))
        x = features(np.atleast_1d(top), second)
        return np.where(np.isfinite(second), _sigmoid(x @ np.asarray(self.coef) + self.intercept), 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coef"] = list(self.coef)
        d["format"] = FORMAT
        d["features"] = list(FEATURES)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "calibration") -> "Calibration":
        if d.get("format") != FORMAT:
            raise IntegrityError(f"{what}: unknown calibration format {d.get('format')!r} (expected {FORMAT})")
        try:
            coef = tuple(float(c) for c in d["coef"])
            if len(coef) != len(FEATURES):
                raise ValueError(f"{len(coef)} coefficients")
            thr = float(d["threshold"])
            if not 0.0 <= thr <= 1.0:
                raise ValueError(f"threshold {thr} outside [0, 1]")
            return cls(coef=coef, intercept=float(d["intercept"]), threshold=thr,  # type: ignore[arg-type]
                       target_precision=d.get("target_precision"), n_fit=int(d.get("n_fit", 0)),
                       info=dict(d.get("info") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{what}: malformed calibration ({exc})") from None


def fit(top: Sequence[float], second: Sequence[float], correct: Sequence[bool], *,
        target_precision: float = 0.9, l2: float = 1e-3, info: Mapping[str, Any] | None = None) -> Calibration:
    """Fit confidence = P(top part is right) and the acceptance threshold.

    ``correct[i]`` is True when query i's top part is its true part (always False for a product
    not in the catalogue). The threshold is the lowest confidence whose accepted set still has
    precision >= ``target_precision`` (at least 0.5).
    """
    second = np.asarray(second, dtype=np.float64)
    compared = np.isfinite(second)  # a query with no second part is never confident (Calibration.confidence)
    if not compared.all():
        log.warning("calibration: %d of %d queries had no second part to compare with; left out of the fit",
                    int((~compared).sum()), len(second))
    x = features(np.asarray(top, dtype=np.float64)[compared], second[compared])
    y = np.asarray(correct, dtype=np.float64)[compared]
    if len(x):
        _finite("calibration fit", x)  # a NaN similarity made NaN coefficients, refused only when loaded
    if len(y) != len(x) or len(y) < 4:
        raise InputError(f"calibration needs at least 4 scored queries, got {len(y)}")
    if y.min() == y.max():
        raise InputError("calibration needs both right and wrong (or unknown-part) top answers")
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xs = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.zeros(xs.shape[1])
    reg = np.full(xs.shape[1], l2 * len(y))
    reg[-1] = 0.0
    for _ in range(100):
        p = _sigmoid(xs @ w)
        grad = xs.T @ (p - y) + reg * w
        hess = (xs * (p * (1 - p))[:, None]).T @ xs + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = w[:-1] / sd
    intercept = float(w[-1] - (w[:-1] * mu / sd).sum())
    p = _sigmoid(x @ coef + intercept)
    threshold = choose_threshold(p, y.astype(bool), target_precision)
    cal = Calibration(coef=(float(coef[0]), float(coef[1])), intercept=intercept, threshold=threshold,
                      target_precision=target_precision, n_fit=len(y), info=dict(info or {}))
    log.info("calibration fitted on %d queries: coef=%s intercept=%.3f threshold=%.3f", len(y), coef, intercept,
             threshold)
    return cal


def choose_threshold(p: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """Lowest confidence cut (accept ``p >= cut``) whose accepted answers reach ``target_precision``.

    Equal confidences are accepted or refused together (a cut cannot split them), and with a target of 0.5 or
    more only cuts of at least 0.5 are considered (checked there, not raised to it afterwards). When no cut
    reaches the target, the cut lies above every confidence: nothing is accepted.
    """
    p = np.asarray(p, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    tp, n, cuts = _cumulative_by_score(p, ok)
    floor = 0.5 if target_precision >= 0.5 else -np.inf
    good = np.flatnonzero((tp / n >= target_precision) & (cuts >= floor))
    if not len(good):
        return float(min(1.0, p.max() + 1e-6))
    return float(cuts[good[-1]])


def _cumulative_by_score(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score, highest first: positives and items with a score at least that high, and the
    score itself (the cut that keeps them)."""
    neg_vals, inverse = np.unique(-scores, return_inverse=True)
    tp = np.cumsum(np.bincount(inverse, weights=positive, minlength=len(neg_vals)))
    n = np.cumsum(np.bincount(inverse, minlength=len(neg_vals)))
    return tp, n, -neg_vals


def _finite(what: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.size == 0:
            raise InputError(f"{what}: no scores")
        if not np.isfinite(a).all():
            raise InputError(f"{what}: scores hold NaN or infinite values")


def default_calibration() -> Calibration:
    """An *uncalibrated* fallback used only when a bundle carries no calibration; flagged as such."""
    return Calibration(coef=(10.0, 20.0), intercept=-8.0, threshold=0.5,
                       info={"uncalibrated": True, "note": "no calibration in the bundle; confidence is a guess"})


# ----------------------------------------------------------------------------- metrics
def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """Expected calibration error with equal-width bins."""
    c = np.asarray(confidence, float)
    y = np.asarray(correct, float)
    if not len(c) or len(c) != len(y):  # 0.0 ("perfect") for no queries before
        raise InputError(f"ece needs as many outcomes as confidences, at least one (got {len(c)} and {len(y)})")
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(c, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(c[m].mean() - y[m].mean())
    return float(total)


def ece_sampling_floor(confidence: Sequence[float], bins: int = 15, draws: int = 500, seed: int = 0) -> float:
    """Mean ECE that a PERFECTLY calibrated predictor shows with these confidences and this many queries.

    Outcomes are drawn as ``Bernoulli(confidence)``; the ECE of those draws is pure sampling noise, so a
    measured ECE near this value cannot be told apart from perfect calibration at this sample size.
    """
    c = np.asarray(confidence, float)
    if not len(c):
        raise InputError("ece_sampling_floor needs at least one confidence")
    rng = np.random.default_rng(seed)
    return float(np.mean([ece(c, rng.random(len(c)) < c, bins) for _ in range(draws)]))


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged)."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        raise InputError("AUROC needs both positives and negatives")
    if np.isnan(s).any():  # infinities rank fine; NaN has no rank
        raise InputError("AUROC: scores hold NaN values")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(fn: Any, *arrays: Sequence[Any], n: int = 1000, seed: int = 0, alpha: float = 0.05,
                 groups: Sequence[Any] | None = None, stats: dict[str, int] | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of ``fn(*arrays)``, resampling rows, or whole ``groups`` when given.

    Photos of one product are not independent: pass the product of each row as ``groups`` (a cluster
    bootstrap) so the interval reflects how much the metric depends on WHICH products were scored.
    A resample ``fn`` cannot score (e.g. AUROC of a resample with one class only) is left out; how many were
    scored and skipped goes into ``stats`` (``resamples_scored``, ``resamples_skipped``) when given, and a
    warning is logged when any was skipped (the interval then leans towards the resamples that could be scored).
    """
    rng = np.random.default_rng(seed)
    arrs = [np.asarray(a) for a in arrays]
    m = len(arrs[0])
    if groups is None:
        members = [np.array([i]) for i in range(m)]
    else:
        g = np.asarray(groups)
        if len(g) != m:
            raise InputError(f"groups has {len(g)} entries for {m} rows")
        members = [np.flatnonzero(g == u) for u in np.unique(g)]
    vals = []
    for _ in range(n):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick])
        try:
            vals.append(fn(*[a[idx] for a in arrs]))
        except InputError:
            continue
    if stats is not None:
        stats.update(resamples_scored=len(vals), resamples_skipped=n - len(vals))
    if not vals:
        raise InputError("bootstrap: no resample could be scored")
    if len(vals) < n:
        log.warning("bootstrap: %d of %d resamples could not be scored and were left out", n - len(vals), n)
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def precision_at_recall(scores: Sequence[float], positive: Sequence[bool], recall: float = 0.95) -> float:
    """Precision of the positives at the highest cut that keeps ``recall`` of them (equal scores kept together)."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    _finite("precision at recall", s)
    if not y.any():
        raise InputError("precision at recall needs positives")
    tp, n, _ = _cumulative_by_score(s, y.astype(np.float64))
    need = np.ceil(recall * y.sum())
    k = int(np.flatnonzero(tp >= need)[0])
    return float(tp[k] / n[k])

"""Calibration fitting and metrics."""
from __future__ import annotations

import numpy as np
import pytest

from edge_app.errors import InputError, IntegrityError
from edge_app.runtime import calibration as C


def _simulated(n: int, seed: int):
    """Queries whose true P(correct) is a known logistic function of (top, margin)."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.3, 1.0, n)
    second = top - rng.uniform(0, 0.3, n)
    p = 1 / (1 + np.exp(-(8 * top + 15 * (top - second) - 7)))
    return top, second, rng.random(n) < p, p


def test_fit_is_calibrated_on_disjoint_data():
    top, second, y, _ = _simulated(3000, 0)
    cal = C.fit(top, second, y, target_precision=0.9)
    assert cal.coef[0] == pytest.approx(8, rel=0.25) and cal.coef[1] == pytest.approx(15, rel=0.25)
    t2, s2, y2, _ = _simulated(3000, 1)
    conf = cal.confidence(t2, s2)
    assert C.ece(conf, y2) < 0.05
    accepted = conf >= cal.threshold
    assert y2[accepted].mean() >= 0.87  # the target precision carries over to new data
    again = C.Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.confidence(t2, s2), conf)


def test_fit_and_load_errors():
    with pytest.raises(InputError):
        C.fit([0.9, 0.8, 0.7, 0.6], [0.1] * 4, [True] * 4)
    with pytest.raises(IntegrityError):
        C.Calibration.from_dict({"format": "other"})
    with pytest.raises(IntegrityError):
        C.Calibration.from_dict({"format": C.FORMAT, "coef": [1], "intercept": 0, "threshold": 0.5})


def test_metrics():
    assert C.auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert C.auroc([0.5, 0.5], [True, False]) == 0.5
    assert C.precision_at_recall([0.9, 0.8, 0.7, 0.6], [True, False, True, False], recall=1.0) == pytest.approx(2 / 3)
    assert C.ece([1.0, 1.0, 0.0, 0.0], [True, True, False, False]) == 0.0
    lo, hi = C.bootstrap_ci(C.auroc, np.r_[np.random.default_rng(0).random(50) + 0.3,
                                          np.random.default_rng(1).random(50)],
                            np.r_[np.ones(50, bool), np.zeros(50, bool)], n=200)
    assert 0.5 < lo < hi <= 1.0

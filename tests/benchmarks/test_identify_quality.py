"""The identify-quality benchmark's alternative unknown-part scores."""
from __future__ import annotations

import numpy as np

from benchmarks.bench_identify_quality import _alternative_scores


def test_alternative_scores_match_their_definitions() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [900.0, 1.0, 0.0]], np.float32)  # the last would overflow exp
    tops, seconds = np.array([0.9, 0.5, 0.7]), np.array([0.4, 0.45, 0.1])
    alt = _alternative_scores(tops, seconds, logits)
    assert set(alt) == {"top_similarity", "margin", "classifier_max_softmax", "classifier_energy"}
    np.testing.assert_allclose(alt["margin"], [0.5, 0.05, 0.6])
    e = np.exp(logits[:2].astype(np.float64))
    np.testing.assert_allclose(alt["classifier_max_softmax"][:2], e.max(1) / e.sum(1))
    np.testing.assert_allclose(alt["classifier_energy"][:2], np.log(e.sum(1)))
    assert np.isclose(alt["classifier_max_softmax"][1], 1 / 3)  # a tie: no class stands out
    assert np.isclose(alt["classifier_max_softmax"][2], 1.0) and np.isclose(alt["classifier_energy"][2], 900.0)
    assert np.all(np.isfinite(alt["classifier_energy"]))

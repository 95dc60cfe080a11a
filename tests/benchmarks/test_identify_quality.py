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


def _fake_run(seed: int, n: int = 300, shift: float = 0.0) -> dict:
    from edge_app.runtime.calibration import Calibration

    rng = np.random.default_rng(seed)
    is_known = rng.random(n) < 0.8
    conf = np.clip(rng.beta(4, 2, n) + shift, 0, 1)
    right = is_known & (rng.random(n) < conf)
    in_val = rng.random(n) < 0.7
    cal = Calibration(coef=(1.0, 1.0), intercept=0.0, threshold=0.6, target_precision=0.9, n_fit=10, info={})
    alt = {"top_similarity": conf + 0.01 * rng.random(n)}
    return {"format": "tflite-int8", "gate": {}, "calibration": cal, "calibration_queries": 10,
            "catalogue_images": 5, "known_products": 3, "conf": conf, "is_known": is_known, "right": right,
            "in_val": in_val, "group": 1000 * seed + rng.integers(0, 20, n), "alternatives": alt,
            "multiview": {"single": [True, False], "score": [True], "embedding": [False]}}


def test_pooled_numbers_pool_calibration_and_average_rankings() -> None:
    from benchmarks.bench_identify_quality import _pooled, _run_row
    from edge_app.runtime import calibration as C

    runs = [_fake_run(0), _fake_run(1, shift=-0.2)]
    rows = [_run_row(r) for r in runs]
    out = _pooled(runs)
    assert out["runs"] == 2 and out["eval_queries"] == 600
    assert np.isclose(out["auroc_mean"], np.mean([r["auroc"] for r in rows]))
    conf = np.concatenate([r["conf"][r["in_val"]] for r in runs])
    right = np.concatenate([r["right"][r["in_val"]] for r in runs])
    assert np.isclose(out["ece_top1_val_pooled"], C.ece(conf, right))
    assert out["eval_val_queries"] == len(conf) == sum(r["eval_val_queries"] for r in rows)
    # more queries, lower noise floor: the pooled floor is below each run's
    assert out["ece_if_perfectly_calibrated_pooled"] < min(r["ece_if_perfectly_calibrated"] for r in rows)
    assert out["auroc_pooled_ci95_products_low"] <= out["auroc_pooled"] <= out["auroc_pooled_ci95_products_high"]
    # the result says how many resamples the intervals rest on, and over how many products
    assert out["auroc_bootstrap_scored"] == out["auroc_bootstrap_products_scored"] == 1000
    assert out["auroc_bootstrap_products"] == len(np.unique(np.concatenate([r["group"] for r in runs])))
    assert out["multiview_groups"] == 2 and out["top1_fused_score"] == 1.0 and out["top1_single_view"] == 0.5
    single = _pooled([runs[0]])
    assert np.isclose(single["auroc_mean"], rows[0]["auroc"]) and single["auroc_std"] is None  # no spread from one run
    assert np.isclose(single["ece_top1_val_pooled"], rows[0]["ece_top1_val"])

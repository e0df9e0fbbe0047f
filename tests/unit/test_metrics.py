"""Metric functions against scikit-learn on known and random inputs (with ties)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from patchrank.pipeline.evaluation import metrics


def _cases():
    rng = np.random.default_rng(0)
    yield np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    yield np.array([1, 0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.2, 0.9])  # ties across classes
    for n in (10, 200):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(rng.normal(size=n) + y, 1)  # rounding creates many ties
        yield y, s


@pytest.mark.parametrize("y,s", list(_cases()))
def test_auroc_and_auprc_match_sklearn(y, s):
    assert metrics.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert metrics.auprc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_known_values():
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc([0, 1], [0.0, 1.0]) == 1.0
    assert metrics.auroc([0, 1], [1.0, 0.0]) == 0.0
    assert metrics.auroc([0, 1, 0, 1], [0.5] * 4) == 0.5


def test_best_dice_matches_brute_force():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.2).astype(int)
    s = rng.normal(size=500) + 1.5 * y
    dice, thr = metrics.best_dice(y, s)
    brute = max(skm.f1_score(y, (s >= t).astype(int)) for t in np.unique(s))
    assert dice == pytest.approx(brute)
    assert skm.f1_score(y, (s >= thr).astype(int)) == pytest.approx(dice)
    assert metrics.best_dice([0, 1, 1], [0.0, 1.0, 2.0]) == (1.0, 1.0)


def test_undefined_and_bad_inputs():
    assert metrics.safe(metrics.auroc, [0, 0, 0], [1, 2, 3]) is None
    assert metrics.safe(metrics.best_dice, [0, 1], [0.2, 0.3]) == 1.0
    with pytest.raises(ValueError, match="both"):
        metrics.auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="length"):
        metrics.auprc([0, 1, 1], [0.1, 0.2])

"""Evaluation metrics in plain numpy (checked against scikit-learn in the unit tests).

All functions take `y` (0/1 labels, 1 = abnormal) and `s` (scores, higher = more
abnormal). Ties are handled like scikit-learn: tied scores form one ROC step, and
AUROC gives tied positive/negative pairs half credit.
"""

from __future__ import annotations

import numpy as np


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return y.astype(np.int64), s


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def _sorted_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> cumulative (tp, fp) at each distinct threshold (descending), and the thresholds."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), s[last]


def roc_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (fpr, tpr, thresholds), starting at (0, 0) with threshold +inf."""
    y, s = _check(y, s)
    if not _both_classes(y):
        raise ValueError("ROC needs both normal and abnormal examples")
    tp, fp, thr = _sorted_counts(y, s)
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], np.r_[np.inf, thr]


def auroc(y, s) -> float:
    """Area under the ROC curve (trapezoids over tie groups == Mann-Whitney U / (n1 n0))."""
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.trapezoid(tpr, fpr))


def auprc(y, s) -> float:
    """Average precision: sum_n (R_n - R_{n-1}) P_n (scikit-learn's definition, no interpolation)."""
    y, s = _check(y, s)
    if not y.any():
        raise ValueError("AUPRC needs at least one abnormal example")
    tp, fp, _ = _sorted_counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_dice(y, s) -> tuple[float, float]:
    """Best Dice over all thresholds (one threshold for the whole set) -> (dice, threshold).

    Dice(t) = 2 TP / (2 TP + FP + FN) with "abnormal" = score >= t.
    """
    y, s = _check(y, s)
    if not y.any():
        raise ValueError("Dice needs at least one abnormal pixel")
    tp, fp, thr = _sorted_counts(y, s)
    fn = tp[-1] - tp
    dice = 2 * tp / (2 * tp + fp + fn)
    i = int(np.argmax(dice))
    return float(dice[i]), float(thr[i])


def safe(fn, y, s) -> float | None:
    """fn(y, s), or None when the metric is undefined (a class is missing)."""
    y = np.asarray(y)
    if y.size == 0 or not _both_classes(y.astype(np.int64)):
        return None
    out = fn(y, s)
    return out[0] if isinstance(out, tuple) else out

"""The operating point: a scan-score threshold at a chosen false-positive rate on normal scans.

`patchrank evaluate` fits it on the evaluated scans (a scan is abnormal when any of its labelled slices is)
and writes it beside the checkpoint as `<checkpoint>.operating_point.json`, keyed by the model_version it
was fitted for; `score` and the service read it back and set `flagged = scan_score >= threshold`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

SUFFIX = ".operating_point.json"


def fit_threshold(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.05) -> dict:
    """The smallest threshold whose false-positive rate on the normal scans (labels == 0) is <= fpr, with the
    measured FPR and TPR at it."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    normal = np.sort(scores[labels == 0])
    if normal.size == 0:
        raise ValueError("an operating point needs normal scans")
    allowed = math.floor(fpr * normal.size)  # normal scans that may score at or above the threshold
    threshold = float(np.nextafter(normal[-1], np.inf)) if allowed == 0 else float(normal[normal.size - allowed])
    abnormal = scores[labels == 1]
    return {
        "fpr_target": fpr,
        "threshold": threshold,
        "fpr": float((normal >= threshold).mean()),
        "tpr": float((abnormal >= threshold).mean()) if abnormal.size else None,
        "n_normal_scans": int(normal.size),
        "n_abnormal_scans": int(abnormal.size),
    }


def sidecar(checkpoint: str | os.PathLike) -> Path:
    return Path(f"{checkpoint}{SUFFIX}")


def save(checkpoint: str | os.PathLike, model_version: str, point: dict) -> Path:
    path = sidecar(checkpoint)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"model_version": model_version, **point}, indent=2))
    os.replace(tmp, path)
    return path


def load(checkpoint: str | os.PathLike, model_version: str) -> float | None:
    """The stored threshold for this model_version (None when absent, unreadable or fitted for another model)."""
    try:
        point = json.loads(sidecar(checkpoint).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(point, dict) or point.get("model_version") != model_version:
        return None
    t = point.get("threshold")
    return float(t) if isinstance(t, int | float) and math.isfinite(t) else None


def flagged(score: float | None, threshold: float | None) -> bool | None:
    if threshold is None or score is None or not math.isfinite(score):
        return None
    return bool(score >= threshold)

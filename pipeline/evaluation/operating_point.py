"""The operating point: a scan-score threshold at a chosen false-positive rate on normal scans.

`patchrank evaluate` fits it on the evaluated scans (a scan is abnormal when any of its labelled slices is)
and writes it beside the checkpoint as `<checkpoint>.operating_point.json` (an object beside it for an s3://
checkpoint), keyed by the model_version it was fitted for; `score` and the service read it back and set
`flagged = scan_score >= threshold`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from patchrank.pipeline.data.storage import filesystem, is_s3

SUFFIX = ".operating_point.json"


def fit_threshold(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.05) -> dict:
    """The smallest threshold whose false-positive rate on the normal scans (labels == 0) is <= fpr, with the
    measured FPR and TPR at it."""
    if not 0 <= fpr < 1:
        raise ValueError(f"an operating point's false-positive rate must be >= 0 and < 1, got {fpr}")
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


def sidecar(checkpoint: str | os.PathLike) -> str | Path:
    """Where the operating point of a checkpoint lives: a path, or an s3:// URI for an s3:// checkpoint."""
    return f"{checkpoint}{SUFFIX}" if is_s3(checkpoint) else Path(f"{checkpoint}{SUFFIX}")


def save(checkpoint: str | os.PathLike, model_version: str, point: dict, endpoint: str | None = None) -> str | Path:
    """Write the sidecar whole or not at all (a temp file renamed; on S3 one PUT)."""
    path = sidecar(checkpoint)
    text = json.dumps({"model_version": model_version, **point}, indent=2)
    if is_s3(path):
        fs, key = filesystem(path, endpoint)
        with fs.open_output_stream(key) as out:
            out.write(text.encode())
        return path
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load(checkpoint: str | os.PathLike, model_version: str, endpoint: str | None = None) -> float | None:
    """The stored threshold for this model_version (None when absent, unreadable or fitted for another model)."""
    path = sidecar(checkpoint)
    try:
        if is_s3(path):
            fs, key = filesystem(path, endpoint)
            with fs.open_input_stream(key) as f:
                point = json.loads(f.read().decode())
        else:
            point = json.loads(path.read_text())
    except (OSError, ValueError):  # absent (pyarrow raises OSError for a missing object), unreadable, not JSON
        return None
    if not isinstance(point, dict) or point.get("model_version") != model_version:
        return None
    t = point.get("threshold")
    return float(t) if isinstance(t, int | float) and math.isfinite(t) else None


def flagged(score: float | None, threshold: float | None) -> bool | None:
    if threshold is None or score is None or not math.isfinite(score):
        return None
    return bool(score >= threshold)

"""Trivial heuristic: a high percentile of preprocessed intensity inside the foreground.

On FLAIR (lesions hyperintense) this is a strong slice-level baseline; its pixel map is
the intensity itself.
"""

from __future__ import annotations

import numpy as np

from patchrank.pipeline.evaluation.harness import EvalResult, SliceLevel


class PercentileScorer(SliceLevel):
    name = "percentile"

    def __init__(self, q: float = 99.0) -> None:
        self.q = q

    def score(self, images: np.ndarray, foreground: np.ndarray, position: np.ndarray | None = None) -> EvalResult:
        """images: (N, C, H, W), foreground: (N, 1, H, W) -> scores (N,), maps (N, H, W)."""
        x = images.mean(1)  # (N, H, W)
        fg = foreground[:, 0]
        scores = np.array([np.percentile(xi[f] if f.any() else xi, self.q) for xi, f in zip(x, fg)])
        maps = np.where(fg, x, x.min())
        return EvalResult(scores, maps.astype(np.float32))


def fit_percentile(train, val, cfg) -> PercentileScorer:  # noqa: ARG001 - nothing to fit
    return PercentileScorer()

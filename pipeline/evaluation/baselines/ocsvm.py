"""One-class SVM (RBF kernel, nu = 0.1, gamma = "scale") on pixels downsampled to 32 x 32.

No pixel map (a kernel machine on whole images has no per-pixel evidence), so its
pixel metrics are reported as n/a.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from patchrank.pipeline.evaluation.harness import EvalResult, SliceLevel

SIDE = 32


def _features(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, C * SIDE * SIDE)."""
    x = torch.from_numpy(images)
    if x.shape[-1] != SIDE:
        x = F.adaptive_avg_pool2d(x, SIDE)
    return x.flatten(1).numpy().astype(np.float64)


class OCSVMScorer(SliceLevel):
    name = "ocsvm"

    def __init__(self, svm) -> None:
        self.svm = svm

    def score(self, images: np.ndarray, foreground: np.ndarray, position: np.ndarray | None = None) -> EvalResult:
        return EvalResult(-self.svm.decision_function(_features(images)), None)


def fit_ocsvm(train, val, cfg, nu: float = 0.1) -> OCSVMScorer:  # noqa: ARG001
    from sklearn.svm import OneClassSVM

    return OCSVMScorer(OneClassSVM(kernel="rbf", nu=nu, gamma="scale").fit(_features(train.images)))

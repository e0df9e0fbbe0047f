"""Convolutional autoencoder baseline: L2 reconstruction error (slice = mean over foreground)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from patchrank.pipeline.evaluation.baselines.nets import ConvAE, apply, epochs_of
from patchrank.pipeline.evaluation.harness import EvalResult, SliceLevel


class CAEScorer(SliceLevel):
    name = "cae"

    def __init__(self, net: ConvAE) -> None:
        self.net = net

    def score(self, images: np.ndarray, foreground: np.ndarray, position: np.ndarray | None = None) -> EvalResult:
        err = ((apply(self.net, images) - images) ** 2).mean(1)  # (N, H, W)
        fg = foreground[:, 0]
        scores = (err * fg).sum((1, 2)) / np.maximum(fg.sum((1, 2)), 1)
        return EvalResult(scores, np.where(fg, err, 0.0).astype(np.float32))


def fit_cae(train, val, cfg) -> CAEScorer:  # noqa: ARG001
    torch.manual_seed(cfg.seed)
    net = ConvAE(train.images.shape[1], train.images.shape[-1])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_g)
    net.train()
    for _, x in epochs_of(train.images, cfg):
        loss = F.mse_loss(net(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return CAEScorer(net)

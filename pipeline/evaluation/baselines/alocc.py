"""ALOCC-style baseline (Sabokrou et al. 2018): whole-image reconstructor R + discriminator D.

R is a denoising autoencoder (input + N(0, 0.1) noise) trained with L2 + adversarial
loss; D learns "real normal image" vs "R's output". Test score: -logit D(R(x)) (ALOCC
scores D(R(x))); pixel map: |x - R(x)|.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from patchrank.pipeline.evaluation.baselines.nets import ConvAE, ImageDiscriminator, apply, epochs_of
from patchrank.pipeline.evaluation.harness import EvalResult, SliceLevel


class ALOCCScorer(SliceLevel):
    name = "alocc"

    def __init__(self, recon: ConvAE, disc: ImageDiscriminator) -> None:
        self.recon, self.disc = recon, disc

    def score(self, images: np.ndarray, foreground: np.ndarray, position: np.ndarray | None = None) -> EvalResult:
        rec = apply(self.recon, images)
        scores = -apply(self.disc, rec.astype(np.float32))
        err = np.abs(rec - images).mean(1)
        return EvalResult(scores.astype(np.float64), np.where(foreground[:, 0], err, 0.0).astype(np.float32))


def fit_alocc(train, val, cfg, adv_weight: float = 0.2, noise: float = 0.1) -> ALOCCScorer:  # noqa: ARG001
    torch.manual_seed(cfg.seed)
    c, s = train.images.shape[1], train.images.shape[-1]
    recon, disc = ConvAE(c, s), ImageDiscriminator(c)
    opt_r = torch.optim.Adam(recon.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(cfg.seed)
    recon.train()
    disc.train()
    for _, x in epochs_of(train.images, cfg):
        fake = recon(x + noise * torch.randn(x.shape, generator=gen))
        adv = F.binary_cross_entropy_with_logits(disc(fake), torch.ones(len(x)))
        loss_r = F.mse_loss(fake, x) + adv_weight * adv
        opt_r.zero_grad(set_to_none=True)
        loss_r.backward()
        opt_r.step()
        logits = disc(torch.cat([x, fake.detach()]))
        target = torch.cat([torch.ones(len(x)), torch.zeros(len(x))])
        loss_d = F.binary_cross_entropy_with_logits(logits, target)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
    return ALOCCScorer(recon, disc)

"""Per-patch losses and their rank-weighted aggregation.

All patch maps live on the discriminator's logit grid: a pixel map (B, 1, H, W) is
average-pooled with kernel = stride = P (the discriminator's patch size) to
(B, 1, H/P, W/P), then flattened to (B, N) for ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ranking import ranked_sum


@dataclass(frozen=True)
class RankConfig:
    """Targeted patch ranking parameters (see model.ranking for the formula)."""

    __pydantic_config__ = {"extra": "forbid"}  # read by pydantic when a TrainConfig embeds it

    k: int = 8
    decay: float = 0.9
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 1 or not 0 < self.decay <= 1 or self.floor < 0:
            raise ValueError(f"rank needs k >= 1, 0 < decay <= 1, floor >= 0; got {self}")

    def __call__(self, values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return ranked_sum(values, self.k, self.decay, self.floor, valid)


# Every patch weighted the same (k beyond any patch count, no decay): the training losses'
# default and the "no ranking" ablation.
UNIFORM_RANK = RankConfig(k=1_000_000, decay=1.0, floor=0.0)


def to_patches(pixel_map: torch.Tensor, patch: int) -> torch.Tensor:
    """pixel_map: (B, C, H, W) -> (B, H/patch, W/patch), channel-averaged patch means."""
    return F.avg_pool2d(pixel_map.mean(1, keepdim=True), patch)[:, 0]


def reconstruction_patch_loss(
    x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor, patch: int, masked_weight: float
) -> torch.Tensor:
    """L1 reconstruction loss per patch, hidden pixels weighted (1 + masked_weight).

    x, x_hat: (B, C, H, W); mask: (B, 1, H, W) 1 = hidden -> (B, N) with N = HW / patch**2.
    """
    pix = (x - x_hat).abs() * (1.0 + masked_weight * mask)  # (B, C, H, W)
    return to_patches(pix, patch).flatten(1)


def lsgan_patch_loss(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Least-squares GAN loss per patch. logits: (B, 1, h, w) -> (B, h*w)."""
    return ((logits - target) ** 2).flatten(1)

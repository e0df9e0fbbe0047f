"""Tiny stand-ins for the networks, shared by the scoring tests (importable like servicekit)."""

from __future__ import annotations

import torch


class CopyRecon(torch.nn.Module):
    """A 'perfect normal model' stand-in: predicts a constant normal intensity."""

    in_channels, base_channels, depth = 1, 1, 1

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, mask):
        return torch.full_like(x, self.value)


class ZeroDisc(torch.nn.Module):
    """A discriminator with no opinion: zero logits on a 4-px patch grid."""

    patch_size = 4

    def forward(self, x):
        return torch.zeros(x.shape[0], 1, x.shape[2] // 4, x.shape[3] // 4)


class Mean(torch.nn.Module):
    """Reconstructs every hidden pixel as the image mean: a residual that knows no anatomy."""

    def forward(self, x, mask):
        return x.mean((2, 3), keepdim=True).expand_as(x)


def bare(**overrides):
    """The paper's method alone (every evidence term, context, gate and map filter off; absolute
    residual; top-4 ranking): a ScoringConfig whose behaviour each model test then switches on piece by piece."""
    from patchrank.model import RankConfig, ScoringConfig

    off = dict(
        residual="abs", pixel_smooth=3, pixel_close=0, pixel_guide=0,
        pixel_guide_eps=0.1, pixel_slice_weight=0.0, pixel_slice_margin=2.0, stat_prior=0.0, intensity_weight=0.0,
        symmetry_weight=0.0, prior_smooth=5, pixel_prior_scale=1.0, appearance_weight=0.0, shape_weight=0.0,
        context_radius=0, rank=RankConfig(k=4, decay=0.8),
    )  # fmt: skip
    return ScoringConfig(**{**off, **overrides})

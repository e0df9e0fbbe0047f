"""Feature evidence: how unlike every normal patch a patch looks to the reconstructor's encoder.

Training on normal images only gives the masked reconstructor an encoder whose features
describe local appearance at several scales. The residual asks "can the hidden patch be
inpainted from its surroundings?"; an abnormal region inpaints well from abnormal
surroundings (measured on dermoscopy, docs/experiments.md), but its *features* are still unlike
any normal patch's. So, PatchCore-style but on the model's own encoder (nothing pretrained,
nothing downloaded):

    f(patch) = encoder levels 1 .. depth-1 of the unmasked image, average-pooled onto the
               patch grid and concatenated, z-scored per channel with the normal patches' statistics
    e(patch) = distance to the nearest patch in a bank of normal patches' features,
               calibrated (z-score) against normal patches of images the bank was not built from

The bank is a seeded sample of at most `BANK_SIZE` valid (foreground) patches of the normal
images the score statistics are fitted on; the calibration splits those images into two
halves, each scored against the other half's bank, as a new image will be scored. The
calibrated evidence is added, with its weight, to each patch's score before the ranking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, EvidenceTerm, NormalSet

BANK_SIZE = 4096
KEYS = ("feat_mean", "feat_std", "feat_bank", "feat_cal")
_EPS = 1e-6
_CHUNK = 4096


@torch.no_grad()
def encoder_features(recon: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, F, h, w): the encoder's levels 1 .. depth-1 (the stem's raw
    pixels and the coarsest bottleneck left out; all levels when the encoder is shallower)
    average-pooled onto the (h, w) patch grid."""
    levels = recon.encode(x)
    use = levels[1:-1] or levels
    return torch.cat([F.adaptive_avg_pool2d(lv.float(), grid) for lv in use], 1)


def _nearest(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """q: (P, F), bank: (N, F) -> (P,) distance to the nearest bank row (in chunks of queries). The nearest row
    is found with cdist's matrix-product form; the distance to it is then computed directly, since that form
    loses precision near 0 (|q|^2 + |b|^2 - 2 q.b) and a patch close to a bank patch would carry its rounding."""
    if q.shape[0] == 0:
        return q.new_zeros(0)
    out = []
    for i in range(0, q.shape[0], _CHUNK):
        part = q[i : i + _CHUNK]
        out.append((part - bank[torch.cdist(part, bank).argmin(1)]).norm(dim=1))
    return torch.cat(out)


def _bank(patches: torch.Tensor, seed: int) -> torch.Tensor:
    """(P, F) -> at most BANK_SIZE rows, a seeded random sample."""
    if patches.shape[0] <= BANK_SIZE:
        return patches
    g = torch.Generator().manual_seed(seed)
    return patches[torch.randperm(patches.shape[0], generator=g)[:BANK_SIZE]]


def fit_features(feats: torch.Tensor, valid: torch.Tensor, seed: int = 0) -> tuple[dict, torch.Tensor | None]:
    """Normal images' patch features (N, F, h, w) and valid patches (N, h, w) -> ({feat_mean,
    feat_std (F,), feat_bank (<= BANK_SIZE, F) z-scored, feat_cal (2,) mean/std of held-out
    nearest distances}, held-out calibrated evidence (N, h, w), 0 on invalid patches, which is
    what a new normal image will show). All None with fewer than 4 images or 8 valid patches."""
    n = feats.shape[0]
    rows = feats.permute(0, 2, 3, 1)  # (N, h, w, F)
    if n < 4 or int(valid.sum()) < 8:
        return dict.fromkeys(KEYS), None
    mean = rows[valid].mean(0)
    std = rows[valid].std(0).clamp_min(_EPS)
    z = (rows - mean) / std
    parity = torch.arange(n, device=valid.device) % 2
    even, odd = (parity == 0)[:, None, None] & valid, (parity == 1)[:, None, None] & valid
    dist = torch.zeros(valid.shape, device=feats.device)
    for fit, held in ((even, odd), (odd, even)):
        if held.any() and fit.any():
            dist[held] = _nearest(z[held], _bank(z[fit], seed))
    held_all = dist[valid]
    cal = torch.stack([held_all.mean(), held_all.std().clamp_min(_EPS)])
    stats = {"feat_mean": mean, "feat_std": std, "feat_bank": _bank(z[valid], seed), "feat_cal": cal}
    return stats, torch.where(valid, (dist - cal[0]) / cal[1], torch.zeros_like(dist))


def feature_evidence(
    recon: nn.Module, x: torch.Tensor, grid: tuple[int, int], stats, weight: float
) -> torch.Tensor | None:
    """x: (B, C, H, W) -> weight x calibrated nearest-normal-patch distance (B, h, w) on the
    patch grid; None when off or the statistics lack a bank (older checkpoints)."""
    if weight <= 0 or stats.get("feat_bank") is None:
        return None
    f = encoder_features(recon, x, grid).permute(0, 2, 3, 1)  # (B, h, w, F)
    z = (f - stats["feat_mean"].to(f)) / stats["feat_std"].to(f)
    d = _nearest(z.reshape(-1, z.shape[-1]), stats["feat_bank"].to(f)).reshape(z.shape[:3])
    return weight * (d - float(stats["feat_cal"][0])) / float(stats["feat_cal"][1])


class FeatureTerm(EvidenceTerm):
    """Patch level: distance of a patch's encoder features to the nearest normal patch's, calibrated."""

    name, level = "features", "patch"

    def weight(self, cfg) -> float:
        return cfg.feature_weight

    def collect(self, batch: Batch, cfg):
        return encoder_features(batch.recon, batch.x, batch.grid).cpu()

    def fit(self, collected: list, normal: NormalSet, cfg):
        state, held_out = fit_features(torch.cat(collected), normal.valid)
        if held_out is None:
            return None, None
        return state, cfg.feature_weight * held_out

    def apply(self, batch: Batch, state: dict, cfg):
        return feature_evidence(batch.recon, batch.x, batch.grid, state, cfg.feature_weight)

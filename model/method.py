"""The paper's method: masked reconstruction, PatchGAN evidence, rank-weighted patch scores.

For a batch x: (B, C, H, W) of preprocessed slices:
 1. Masked reconstruction: reconstruct x under each of the M complementary grid masks (one forward of
    the B images per mask) and keep, for every pixel, the reconstruction made while it was hidden.
    Residual per pixel: |x - composite| ("abs") or relu(x - composite) ("positive", lesions brighter
    than normal tissue), channel-averaged, then z-scored against normal data per pixel position.
 2. PatchGAN evidence: D(composite) - D(x) per discriminator patch, how much less real the patch looks
    than its own normal reconstruction (which cancels how hard that kind of patch is for D).
 3. Ranking: patch score = rec_weight * z(mean calibrated residual in the patch) + disc_weight * z(D
    evidence); image score = rank-weighted sum of the top foreground patch scores (model.ranking),
    z-scored against normal images.
Evidence terms added since (model/evidence/) plug in at declared levels; model.scoring composes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ScoringConfig
from .masks import complementary_masks, hideable
from .ranking import ranked_sum

_EPS = 1e-6


@dataclass
class MethodStats:
    """Normal-data statistics of the method itself. Pixel stats: (1, 1, H, W)."""

    pix_mean: torch.Tensor
    pix_std: torch.Tensor
    rec_mean: float = 0.0
    rec_std: float = 1.0
    disc_mean: float = 0.0
    disc_std: float = 1.0
    image_mean: float = 0.0
    image_std: float = 1.0


@torch.no_grad()
def masked_composite(recon: nn.Module, x: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """x: (B, C, H, W) -> the test-time reconstruction (B, C, H, W) float32: every foreground
    pixel taken from the reconstruction made while the complementary grid masks hid it."""
    b, _, h, w = x.shape
    if cfg.grid_period == 0:  # "no masking" ablation: plain autoencoding, nothing hidden
        return recon(x, torch.zeros(b, 1, h, w, dtype=x.dtype, device=x.device)).float()
    masks = complementary_masks(h, w, cfg.cell(w), cfg.grid_period).to(x)  # (M, 1, H, W)
    keep = hideable(x)  # (B, 1, H, W): background never hidden
    composite = x.float()
    # One forward of the B images per mask, not one of all B*M copies (docs/decisions.md, "Inference"); each
    # pixel is hidden by exactly one mask and taken from the reconstruction made while it was.
    for mask in masks:
        hidden = mask * keep
        composite = torch.where(hidden.bool(), recon(x, hidden).float(), composite)
    return composite


@torch.no_grad()
def raw_maps(
    recon: nn.Module, disc: nn.Module, x: torch.Tensor, cfg: ScoringConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (B, C, H, W) -> residual (B, 1, H, W), D evidence (B, h, w), composite (B, C, H, W)."""
    composite = masked_composite(recon, x, cfg)
    diff = x.float() - composite
    residual = diff.abs() if cfg.residual == "abs" else diff.clamp_min(0)
    residual = residual.mean(1, keepdim=True)
    logits = disc(x).float()[:, 0]  # (B, h, w)
    if cfg.disc_weight != 0:  # less real than its own normal reconstruction
        evidence = disc(composite.to(x.dtype)).float()[:, 0] - logits
    else:  # unused (weight 0): skip the second discriminator pass
        evidence = -logits
    return residual, evidence, composite


def position_stats(values: torch.Tensor, fg: torch.Tensor, prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean/std counted only where the position is foreground.

    values, fg: (N, 1, H, W) -> mean, std: (1, 1, H, W). Positions seen as foreground in
    few slices (outlines differ between people) are shrunk towards the global foreground
    statistics with `prior` pseudo-slices, so an unusual outline cannot divide by a
    near-zero sigma; sigma is floored at half the global sigma.
    """
    fg = fg.to(values.dtype)
    n = fg.sum(0, keepdim=True)
    vals = values[fg.bool()]
    g_mean = float(vals.mean()) if vals.numel() else 0.0
    g_var = float(vals.var()) if vals.numel() > 1 else 1.0
    mean = ((values * fg).sum(0, keepdim=True) + prior * g_mean) / (n + prior).clamp_min(_EPS)
    dev = ((values - mean) ** 2 * fg).sum(0, keepdim=True)
    std = ((dev + prior * g_var) / (n + prior).clamp_min(_EPS)).sqrt()
    return mean, std.clamp_min(0.5 * g_var**0.5 + _EPS)


def fit_pixel_stats(residual: torch.Tensor, fg: torch.Tensor, cfg: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal residuals (N, 1, H, W) and foreground -> per-position mean, std (1, 1, H, W)."""
    if cfg.stat_prior > 0:
        return position_stats(residual, fg.float(), cfg.stat_prior)
    pix_mean = residual.mean(0, keepdim=True)
    pix_std = residual.std(0, keepdim=True) if len(residual) > 1 else torch.ones_like(pix_mean)
    # Floor sigma at half its median over all positions (background included).
    return pix_mean, pix_std.clamp_min(float(pix_std.median()) * 0.5 + _EPS)


def calibrate(residual: torch.Tensor, stats: MethodStats | None) -> torch.Tensor:
    """Residual (B, 1, H, W) -> z-scores against normal data per pixel position (unchanged without stats)."""
    if stats is None:
        return residual
    return (residual - stats.pix_mean.to(residual)) / stats.pix_std.to(residual)


def patch_valid(foreground: torch.Tensor | None, shape: tuple[int, ...], patch: int, cfg: ScoringConfig):
    """-> (B, h, w) bool: patches with at least `min_foreground` foreground are ranked."""
    if foreground is None:
        return torch.ones(shape, dtype=torch.bool)
    frac = F.avg_pool2d(foreground.float(), patch)[:, 0]  # (B, h, w)
    return frac >= cfg.min_foreground


def patch_scores(
    res_cal: torch.Tensor,
    evidence: torch.Tensor,
    foreground: torch.Tensor | None,
    stats: MethodStats | None,
    cfg: ScoringConfig,
    pixel_terms: torch.Tensor | None = None,
    patch_terms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Calibrated residual (B, 1, H, W), D evidence (B, h, w) -> patch scores, rec_z, disc_z (B, h, w),
    valid (B, h, w) and the raw ranked image score (B,). pixel_terms (B, 1, H, W) join the residual
    before pooling; patch_terms (B, h, w) join the patch scores before the ranking."""
    patch = res_cal.shape[-1] // evidence.shape[-1]
    cal = res_cal if pixel_terms is None else res_cal + pixel_terms
    rec = F.avg_pool2d(cal, patch)[:, 0]  # (B, h, w)
    s = stats
    rec_z = (rec - (s.rec_mean if s else 0.0)) / (s.rec_std if s else 1.0)
    disc_z = (evidence - (s.disc_mean if s else 0.0)) / (s.disc_std if s else 1.0)
    if cfg.disc_weight == 0:
        disc_z = torch.zeros_like(disc_z)
    scores = cfg.rec_weight * rec_z + cfg.disc_weight * disc_z
    if patch_terms is not None:
        scores = scores + patch_terms.to(scores)
    valid = patch_valid(foreground, tuple(scores.shape), patch, cfg).to(scores.device)
    image_raw = ranked_sum(scores.flatten(1), cfg.rank.k, cfg.rank.decay, cfg.rank.floor, valid.flatten(1))
    return scores, rec_z, disc_z, valid, image_raw


def robust_std(t: torch.Tensor) -> float:
    return max(float(t.std()), _EPS) if t.numel() > 1 else 1.0


def fit_score_scales(
    stats: MethodStats,
    residual: torch.Tensor,
    evidence: torch.Tensor,
    fg: torch.Tensor,
    cfg: ScoringConfig,
    pixel_terms: torch.Tensor | None,
    patch_terms: torch.Tensor | None,
) -> None:
    """Normal data's raw maps (and the terms' evidence on it) -> the patch and image z-score pairs, in place."""
    res_cal = calibrate(residual, stats)
    _, rec_z, disc_z, valid, _ = patch_scores(res_cal, evidence, fg, stats, cfg, pixel_terms, patch_terms)
    stats.rec_mean, stats.rec_std = float(rec_z[valid].mean()), robust_std(rec_z[valid])
    stats.disc_mean, stats.disc_std = float(disc_z[valid].mean()), robust_std(disc_z[valid])
    *_, image_raw = patch_scores(res_cal, evidence, fg, stats, cfg, pixel_terms, patch_terms)
    stats.image_mean, stats.image_std = float(image_raw.mean()), robust_std(image_raw)

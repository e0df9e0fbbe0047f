"""Normal-appearance evidence for 2D images: distance from the subspace of normal images.

Slices of volumes get anatomical evidence (model.evidence.anatomy: an intensity atlas per position
and left-right symmetry). 2D images (dermoscopy, photographs) have neither a shared
anatomy nor a mirror axis, but a collection of normal images still has a typical
appearance: the mean image plus its leading principal components (eigen-images). What
a new image's pixels cannot be explained by that linear subspace is evidence of
abnormal appearance, per pixel:

    e(x) = sum over channels of (x - mean - P P^T (x - mean))^2,   P = top-k components

calibrated per position against normal images that the subspace was *not* fitted on
(two halves, each scored under the other half's subspace), so the calibration sees
held-out error, as new images will. The final subspace is fitted on all the normal
images. Measured on the ISIC folds in docs/experiments.md.
"""

from __future__ import annotations

import torch

from .base import Batch, EvidenceTerm, NormalSet, on_volume

_EPS = 1e-6
KEYS = ("app_mean", "app_basis", "app_cal_mean", "app_cal_std")


def _subspace(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, D) -> mean (D,), basis (k', D) with k' = min(k, N - 1) orthonormal rows."""
    mean = x.mean(0)
    k = max(0, min(k, x.shape[0] - 1))
    if k == 0:
        return mean, x.new_zeros(0, x.shape[1])
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].contiguous()


def subspace_error(x: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W); mean: (C*H*W,) or (1, C, H, W); basis: (k, C*H*W) -> (B, 1, H, W)
    squared error of the projection onto the subspace, summed over channels."""
    b, c, h, w = x.shape
    r = x.float().reshape(b, -1) - mean.reshape(1, -1).to(x.device, torch.float32)
    bas = basis.to(x.device, torch.float32)
    if bas.shape[0]:
        r = r - (r @ bas.T) @ bas
    return (r * r).reshape(b, c, h, w).sum(1, keepdim=True)


def fit_appearance(x: torch.Tensor, components: int) -> tuple[dict, torch.Tensor | None]:
    """Normal 2D images x: (N, C, H, W) -> ({app_mean (1, C, H, W), app_basis (k, C*H*W),
    app_cal_mean, app_cal_std (1, 1, H, W)}, held-out error (N, 1, H, W)): each image's error
    under the subspace of the other half, which is what the calibration saw and what a new
    normal image will look like (use it, not the in-sample error, to normalise downstream
    scores). All None with fewer than 4 images."""
    n = x.shape[0]
    if n < 4:
        return dict.fromkeys(KEYS), None
    flat = x.float().reshape(n, -1)
    even = torch.arange(n) % 2 == 0
    err = torch.empty(n, 1, *x.shape[2:])
    for fit in (even, ~even):
        mean, basis = _subspace(flat[fit], components)
        err[~fit] = subspace_error(x[~fit], mean, basis).cpu()
    cal_mean = err.mean(0, keepdim=True)
    cal_std = err.std(0, keepdim=True).clamp_min(float(err.std(0).median()) * 0.5 + _EPS)
    mean, basis = _subspace(flat, components)
    stats = {
        "app_mean": mean.reshape(1, *x.shape[1:]),
        "app_basis": basis,
        "app_cal_mean": cal_mean,
        "app_cal_std": cal_std,
    }
    return stats, err


def calibrated(err: torch.Tensor, stats, weight: float) -> torch.Tensor:
    """Subspace error (B, 1, H, W) -> weight x its z-score against held-out normal images."""
    return weight * (err - stats["app_cal_mean"].to(err.device)) / stats["app_cal_std"].to(err.device)


def appearance_evidence(x: torch.Tensor, position: torch.Tensor | None, stats, weight: float) -> torch.Tensor | None:
    """x: (B, C, H, W) -> weight x calibrated subspace error (B, 1, H, W) on 2D images (unknown
    axial position), zero on slices of volumes; None when off or the statistics lack it."""
    if weight <= 0 or stats.get("app_basis") is None:
        return None
    b = x.shape[0]
    flat_2d = ~on_volume(position, b, x.device)
    if not flat_2d.any():
        return None
    z = calibrated(subspace_error(x, stats["app_mean"], stats["app_basis"]), stats, weight)
    return torch.where(flat_2d[:, None, None, None], z, torch.zeros_like(z))


class AppearanceTerm(EvidenceTerm):
    """Pixel level, 2D images: held-out-calibrated error of the normal images' principal subspace."""

    name, level = "appearance", "pixel"

    def weight(self, cfg) -> float:
        return cfg.appearance_weight

    def collect(self, batch: Batch, cfg):
        is_2d = ~on_volume(batch.position, len(batch.x), batch.x.device)
        return batch.x[is_2d].float().cpu()

    def fit(self, collected: list, normal: NormalSet, cfg):
        images = torch.cat(collected)
        if not len(images):
            return None, None
        state, held_out = fit_appearance(images, cfg.appearance_components)
        if state["app_basis"] is None:
            return None, None
        n, _, h, w = normal.foreground.shape
        full = torch.zeros(n, 1, h, w)
        full[~on_volume(normal.position, n, "cpu")] = calibrated(held_out, state, cfg.appearance_weight)
        return state, full

    def apply(self, batch: Batch, state: dict, cfg):
        return appearance_evidence(batch.x, batch.position, state, cfg.appearance_weight)

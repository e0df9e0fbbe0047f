"""The per-pixel anomaly map (heatmaps, pixel AUROC, Dice) from the calibrated evidence.

map = rec_weight x (box-smoothed calibrated residual, z-scored with the patch statistics)
then, in this order and each optional:
 - a grey-scale closing (`pixel_close`): a low hole inside a high region (a tumour's dark
   necrotic core inside its bright FLAIR oedema) takes the surrounding score;
 - a guided filter (`pixel_guide` radius, `pixel_guide_eps`; He et al., TPAMI 2013) with the
   input image as the guide: the map becomes locally an affine function of the image's
   intensity, so the blur of the smoothing and closing snaps back to the image's own edges
   (a lesion's border) while flat regions stay smooth;
 - background pixels set to the map's minimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, H, W) -> mean over the centred k x k window (edges: mean of what is inside), as
    two separable 1-D passes (the clipped window is a product of clipped intervals: exact)."""
    if k <= 1:
        return t
    t = F.avg_pool2d(t, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)
    return F.avg_pool2d(t, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)


def square_max(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, H, W) -> max over the centred k x k window, as two separable 1-D passes (exact)."""
    t = F.max_pool2d(t, (k, 1), stride=1, padding=(k // 2, 0))
    return F.max_pool2d(t, (1, k), stride=1, padding=(0, k // 2))


def guided_filter(p: torch.Tensor, guide: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Edge-preserving smoothing of p (B, 1, H, W) guided by guide (B, 1, H, W).

    In every (2r+1)^2 window q = a * guide + b with a = cov(guide, p) / (var(guide) + eps),
    b = mean(p) - a * mean(guide); a and b are averaged over the windows covering a pixel.
    eps (in guide units squared) sets what counts as an edge: where the guide varies much
    more than sqrt(eps) the output follows it, where it is flat the output is p's mean."""
    k = 2 * radius + 1
    mean_i, mean_p = box_mean(guide, k), box_mean(p, k)
    cov = box_mean(guide * p, k) - mean_i * mean_p
    var = box_mean(guide * guide, k) - mean_i * mean_i
    a = cov / (var.clamp_min(0) + eps)
    b = mean_p - a * mean_i
    return box_mean(a, k) * guide + box_mean(b, k)


def pixel_map(
    pcal: torch.Tensor,
    guide: torch.Tensor | None,
    foreground: torch.Tensor | None,
    rec_mean: float,
    rec_std: float,
    cfg,
) -> torch.Tensor:
    """pcal: (B, 1, H, W) calibrated pixel evidence; guide: (B, C, H, W) the preprocessed input
    (None: no guided filter); foreground: (B, 1, H, W) or None -> (B, H, W)."""
    smooth = box_mean(pcal, cfg.pixel_smooth)
    pixel = cfg.rec_weight * (smooth - rec_mean) / rec_std
    if cfg.pixel_close > 1:  # closing = dilation then erosion: never lowers a value
        pixel = -square_max(-square_max(pixel, cfg.pixel_close), cfg.pixel_close)
    if cfg.pixel_guide > 0 and guide is not None:
        pixel = guided_filter(pixel, guide.float().mean(1, keepdim=True), cfg.pixel_guide, cfg.pixel_guide_eps)
    pixel = pixel[:, 0]
    if foreground is not None:
        pixel = torch.where(foreground[:, 0].bool(), pixel, torch.full_like(pixel, pixel.min().item()))
    return pixel

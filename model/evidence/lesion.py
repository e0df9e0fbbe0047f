"""Lesion-shape evidence for 2D images whose foreground is a lesion (dermoscopy).

When preprocessing segments a lesion (`image_foreground="dark"`), the lesion's outline and
colour spread carry evidence that pixel residuals average away: dermatology's ABCD rule reads
Asymmetry, Border irregularity, Colour variegation and Diameter. Each image gets a descriptor

    [area fraction, colour std inside the lesion per channel, border irregularity
     (perimeter^2 / (4 pi area)), asymmetry about each principal axis]

read on the lesion proper (`dark_lesion`: pixels darker than Otsu's threshold, without the
dilation preprocessing adds so that ranked patches include the border; the dilation smooths
the outline the descriptors measure), and normal images' descriptors (z-scored per dimension)
form a bank. A new image's evidence is its mean distance to the `SHAPE_NEIGHBOURS` nearest
normal descriptors, calibrated against
the bank's own leave-one-out distances (what a new normal image shows), so that it is a
z-score added to the image score. Measured on the ISIC folds in docs/experiments.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Batch, EvidenceTerm, NormalSet, on_volume

SHAPE_NEIGHBOURS = 5
KEYS = ("shape_mean", "shape_std", "shape_bank", "shape_cal")
_EPS = 1e-6


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    v = values.double().reshape(-1)
    lo, hi = float(v.min()), float(v.max())
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64, device=v.device) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    w1 = w0[-1] - w0
    c0 = (hist * centres).cumsum(0)
    m0 = c0 / w0.clamp_min(1)
    m1 = (c0[-1] - c0) / w1.clamp_min(1)
    return float(centres[torch.argmax(w0 * w1 * (m0 - m1) ** 2)])


def dark_lesion(img: torch.Tensor) -> torch.Tensor | None:
    """img: (C, H, W) -> (H, W) bool: pixels darker than Otsu's threshold of the luminance
    inside the central disc (dermoscopy vignetting darkens the corners too); None when the disc
    has no contrast. The one lesion rule: preprocessing dilates it into the foreground."""
    lum = img.float().mean(0)
    h, w = lum.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=lum.device),
        torch.arange(w, dtype=torch.float32, device=lum.device),
        indexing="ij",
    )
    disc = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 0.8
    inside = lum[disc]
    if float(inside.max() - inside.min()) < 1e-3:
        return None
    return (lum < otsu_threshold(inside)) & disc


def lesion_core(x: torch.Tensor, foreground: torch.Tensor, min_fraction: float = 0.01) -> torch.Tensor:
    """x: (B, C, H, W), foreground: (B, 1, H, W) -> (B, 1, H, W) bool: the foreground's dark
    lesion proper (`dark_lesion` inside it); the foreground itself where that is under
    `min_fraction` of the image."""
    out = []
    for img, fg in zip(x, foreground.bool()):
        dark = dark_lesion(img)
        core = fg[0] if dark is None else dark & fg[0]
        out.append(core if float(core.float().mean()) >= min_fraction else fg[0])
    return torch.stack(out)[:, None]


def _asymmetry(m: torch.Tensor) -> torch.Tensor:
    """m: (B, H, W) float mask -> (B, 2): fraction of the lesion whose mirror image about each
    principal axis (through the centroid) falls outside the lesion; 0 for a symmetric shape."""
    b, h, w = m.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=m.dtype, device=m.device), torch.arange(w, dtype=m.dtype, device=m.device), indexing="ij"
    )
    n = m.sum((1, 2)).clamp_min(1.0)
    cy, cx = (m * yy).sum((1, 2)) / n, (m * xx).sum((1, 2)) / n
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    cov = torch.stack([(m * dy * dy).sum((1, 2)), (m * dy * dx).sum((1, 2)), (m * dx * dx).sum((1, 2))], 1) / n[:, None]
    mat = torch.stack([cov[:, 0], cov[:, 1], cov[:, 1], cov[:, 2]], 1).reshape(b, 2, 2)
    _, vecs = torch.linalg.eigh(mat + _EPS * torch.eye(2, dtype=m.dtype, device=m.device))  # (B, 2, 2), columns = axes
    out = []
    for k in range(2):
        v = vecs[:, :, k]  # (B, 2) unit (y, x)
        proj = dy * v[:, 0, None, None] + dx * v[:, 1, None, None]
        ry = 2 * proj * v[:, 0, None, None] - dy + cy[:, None, None]  # mirror of each pixel
        rx = 2 * proj * v[:, 1, None, None] - dx + cx[:, None, None]
        grid = torch.stack([rx / max(w - 1, 1) * 2 - 1, ry / max(h - 1, 1) * 2 - 1], -1)
        mirrored = F.grid_sample(m[:, None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[:, 0]
        out.append(1 - (m * mirrored).sum((1, 2)) / n)
    return torch.stack(out, 1)


def lesion_descriptors(x: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) preprocessed images; foreground: (B, 1, H, W) lesion mask -> (B, 4 + C),
    measured on the lesion proper (`lesion_core`)."""
    m = lesion_core(x, foreground).float()
    n = m.sum((1, 2, 3)).clamp_min(1.0)
    mu = (x * m).sum((2, 3)) / n[:, None]
    sd = ((((x - mu[:, :, None, None]) ** 2) * m).sum((2, 3)) / n[:, None]).clamp_min(0).sqrt()
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    perimeter = (m - eroded).sum((1, 2, 3))
    border = perimeter**2 / (4 * math.pi * n)
    area = m.mean((1, 2, 3))
    return torch.cat([area[:, None], sd, border[:, None], _asymmetry(m[:, 0])], 1).float()


def _knn_distance(q: torch.Tensor, bank: torch.Tensor, skip_self: bool = False) -> torch.Tensor:
    d = torch.cdist(q, bank)
    k = min(SHAPE_NEIGHBOURS + int(skip_self), bank.shape[0])
    near = d.topk(k, dim=1, largest=False).values
    return (near[:, 1:] if skip_self else near).mean(1)


def fit_lesion_shape(x: torch.Tensor, foreground: torch.Tensor) -> dict:
    """Normal 2D images and their lesion masks -> {shape_mean, shape_std (D,), shape_bank (N, D)
    z-scored descriptors, shape_cal (2,) mean/std of the bank's leave-one-out kNN distance};
    all None with fewer than SHAPE_NEIGHBOURS + 2 images."""
    if x.shape[0] < SHAPE_NEIGHBOURS + 2:
        return dict.fromkeys(KEYS)
    desc = lesion_descriptors(x, foreground)
    mean, std = desc.mean(0), desc.std(0).clamp_min(_EPS)
    bank = (desc - mean) / std
    loo = _knn_distance(bank, bank, skip_self=True)
    cal = torch.stack([loo.mean(), loo.std().clamp_min(_EPS)])
    return {"shape_mean": mean, "shape_std": std, "shape_bank": bank, "shape_cal": cal}


def shape_evidence(
    x: torch.Tensor, foreground: torch.Tensor | None, position: torch.Tensor | None, stats, weight: float
) -> torch.Tensor | None:
    """-> (B,) weight x calibrated kNN distance of each image's lesion descriptor from the normal
    bank, on 2D images (unknown axial position); zero on slices of volumes; None when off,
    without a foreground, or when the statistics lack a bank."""
    if weight <= 0 or foreground is None or stats.get("shape_bank") is None:
        return None
    b = x.shape[0]
    flat_2d = ~on_volume(position, b, "cpu")
    out = torch.zeros(b)
    if flat_2d.any():
        sel = flat_2d.to(x.device)
        desc = lesion_descriptors(x[sel].float(), foreground[sel]).cpu()
        z = (desc - stats["shape_mean"].to(desc)) / stats["shape_std"].to(
            desc
        )  # statistics live where the checkpoint was loaded
        dist = _knn_distance(z, stats["shape_bank"].to(desc))
        out[flat_2d] = weight * (dist - float(stats["shape_cal"][0])) / float(stats["shape_cal"][1])
    return out.to(x.device)


class LesionShapeTerm(EvidenceTerm):
    """Image level, 2D images with a segmented dark lesion: ABCD-descriptor distance from normal images."""

    name, level = "lesion_shape", "image"

    def weight(self, cfg) -> float:
        return cfg.shape_weight

    def collect(self, batch: Batch, cfg):
        is_2d = ~on_volume(batch.position, len(batch.x), "cpu")
        fg = (
            batch.foreground.cpu()
            if batch.foreground is not None
            else torch.ones(len(batch.x), 1, *batch.x.shape[2:], dtype=torch.bool)
        )
        return batch.x[is_2d.to(batch.x.device)].float().cpu(), fg[is_2d]

    def fit(self, collected: list, normal: NormalSet, cfg):
        images, fg = torch.cat([c[0] for c in collected]), torch.cat([c[1] for c in collected])
        if not len(images) or bool(fg.all()):  # no 2D images, or no lesion segmented (whole-image foreground)
            return None, None
        state = fit_lesion_shape(images, fg)
        return (state if state["shape_bank"] is not None else None), None

    def apply(self, batch: Batch, state: dict, cfg):
        return shape_evidence(batch.x, batch.foreground, batch.position, state, cfg.shape_weight)

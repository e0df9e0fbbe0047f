"""Anatomical evidence that needs no network, calibrated against normal slices.

Two maps computed from the preprocessed input itself, added to the calibrated
reconstruction residual before patches are pooled and ranked (`model.scoring.combine`):

* **position** (`intensity_weight`): how unusual the locally smoothed intensity is for
  this position in normal anatomy: (x_s - mean_p) / std_p with a per-position mean/std
  over normal slices (an intensity atlas of the training subjects).
* **symmetry** (`symmetry_weight`): how much brighter a spot is than the mirror-image spot
  in the other hemisphere, calibrated the same way: x_s - flip_lr(x_s). Normal brains are
  nearly left-right symmetric; a tumour almost never is. Axial slices of RAS-canonical
  volumes have the left-right axis first (dim -2 here), and atlas-registered data such as
  BraTS put the mid-sagittal plane at the image centre.

Both assume anatomy that is aligned across subjects, so only slices of volumes carry them
(finite axial `position`); 2D images (dermoscopy, photographs: a lesion can sit anywhere)
get neither, and their scores are the residual and discriminator evidence alone.

Both are signed like the residual: "positive" counts only brighter-than-normal (FLAIR
lesions), "abs" either direction. Measured on the BraTS folds in docs/quality.md.
"""

from __future__ import annotations

import torch

from .pixelmap import box_mean

_EPS = 1e-6


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


def on_volume(position: torch.Tensor | None, b: int, device) -> torch.Tensor:
    """(B,) bool: which of b images are slices of a volume (finite relative axial position);
    the rest (NaN, or no positions at all) are 2D images."""
    if position is None:
        return torch.zeros(b, dtype=torch.bool, device=device)
    return torch.isfinite(position.to(device).float().reshape(-1))


def raw_priors(
    x: torch.Tensor, foreground: torch.Tensor | None, position: torch.Tensor | None, smooth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (B, C, H, W) -> intensity, mirror difference (B, 1, H, W) and where each is
    defined (B, 1, H, W) bool: the foreground (for symmetry also its mirror) of slices with a
    known axial position (volumes); nowhere on 2D images."""
    b, _, h, w = x.shape
    xs = x.float().mean(1, keepdim=True)
    xs = box_mean(xs, smooth)
    fg = torch.ones(b, 1, h, w, dtype=torch.bool, device=x.device) if foreground is None else foreground.bool()
    fg = fg & on_volume(position, b, x.device)[:, None, None, None]
    return xs, xs - xs.flip(-2), fg, fg & fg.flip(-2)


def fit_prior_stats(
    xs: torch.Tensor, sym: torch.Tensor, fg: torch.Tensor, sym_ok: torch.Tensor, prior: float = 1.0
) -> dict:
    """Normal slices' raw priors -> {int_mean, int_std, sym_mean, sym_std} (1, 1, H, W);
    all None when no normal slice comes from a volume."""
    if not fg.any():
        return dict.fromkeys(("int_mean", "int_std", "sym_mean", "sym_std"))
    out = dict(zip(("int_mean", "int_std"), position_stats(xs, fg, prior)))
    out["sym_mean"], out["sym_std"] = position_stats(sym, sym_ok, prior) if sym_ok.any() else (None, None)
    return out


def _signed(z: torch.Tensor, residual: str) -> torch.Tensor:
    return z.clamp_min(0) if residual == "positive" else z.abs()


def prior_evidence(
    raw: tuple, stats, intensity_weight: float, symmetry_weight: float, residual: str
) -> torch.Tensor | None:
    """raw_priors output + ScoreStats -> weighted calibrated evidence (B, 1, H, W), zero where a
    term is undefined; None when both terms are off or the statistics lack them (older
    checkpoints)."""
    xs, sym, fg, sym_ok = raw
    out = None
    if intensity_weight > 0 and stats is not None and stats.int_mean is not None:
        z = (xs - stats.int_mean.to(xs)) / stats.int_std.to(xs)
        out = intensity_weight * torch.where(fg, _signed(z, residual), torch.zeros_like(z))
    if symmetry_weight > 0 and stats is not None and stats.sym_mean is not None:
        z = (sym - stats.sym_mean.to(sym)) / stats.sym_std.to(sym)
        term = symmetry_weight * torch.where(sym_ok, _signed(z, residual), torch.zeros_like(z))
        out = term if out is None else out + term
    return out

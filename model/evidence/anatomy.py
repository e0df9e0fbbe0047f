"""Anatomical evidence that needs no network, calibrated against normal slices.

Two maps computed from the preprocessed input itself, added to the calibrated
reconstruction residual before patches are pooled and ranked (`model.method.patch_scores`):

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
lesions), "abs" either direction. Measured on the BraTS folds in docs/experiments.md.
"""

from __future__ import annotations

import torch

from ..method import position_stats
from ..pixelmap import box_mean
from .base import Batch, EvidenceTerm, NormalSet, on_volume

_EPS = 1e-6


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
    if intensity_weight > 0 and stats.get("int_mean") is not None:
        z = (xs - stats["int_mean"].to(xs)) / stats["int_std"].to(xs)
        out = intensity_weight * torch.where(fg, _signed(z, residual), torch.zeros_like(z))
    if symmetry_weight > 0 and stats.get("sym_mean") is not None:
        z = (sym - stats["sym_mean"].to(sym)) / stats["sym_std"].to(sym)
        term = symmetry_weight * torch.where(sym_ok, _signed(z, residual), torch.zeros_like(z))
        out = term if out is None else out + term
    return out


class AnatomyTerm(EvidenceTerm):
    """Pixel level, slices of volumes: intensity unusual for this position + left-right asymmetry."""

    name, level = "anatomy", "pixel"

    def weight(self, cfg) -> float:
        return cfg.intensity_weight + cfg.symmetry_weight

    def collect(self, batch: Batch, cfg):
        return [t.cpu() for t in raw_priors(batch.x, batch.foreground, batch.position, cfg.prior_smooth)]

    def fit(self, collected: list, normal: NormalSet, cfg):
        raw = tuple(torch.cat(parts) for parts in zip(*collected))
        state = fit_prior_stats(*raw)
        if state["int_mean"] is None and state["sym_mean"] is None:
            return None, None
        return state, prior_evidence(raw, state, cfg.intensity_weight, cfg.symmetry_weight, cfg.residual)

    def apply(self, batch: Batch, state: dict, cfg):
        raw = raw_priors(batch.x, batch.foreground, batch.position, cfg.prior_smooth)
        return prior_evidence(raw, state, cfg.intensity_weight, cfg.symmetry_weight, cfg.residual)

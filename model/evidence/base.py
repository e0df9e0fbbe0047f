"""The one interface every evidence term added to the paper's method implements.

A term is fitted on normal data into a state (a dict of tensors stored in the checkpoint under
the term's name) and applied to new slices, giving evidence at its declared level:

- "pixel": (B, 1, H, W), added to the calibrated reconstruction residual before patches are pooled
  (and, scaled by `pixel_prior_scale`, to the pixel map);
- "patch": (B, h, w), added to the patch scores before the ranking;
- "image": (B,), added to the normalised image score;
- "scan": slice scores of one scan (S,) -> (S,), applied by `model.scoring.score_scan`.

Fitting runs in the same single pass over the normal slices as the method's own statistics:
`collect` keeps what the term needs from each batch, `fit` turns the collection into the state
and into the term's evidence on those normal images (as a new normal image will show it), which
the method's patch and image statistics then include.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Level = Literal["pixel", "patch", "image", "scan"]


@dataclass
class Batch:
    """A batch of preprocessed slices as a term sees it."""

    x: torch.Tensor  # (B, C, H, W)
    foreground: torch.Tensor | None  # (B, 1, H, W) bool, or None = everything
    position: torch.Tensor | None  # (B,) relative axial position in the volume; NaN = a 2D image
    recon: nn.Module  # the reconstructor (its encoder serves the feature term)
    grid: tuple[int, int]  # the patch grid (h, w)


@dataclass
class NormalSet:
    """What `fit` knows of all the normal slices at once (CPU tensors)."""

    foreground: torch.Tensor  # (N, 1, H, W) bool
    position: torch.Tensor  # (N,)
    valid: torch.Tensor  # (N, h, w) bool: patches that are ranked


class EvidenceTerm:
    name: str = ""
    level: Level = "pixel"

    def weight(self, cfg) -> float:
        raise NotImplementedError

    def collect(self, batch: Batch, cfg) -> Any:
        """One normal batch -> what `fit` needs of it (CPU tensors), or None."""
        return None

    def fit(self, collected: list, normal: NormalSet, cfg) -> tuple[dict | None, torch.Tensor | None]:
        """-> (state, or None when the data has nothing for this term; evidence on the normal set or None)."""
        raise NotImplementedError

    def apply(self, batch: Batch, state: dict, cfg) -> torch.Tensor | None:
        raise NotImplementedError


def on_volume(position: torch.Tensor | None, b: int, device) -> torch.Tensor:
    """(B,) bool: which of b images are slices of a volume (finite relative axial position);
    the rest (NaN, or no positions at all) are 2D images."""
    if position is None:
        return torch.zeros(b, dtype=torch.bool, device=device)
    return torch.isfinite(position.to(device).float().reshape(-1))

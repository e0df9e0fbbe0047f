"""Targeted patch ranking: rank-dependent weights over sorted patch values.

Given N per-patch values v (losses at training time, anomaly scores at test time),
sort them in descending order v_(0) >= v_(1) >= ... and combine

    R(v) = sum_r w_r * v_(r),   w_r = (floor + decay**r * [r < k]) / Z,

with Z chosen so that sum_r w_r = 1. So:
  * floor = 0: only the top-k patches count, the worst weighted most (decay < 1);
  * k >= N, decay = 1 (or floor -> inf): the plain mean ("no ranking" ablation);
  * floor > 0: every patch keeps a little weight, the worst k get extra.
Patches marked invalid (e.g. background outside the brain) are excluded: they sort
last and receive weight 0.
"""

from __future__ import annotations

import torch


def rank_weights(n: int, k: int, decay: float, floor: float = 0.0) -> torch.Tensor:
    """-> w: (n,) float32, non-negative, sums to 1 (see module docstring)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if k < 1 or not (0.0 < decay <= 1.0) or floor < 0.0:
        raise ValueError("need k >= 1, 0 < decay <= 1, floor >= 0")
    r = torch.arange(n, dtype=torch.float64)
    w = floor + torch.where(r < k, decay**r, torch.zeros_like(r))
    return (w / w.sum()).float()


def ranked_sum(
    values: torch.Tensor,
    k: int,
    decay: float,
    floor: float = 0.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank-weighted combination along the last axis.

    values: (B, N) per-patch values; valid: optional (B, N) bool, False = ignore.
    -> (B,) ranked sums. Rows with no valid entry fall back to using all entries.
    Differentiable w.r.t. values (sorting only permutes).
    """
    if values.ndim != 2:
        raise ValueError(f"values must be (B, N), got {tuple(values.shape)}")
    b, n = values.shape
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    valid = valid.clone()
    valid[valid.sum(1) == 0] = True
    counts = valid.sum(1)  # (B,)
    neg = torch.finfo(values.dtype).min
    masked = torch.where(valid, values, torch.full_like(values, neg))
    order = torch.argsort(masked, dim=1, descending=True)
    sorted_vals = torch.gather(values, 1, order)  # (B, N), invalid ones at the end
    weights = torch.zeros_like(values)
    for c in torch.unique(counts).tolist():
        rows = counts == c
        weights[rows, :c] = rank_weights(int(c), k, decay, floor).to(values.device, values.dtype)
    return (sorted_vals * weights).sum(1)

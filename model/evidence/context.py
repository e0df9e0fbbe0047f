"""Through-plane context (scan level): the thin top and bottom edges of a lesion inherit its body's evidence.

A slice's score becomes max over slices j within `context_radius` of (score_j - context_decay * |j - i|):
a grey-scale dilation along the scan axis with a cone. It never lowers a score, so an isolated lesion
keeps its own score and stays on top. Nothing is fitted.
"""

from __future__ import annotations

import torch


def slice_context(slice_scores: torch.Tensor, slice_index, cfg) -> torch.Tensor:
    """Slice scores (S,) of one volume and their slice numbers (S,) -> scores with through-plane context.
    Unchanged when the radius is 0 or the scan has one slice; non-finite scores are left out as neighbours."""
    s = torch.as_tensor(slice_scores).float().reshape(-1)
    if cfg.context_radius <= 0 or s.numel() < 2:
        return s
    idx = torch.as_tensor(slice_index).reshape(-1).to(torch.float32)
    if idx.numel() != s.numel():
        raise ValueError(f"{s.numel()} slice scores but {idx.numel()} slice indices")
    dist = (idx[:, None] - idx[None, :]).abs()  # (S, S)
    near = (dist <= cfg.context_radius) & torch.isfinite(s)[None, :]
    cand = torch.where(near, s[None, :] - cfg.context_decay * dist, torch.full_like(dist, float("-inf")))
    return torch.maximum(s, cand.max(1).values)

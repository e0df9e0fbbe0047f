"""Masks: random boxes for training, complementary grids for scoring.

Convention everywhere: mask value 1 = hidden from the reconstructor, 0 = visible.

Background (pixels that preprocessing set to exactly BACKGROUND in every channel, i.e.
outside the brain) is never hidden: `hideable` removes it from any mask, so the
reconstructor always sees where the brain ends and does not "invent" tissue across
the brain rim (which otherwise dominates the residuals of normal slices).
"""

from __future__ import annotations

import torch

BACKGROUND = -1.0  # pipeline.data.preprocess.BACKGROUND: value of pixels outside the foreground


def hideable(x: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, 1, H, W) float: 0 where every channel == BACKGROUND, else 1."""
    return (x != BACKGROUND).any(1, keepdim=True).to(x.dtype)


def complementary_masks(height: int, width: int, cell: int, period: int = 2) -> torch.Tensor:
    """Complementary grid masks that together hide every pixel exactly once.

    The image is tiled in cell x cell squares; square (r, c) is hidden in mask
    number (r % period) * period + (c % period). Each mask hides a regular lattice of
    squares, so each hidden square is reconstructed from all-visible neighbours.

    -> masks: (period**2, 1, height, width) float32, masks.sum(0) == 1 everywhere.
    """
    if cell < 1 or period < 1:
        raise ValueError("cell and period must be >= 1")
    rows = (torch.arange(height) // cell) % period  # (H,)
    cols = (torch.arange(width) // cell) % period  # (W,)
    idx = rows[:, None] * period + cols[None, :]  # (H, W)
    masks = torch.stack([(idx == i) for i in range(period * period)]).float()
    return masks[:, None]  # (M, 1, H, W)


class BoxMaskGenerator:
    """Seeded random rectangular masks for training.

    Each image gets between `min_boxes` and `max_boxes` boxes; each side is drawn
    uniformly from [min_size, max_size] as a fraction of the image side. With
    probability `grid_prob` the image instead gets one of the complementary grid
    masks (random cell offset), so training also sees the exact test-time pattern.
    """

    def __init__(
        self,
        *,
        min_boxes: int = 1,
        max_boxes: int = 4,
        min_size: float = 0.08,
        max_size: float = 0.25,
        grid_prob: float = 0.5,
        grid_cell: int = 16,
        grid_period: int = 2,
        seed: int = 0,
    ) -> None:
        if not (1 <= min_boxes <= max_boxes):
            raise ValueError("need 1 <= min_boxes <= max_boxes")
        if not (0.0 < min_size <= max_size <= 1.0):
            raise ValueError("need 0 < min_size <= max_size <= 1")
        if not (0.0 <= grid_prob <= 1.0):
            raise ValueError("grid_prob must be in [0, 1]")
        self.min_boxes, self.max_boxes = min_boxes, max_boxes
        self.min_size, self.max_size = min_size, max_size
        self.grid_prob, self.grid_cell, self.grid_period = grid_prob, grid_cell, grid_period
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    def _rand(self, n: int = 1) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    def __call__(self, batch: int, height: int, width: int) -> torch.Tensor:
        """-> masks: (batch, 1, height, width) float32 in {0, 1}."""
        out = torch.zeros(batch, 1, height, width)
        for b in range(batch):
            if self._rand().item() < self.grid_prob:
                out[b, 0] = self._grid(height, width)
                continue
            n = int(torch.randint(self.min_boxes, self.max_boxes + 1, (1,), generator=self.generator))
            for _ in range(n):
                fh, fw = self.min_size + (self.max_size - self.min_size) * self._rand(2)
                bh, bw = max(1, int(fh * height)), max(1, int(fw * width))
                y = int(torch.randint(0, height - bh + 1, (1,), generator=self.generator))
                x = int(torch.randint(0, width - bw + 1, (1,), generator=self.generator))
                out[b, 0, y : y + bh, x : x + bw] = 1.0
        return out

    def _grid(self, height: int, width: int) -> torch.Tensor:
        p, c = self.grid_period, self.grid_cell
        k = int(torch.randint(0, p * p, (1,), generator=self.generator))
        dy, dx = (int(v) for v in torch.randint(0, c, (2,), generator=self.generator))
        big = complementary_masks(height + c, width + c, c, p)[k, 0]  # (H+c, W+c)
        return big[dy : dy + height, dx : dx + width]

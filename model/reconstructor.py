"""Masked reconstructor: a U-Net that fills hidden boxes with *normal* tissue.

Input is the image with the hidden pixels zeroed plus the mask itself as an extra
channel, so the network knows which pixels it must invent. The target is the whole
original image. Background pixels (exactly -1 in every channel) are never hidden, see
`model.masks.hideable`. GroupNorm (not BatchNorm) keeps a slice's output independent of
whatever else shares its batch, which serving relies on.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import hideable


def _groups(ch: int) -> int:
    for g in (8, 4, 2):
        if ch % g == 0:
            return g
    return 1


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + GroupNorm + SiLU. x: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.SiLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.SiLU(inplace=True),
        )


class MaskedReconstructor(nn.Module):
    """U-Net encoder-decoder.

    Args:
        in_channels: image channels C (1 for MRI, 3 for RGB, 4 for multi-modal MRI).
        base_channels: width of the first level; level i has base * 2**i channels.
        depth: number of 2x downsamplings; H and W must be multiples of 2**depth
            (16 for the default depth 4).

    forward(x, mask): x: (B, C, H, W), mask: (B, 1, H, W) with 1 = hidden
        -> x_hat: (B, C, H, W), the full reconstruction (linear output).
    encode(x, mask=None): the encoder's feature levels (model.features reads them).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or depth < 1:
            raise ValueError("in_channels, base_channels and depth must be >= 1")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock(in_channels + 1, widths[0])
        self.down = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(ConvBlock(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], in_channels, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """-> the encoder's levels [(B, w_i, H/2^i, W/2^i) for i = 0..depth]; mask None = nothing hidden."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"H and W must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        if mask is None:
            mask = torch.zeros_like(x[:, :1])
        mask = mask.to(x.dtype) * hideable(x)  # background is never hidden (model.masks)
        h = self.stem(torch.cat([x * (1.0 - mask), mask], dim=1))  # (B, w0, H, W)
        levels = [h]
        for block in self.down:
            h = block(nn.functional.max_pool2d(h, 2))  # (B, w_{i+1}, H/2^{i+1}, W/2^{i+1})
            levels.append(h)
        return levels

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        skips = self.encode(x, mask)
        h = skips.pop()
        for up, merge in zip(self.up, self.merge):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return self.head(h)  # (B, C, H, W)

"""PatchGAN discriminator: a grid of logits, one per receptive-field patch.

Layout (defaults n_layers=3, base_channels=32): three 4x4 stride-2 convolutions
(padding 1) halve the resolution each time, then two 3x3 stride-1 convolutions keep
it. For an H x W input the logit grid is (H / 2**n_layers, W / 2**n_layers): 16 x 16
at 128 x 128 and 8 x 8 at 64 x 64, so grid cell (i, j) sits over the pixel box
[i*P, (i+1)*P) x [j*P, (j+1)*P) with P = 2**n_layers = 8. Receptive field of one
logit at the defaults: 54 x 54 pixels (see `receptive_field`), centred on its cell.
Outputs are logits: "real normal tissue" is high, "reconstruction / not normal" low.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """x: (B, C, H, W) -> logits: (B, 1, H / 2**n_layers, W / 2**n_layers)."""

    def __init__(self, in_channels: int = 1, base_channels: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.n_layers = n_layers
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(n_layers):
            cout = base_channels * min(2**i, 8)
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
            if i > 0:
                layers += [nn.GroupNorm(min(8, cout), cout)]
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers += [
            nn.Conv2d(cin, cin, 3, padding=1),
            nn.GroupNorm(min(8, cin), cin),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cin, 1, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    @property
    def patch_size(self) -> int:
        """Pixels per grid cell along each axis (the stride of the logit grid)."""
        return 2**self.n_layers

    def receptive_field(self) -> int:
        """Receptive field (pixels) of one output logit, from the conv stack."""
        rf, jump = 1, 1
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                k, s = m.kernel_size[0], m.stride[0]
                rf += (k - 1) * jump
                jump *= s
        return rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return self.net(x)

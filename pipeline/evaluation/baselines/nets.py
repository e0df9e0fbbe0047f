"""Small networks for the baselines (not PatchRank's own model, which lives in model/)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from patchrank.pipeline.training.loop import batches


class ConvAE(nn.Module):
    """Convolutional autoencoder with a dense bottleneck.

    x: (B, C, S, S) with S a multiple of 16 -> x_hat: (B, C, S, S) in [-1, 1].
    Four stride-2 convolutions to (8b, S/16, S/16), a `latent`-d code, and back.
    """

    def __init__(self, channels: int, size: int, base: int = 16, latent: int = 128) -> None:
        super().__init__()
        w = [channels, base, 2 * base, 4 * base, 8 * base]
        self.grid = size // 16
        enc = []
        for a, b in zip(w[:-1], w[1:]):
            enc += [nn.Conv2d(a, b, 4, 2, 1), nn.GroupNorm(min(8, b), b), nn.LeakyReLU(0.2, inplace=True)]
        self.enc = nn.Sequential(*enc)
        flat = w[-1] * self.grid * self.grid
        self.to_code = nn.Linear(flat, latent)
        self.from_code = nn.Linear(latent, flat)
        dec = []
        for a, b in zip(w[:0:-1], w[-2::-1]):
            last = b == channels
            dec += [nn.ConvTranspose2d(a, b, 4, 2, 1)]
            dec += [] if last else [nn.GroupNorm(min(8, b), b), nn.ReLU(inplace=True)]
        self.dec = nn.Sequential(*dec)
        self.top = w[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.to_code(self.enc(x).flatten(1))  # (B, latent)
        h = self.from_code(z).view(len(x), self.top, self.grid, self.grid)
        return torch.tanh(self.dec(h))


class ImageDiscriminator(nn.Module):
    """Whole-image discriminator. x: (B, C, S, S) -> logits: (B,) (high = real normal)."""

    def __init__(self, channels: int, base: int = 16) -> None:
        super().__init__()
        w = [channels, base, 2 * base, 4 * base, 8 * base]
        layers = []
        for i, (a, b) in enumerate(zip(w[:-1], w[1:])):
            layers += (
                [nn.Conv2d(a, b, 4, 2, 1)]
                + ([nn.GroupNorm(min(8, b), b)] if i else [])
                + [nn.LeakyReLU(0.2, inplace=True)]
            )
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def epochs_of(images: np.ndarray, cfg):
    """Seeded shuffled, flipped batches for each epoch: yields (epoch, x: (B, C, H, W))."""
    for epoch in range(cfg.epochs):
        for x in batches(images, cfg.batch_size, cfg.seed, epoch):
            yield epoch, x


@torch.no_grad()
def apply(net: nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Run net over (N, C, H, W) numpy images in eval mode -> (N, ...) numpy."""
    net.eval()
    return np.concatenate([net(torch.from_numpy(images[s : s + batch])).numpy() for s in range(0, len(images), batch)])

"""Seeded synthetic RGB 'dermoscopy' images (a dark blob on skin tone), shared by the checkpoint-upgrade test
and the script that made tests/data/legacy_v0_skin.pt with the pre-consolidation code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, n: int = 12, size: int = 48, seed: int = 3) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    paths = []
    for i in range(n):
        skin = np.array([200, 160, 140], float) + rng.normal(0, 8, 3)
        img = np.broadcast_to(skin, (size, size, 3)).copy() + rng.normal(0, 6, (size, size, 3))
        cy, cx = size / 2 + rng.normal(0, 3, 2)
        r = rng.uniform(size / 6, size / 4)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[blob] = img[blob] * 0.45 + rng.normal(0, 10, (int(blob.sum()), 3))
        path = root / f"img_{i:02d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths

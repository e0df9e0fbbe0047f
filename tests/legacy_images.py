"""Seeded synthetic RGB 'dermoscopy' images (a dark blob on skin tone): `write_images`, shared by the
checkpoint-upgrade test and the script that made tests/data/legacy_v0_skin.pt with the pre-consolidation code;
`write_isic`, an ISIC-style labelled folder for the quality benchmark's tests."""

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


def write_isic(root, n_benign=14, n_malignant=10):
    """Skin-coloured images with a dark central disc; malignant ones have a larger, irregular one."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[:48, :48]
    rows = []
    for i in range(n_benign + n_malignant):
        bad = i >= n_benign
        r = rng.uniform(12, 16) if bad else rng.uniform(6, 9)
        wobble = 1 + (0.3 if bad else 0.05) * np.sin(5 * np.arctan2(yy - 24, xx - 24) + rng.uniform(0, 6))
        lesion = np.hypot(yy - 24, xx - 24) < r * wobble
        img = np.clip(rng.normal([200, 160, 140], 8, (48, 48, 3)) - 120 * lesion[..., None], 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"ISIC_{i:07d}.jpg")
        rows.append(f"ISIC_{i:07d},{'malignant' if bad else 'benign'}")
    (root / "labels.csv").write_text("image_id,label\n" + "\n".join(rows) + "\n")

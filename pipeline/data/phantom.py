"""Built-in data: procedurally generated brain-like FLAIR phantoms, written as real NIfTI.

No download needed. Each subject is a BraTS-style folder
`<root>/<case>/<case>_flair.nii.gz` (+ `_seg`, `_brainmask`), raw int16 intensities so
the loader's normalisation is exercised. Anatomy: an ellipsoidal brain whose axial
cross-section shrinks towards the poles, a bright cortical rim, darker white matter
with smooth texture, and dark butterfly-shaped ventricles. Abnormal subjects get 1-3
bright (FLAIR-hyperintense) lesions of varied radius, labelled 2 (oedema) with a
core labelled 1; normal subjects have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PhantomSpec:
    shape: tuple[int, int, int] = (96, 96, 40)
    n_normal: int = 6
    n_abnormal: int = 6
    min_radius: float = 2.0
    max_radius: float = 8.0
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape[:2]) < 16 or self.shape[2] < 4 or max(self.shape) > 512:
            raise ValueError(f"phantom shape {tuple(self.shape)}: X and Y must be 16-512 voxels, Z 4-512")
        if self.n_normal < 0 or self.n_abnormal < 0 or self.n_normal + self.n_abnormal == 0:
            raise ValueError("phantom subjects: give at least one, and no negative count")
        if not 0 < self.min_radius <= self.max_radius:
            raise ValueError(f"phantom lesion radius {self.min_radius}-{self.max_radius}: need 0 < min <= max")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape), sigma=scale)
    return n / (n.std() + 1e-8)


def make_subject(rng: np.random.Generator, spec: PhantomSpec, abnormal: bool):
    """-> flair (int16), brainmask (uint8), seg (uint8), all (X, Y, Z)."""
    X, Y, Z = spec.shape
    x, y, z = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    cx, cy, cz = X / 2 + rng.normal(0, 1.5), Y / 2 + rng.normal(0, 1.5), Z / 2
    rx, ry, rz = X * rng.uniform(0.36, 0.42), Y * rng.uniform(0.40, 0.46), Z * 0.52
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
    brain = d < 1.0
    wm = 420 + 25 * _smooth_noise(rng, spec.shape, 3)
    gm_rim = np.clip((d - 0.78) / 0.2, 0, 1) * 160  # brighter cortex towards the edge
    vol = wm + gm_rim
    # Ventricles: two dark ellipsoids beside the midline, larger near the centre.
    for side in (-1, 1):
        vx = cx + side * X * 0.06
        dv = np.sqrt(
            ((x - vx) / (X * 0.05)) ** 2 + ((y - cy + Y * 0.03) / (Y * 0.16)) ** 2 + ((z - cz) / (Z * 0.25)) ** 2
        )
        vol = np.where(dv < 1.0, 180 + 10 * _smooth_noise(rng, spec.shape, 2), vol)
    seg = np.zeros(spec.shape, dtype=np.uint8)
    if abnormal:
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(spec.min_radius, spec.max_radius)
            while True:  # lesion centre well inside the brain
                p = np.array([rng.uniform(0, X), rng.uniform(0, Y), rng.uniform(Z * 0.25, Z * 0.75)])
                if np.sqrt(((p[0] - cx) / rx) ** 2 + ((p[1] - cy) / ry) ** 2 + ((p[2] - cz) / rz) ** 2) < 0.7:
                    break
            dl = np.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2 + ((z - p[2]) * 1.5) ** 2) / r
            lesion = (dl < 1.0) & brain
            vol = np.where(lesion, vol + 260 * (1.1 - dl.clip(0, 1)) + 30 * _smooth_noise(rng, spec.shape, 1), vol)
            seg[lesion] = 2
            seg[(dl < 0.45) & brain] = 1
    vol = vol + 12 * rng.standard_normal(spec.shape)
    vol = np.where(brain, vol, 0).clip(0, 32000)
    return vol.astype(np.int16), brain.astype(np.uint8), seg


def write_phantom_dataset(root: str | Path, spec: PhantomSpec = PhantomSpec()) -> list[Path]:
    """Write spec.n_normal + spec.n_abnormal subjects under root; returns case folders."""
    import nibabel as nib

    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    cases = []
    flags = [False] * spec.n_normal + [True] * spec.n_abnormal
    order = rng.permutation(len(flags))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i, idx in enumerate(order):
        name = f"PHANTOM_{i + 1:04d}"
        case = root / name
        case.mkdir(parents=True, exist_ok=True)
        flair, mask, seg = make_subject(rng, spec, flags[idx])
        for suffix, arr in (("flair", flair), ("brainmask", mask), ("seg", seg)):
            nib.save(nib.Nifti1Image(arr, affine), str(case / f"{name}_{suffix}.nii.gz"))
        cases.append(case)
    return cases

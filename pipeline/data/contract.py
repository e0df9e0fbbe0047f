"""The input contract of volume models: a skull-stripped brain on a constant (normally zero) background, as in
BraTS. A volume that breaks it is refused with a one-line reason (a ScanError: a `failed` row), never scored
silently: a whole head's skull, scalp and air, or a "brain" that fills the field of view, would be normalised
and scored as brain tissue.

- background: outside a skull-stripped brain every voxel holds one value, 0 as distributed or the constant a
  provider's z-scoring turned the zeros into (BraTS 2015 files here). The value is the most common one on the
  border of the axial slices (the four side faces); when fewer than `MIN_BORDER_BACKGROUND` of those voxels
  hold it, the volume is a head (or noise-filled air), not a skull-stripped brain. Without a brain mask, the
  foreground is every voxel that differs from the background value in any channel.
- size: a brain fills at most ~52 % of its own bounding box (an ellipsoid's share); a foreground (the given
  brain mask, or the non-background voxels) over `MAX_FOREGROUND_FRACTION` of the field of view is not a brain,
  nor is one holding more than `MAX_BRAIN_ML` (from the voxel sizes): a whole head whose air was zeroed has a
  constant background, but its scalp and skull hold about as much again as the brain.
"""

from __future__ import annotations

import numpy as np

from patchrank.pipeline.data.loaders import ScanError

MIN_BORDER_BACKGROUND = 0.95  # share of the volume's face voxels holding the background value
MAX_FOREGROUND_FRACTION = 0.6  # share of the field of view a brain can fill
MAX_BRAIN_ML = 2200.0  # a skull-stripped adult brain's volume (intracranial: ~1,200-1,900 mL) is below this


def side_faces(vol: np.ndarray) -> np.ndarray:
    """vol: (X, Y, Z) -> the values of its four side faces (the border of every axial slice), flattened; the
    top and bottom slices may cut through the brain (a slab)."""
    return np.concatenate([f.ravel() for f in (vol[0], vol[-1], vol[:, 0], vol[:, -1])])  # views: no volume copy


def background_value(vol: np.ndarray) -> tuple[float, float]:
    """vol: (X, Y, Z) -> (most common value on its side faces, share of those voxels holding it)."""
    vals, counts = np.unique(side_faces(vol), return_counts=True)
    i = int(np.argmax(counts))
    return float(vals[i]), float(counts[i] / counts.sum())


def check_volume(arr: np.ndarray, mask: np.ndarray | None, zooms=None) -> np.ndarray:
    """arr: (C, X, Y, Z) volume; mask: (X, Y, Z) bool brain mask or None; zooms: (3,) voxel sizes in mm (None:
    unknown, the volume is not checked) -> (X, Y, Z) bool foreground: the mask, else the voxels that differ from
    each channel's background value. ScanError when the volume breaks the contract (see the module docstring)."""
    fg = mask
    if mask is None:
        for c in range(arr.shape[0]):
            value, share = background_value(arr[c])
            if share < MIN_BORDER_BACKGROUND:
                raise ScanError(
                    f"not a skull-stripped brain: the volume's border is not a constant background (only "
                    f"{share:.0%} of the border voxels share one value); the model expects skull-stripped brains "
                    f"on a zero background, as BraTS"
                )
            ch = arr[c] != value
            fg = ch if fg is None else fg | ch
    frac = float(fg.mean())
    what = "brain mask" if mask is not None else "non-background region"
    if frac > MAX_FOREGROUND_FRACTION:
        raise ScanError(
            f"not a skull-stripped brain: the {what} covers {frac:.0%} of the field of view (a brain fills at most "
            f"{MAX_FOREGROUND_FRACTION:.0%}); the model expects skull-stripped brains on a zero background, as BraTS"
        )
    ml = float(fg.sum()) * float(np.prod(zooms)) / 1000.0 if zooms is not None else 0.0
    if ml > MAX_BRAIN_ML:
        raise ScanError(
            f"not a skull-stripped brain: the {what} holds {ml:,.0f} mL (a skull-stripped brain holds at most "
            f"{MAX_BRAIN_ML:,.0f} mL); the model expects skull-stripped brains on a zero background, as BraTS"
        )
    return fg

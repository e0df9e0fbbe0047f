"""Where a voxel of the model's canonical (RAS-reoriented) array lies in the input file: its own voxel indices
and world millimetres (RAS+, as NIfTI). With pose canonicalisation (pipeline.data.pose) the model's grid is
the canonical one resampled into the training head pose; `Geometry.pose` maps it back first.

Loading reorients every volume with `nib.as_closest_canonical` (a permutation / flip of the axes, never a
resample), so canonical index -> the file's own index is an exact integer map, and both share one world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    native: np.ndarray  # (4, 4) the input file's own voxel (i, j, k) -> RAS mm
    canonical: np.ndarray  # (4, 4) canonical voxel -> RAS mm
    shape: tuple[int, int, int]  # the input file's own grid
    pose: np.ndarray | None = None  # (4, 4) model-grid voxel -> canonical voxel, when resampled into a head pose

    @classmethod
    def of(cls, affine: np.ndarray, shape: tuple[int, ...]) -> Geometry:
        """From the file's affine and 3D shape (the canonical affine is what `as_closest_canonical` gives)."""
        from nibabel.orientations import inv_ornt_aff, io_orientation

        affine = np.asarray(affine, dtype=np.float64)
        ornt = io_orientation(affine)
        canonical = affine @ inv_ornt_aff(ornt, tuple(shape[:3]))
        return cls(affine, canonical, tuple(int(s) for s in shape[:3]))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        from nibabel.orientations import io_orientation

        out = [0, 0, 0]
        for axis, (to, _) in enumerate(io_orientation(self.native)):
            out[int(to)] = self.shape[axis]
        return tuple(out)

    def unposed(self, ijk) -> np.ndarray:
        """(..., 3) model-grid voxel coordinates -> (..., 3) canonical ones (the same unless `pose`)."""
        p = np.asarray(ijk, dtype=np.float64)
        return p if self.pose is None else p @ self.pose[:3, :3].T + self.pose[:3, 3]

    def native_index(self, canonical_ijk) -> np.ndarray:
        """(..., 3) canonical voxel coordinates -> (..., 3) the file's own voxel coordinates."""
        to_native = np.linalg.inv(self.native) @ self.canonical
        p = self.unposed(canonical_ijk)
        return np.rint((p @ to_native[:3, :3].T + to_native[:3, 3]) * 2) / 2  # exact to half a voxel (box centres)

    def world(self, canonical_ijk) -> np.ndarray:
        """(..., 3) canonical voxel coordinates -> (..., 3) RAS millimetres."""
        p = self.unposed(canonical_ijk)
        return p @ self.canonical[:3, :3].T + self.canonical[:3, 3]


def canonical_to_native(canon: np.ndarray, geometry: Geometry) -> np.ndarray:
    """An array on the canonical grid (X, Y, Z) -> the same values on the input file's own grid (exact:
    a permutation / flip of axes, the inverse of `nib.as_closest_canonical`)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    if geometry.pose is not None:  # the model grid was resampled into a head pose: back to the canonical grid
        from patchrank.pipeline.data.pose import resample

        canon = resample(canon, np.linalg.inv(geometry.pose), 1, float(np.min(canon)))
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(geometry.native))
    out = apply_orientation(canon, back)
    if tuple(out.shape[:3]) != geometry.shape:
        raise ValueError(f"map of shape {out.shape} does not fit the input grid {geometry.shape}")
    return out


def write_map(path, native: np.ndarray, geometry: Geometry) -> None:
    """Save a map on the input's own grid (see canonical_to_native) as NIfTI with the input's affine (an overlay
    for 3D Slicer / ITK-SNAP on the original file), written to a temporary name and renamed into place."""
    import os
    from pathlib import Path

    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tuple(native.shape) != geometry.shape:
        raise ValueError(f"map of shape {native.shape} does not fit the input grid {geometry.shape}")
    img = nib.Nifti1Image(native.astype(np.float32), geometry.native)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def box_centre(y0: int, x0: int, y1: int, x1: int, slice_index: int) -> tuple[float, float, float]:
    """A native-slice pixel box (rows y0:y1 = canonical axis 0, cols x0:x1 = axis 1) -> its centre voxel."""
    return (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, float(slice_index)

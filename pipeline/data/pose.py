"""Head pose of a brain volume, and its resampling into the canonical pose the training volumes define.

Atlas-registered volumes (BraTS) share one pose; real archives do not, and the brain evidence that wins
small lesions (intensity calibrated per position, left-right symmetry about the image centre) assumes it.
On the canonical (RAS+) array, in millimetres:

1. centroid and axial orientation from the brain mask's moments: the longest in-plane axis is
   anterior-posterior (yaw about the superior-inferior axis);
2. mid-sagittal plane refined by left-right symmetry: yaw, roll (about the A-P axis) and the plane's
   left-right offset that maximise the correlation of the (smoothed) image with its mirror image across
   the plane, inside the brain (Nelder-Mead from the moments' estimate);
3. pitch (about the left-right axis) from the moments of the mask in that symmetric frame: the angle of
   its long axis in the sagittal plane.

`Pose` = (yaw, roll, pitch in degrees; centroid offset from the grid centre in mm). Training fits the
target pose as the mean over its volumes (`fit_target`, stored in the checkpoint's preprocessing
settings); every volume loaded with `pose` on is resampled (trilinear; masks and labels nearest) so that
its pose becomes the target, unless it is already within `tolerance` of it (registered volumes stay
bit-identical). The transform is kept (`Geometry.pose`) so patch coordinates and maps go back to the
input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYMMETRY_MM = 3.0  # sampling step (mm) of the brain for the symmetry search
SMOOTH_MM = 2.0  # Gaussian smoothing (mm) of the image before the symmetry search


def rotation(axial_deg: float, lr_deg: float = 0.0, ap_deg: float = 0.0) -> np.ndarray:
    """-> (3, 3) RAS rotation: about R-L (x) by lr_deg, then A-P (y) by ap_deg, then S-I (z) by axial_deg."""

    def about(axis: int, deg: float) -> np.ndarray:
        a = np.deg2rad(deg)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        return r

    return about(2, axial_deg) @ about(1, ap_deg) @ about(0, lr_deg)


@dataclass(frozen=True)
class Pose:
    yaw: float  # degrees about S-I (z)
    roll: float  # degrees about A-P (y)
    pitch: float  # degrees about R-L (x)
    offset: tuple[float, float, float]  # brain centroid - grid centre (mm)

    @property
    def rotation(self) -> np.ndarray:
        return rotation(self.yaw, self.pitch, self.roll)

    def as_list(self) -> list[float]:
        return [self.yaw, self.roll, self.pitch, *self.offset]

    @classmethod
    def of(cls, values) -> Pose:
        v = [float(x) for x in values]
        return cls(v[0], v[1], v[2], (v[3], v[4], v[5]))


def _principal_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Points' coordinates a, b (N,) -> degrees of their long axis from the b axis towards a (|angle| < 90)."""
    cov = np.cov(np.stack([a, b]))
    w, v = np.linalg.eigh(cov)
    e = v[:, np.argmax(w)]
    if e[1] < 0:
        e = -e
    return float(np.degrees(np.arctan2(e[0], e[1])))


def _symmetry(image: np.ndarray, pts: np.ndarray, zooms: np.ndarray, params, centroid: np.ndarray) -> float:
    """-(correlation of the image at pts (N, 3 mm) with its mirror across the plane given by
    params = (yaw, roll, lr offset mm) through the centroid)."""
    from scipy.ndimage import map_coordinates

    yaw, roll, shift = params
    n = rotation(yaw, 0.0, roll) @ np.array([1.0, 0.0, 0.0])
    d = float(n @ centroid) + shift
    mirror = pts - 2.0 * ((pts @ n) - d)[:, None] * n[None]
    a = map_coordinates(image, (pts / zooms).T, order=1, mode="nearest")
    b = map_coordinates(image, (mirror / zooms).T, order=1, mode="nearest")
    a, b = a - a.mean(), b - b.mean()
    return -float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def estimate(image: np.ndarray, mask: np.ndarray, zooms) -> Pose:
    """image: (X, Y, Z) canonical RAS+ array; mask: (X, Y, Z) bool brain; zooms: (3,) mm -> its Pose."""
    from scipy.ndimage import gaussian_filter
    from scipy.optimize import minimize

    zooms = np.asarray(zooms, dtype=np.float64)
    idx = np.argwhere(mask)
    if len(idx) < 100:
        raise ValueError("too few brain voxels to estimate the head pose")
    pts = idx * zooms
    centroid = pts.mean(0)
    centre = (np.asarray(mask.shape) - 1) / 2.0 * zooms
    yaw0 = -_principal_angle(pts[:, 0], pts[:, 1])  # long in-plane axis = A-P (y)
    step = np.maximum(1, np.round(SYMMETRY_MM / zooms)).astype(int)
    sub = np.argwhere(mask[:: step[0], :: step[1], :: step[2]]) * step * zooms
    smooth = gaussian_filter(np.asarray(image, dtype=np.float32), SMOOTH_MM / zooms)
    best = None
    for start in (yaw0, yaw0 - 6.0, yaw0 + 6.0):
        res = minimize(
            lambda p: _symmetry(smooth, sub, zooms, p, centroid),
            np.array([start, 0.0, 0.0]),
            method="Nelder-Mead",
            options={"xatol": 0.05, "fatol": 1e-5, "initial_simplex": None, "maxiter": 300},
        )
        if best is None or res.fun < best.fun:
            best = res
    yaw, roll, _ = (float(v) for v in best.x)
    local = (pts - centroid) @ rotation(yaw, 0.0, roll)  # into the symmetric frame (columns: x, y, z)
    pitch = _principal_angle(local[:, 2], local[:, 1])  # long sagittal axis = A-P
    return Pose(yaw, roll, pitch, tuple(float(v) for v in centroid - centre))


def to_target(pose: Pose, target: Pose, shape, zooms) -> np.ndarray:
    """-> (4, 4) voxel map: target-pose grid voxel -> this volume's voxel (same grid shape and zooms)."""
    zooms = np.asarray(zooms, dtype=np.float64)
    centre = (np.asarray(shape[:3]) - 1) / 2.0 * zooms
    r = pose.rotation @ target.rotation.T
    c_src, c_dst = centre + np.asarray(pose.offset), centre + np.asarray(target.offset)
    mm = np.eye(4)
    mm[:3, :3] = r
    mm[:3, 3] = c_src - r @ c_dst
    return np.diag([*(1.0 / zooms), 1.0]) @ mm @ np.diag([*zooms, 1.0])


def within(pose: Pose, target: Pose, tolerance: tuple[float, float]) -> bool:
    """The rotation between the two is under tolerance[0] degrees and the centroids under tolerance[1] mm apart."""
    r = pose.rotation @ target.rotation.T
    angle = np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))
    return bool(angle < tolerance[0] and np.linalg.norm(np.subtract(pose.offset, target.offset)) < tolerance[1])


def resample(vol: np.ndarray, pull: np.ndarray, order: int, cval: float) -> np.ndarray:
    """vol: (X, Y, Z) -> the same grid with out[v] = vol[pull @ v] (order 1 trilinear, 0 nearest)."""
    from scipy.ndimage import affine_transform

    src = np.asarray(vol, dtype=np.float32) if order else vol
    return affine_transform(src, pull[:3, :3], pull[:3, 3], order=order, mode="constant", cval=cval)


def mean_pose(poses: list[Pose]) -> Pose:
    """The target pose of a training set: mean angles (small rotations) and mean centroid offset."""
    a = np.array([p.as_list() for p in poses], dtype=np.float64)
    return Pose.of(a.mean(0).round(4))

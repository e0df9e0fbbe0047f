"""Head pose of a brain volume, and its resampling into the canonical pose the training volumes define.

Atlas-registered volumes (BraTS) share one pose; real archives do not, and the brain evidence that wins
small lesions (intensity calibrated per position, left-right symmetry about the image centre) assumes it.
On the canonical (RAS+) array, in millimetres:

1. centroid: the brain mask's first moment;
2. mid-sagittal plane by left-right symmetry: yaw (about the superior-inferior axis), roll (about the
   anterior-posterior axis) and the plane's left-right offset that maximise the correlation of the smoothed
   image, plus that of the smoothed brain mask (the outline: image symmetry alone is weak next to a large
   tumour), with their mirror images across the plane, over the brain: a coarse grid, then Nelder-Mead;
3. reference point: on the mid-sagittal plane, at the brain centroid's level, and anterior-posterior at the
   centroid of the brain's widest levels (axial area >= half the largest);
pitch (about the left-right axis) is not estimated: the mask's second moments gave 17-30 degrees over the
6 registered development volumes, and template matches of the sagittal outline or mid-plane 3-8 degrees (sd;
docs/experiments.md, pass 16), a scatter as wide as the head tilts to correct.

`Pose` = (yaw, roll in degrees; reference point - grid centre in mm). Training fits the target pose as
the mean over its volumes (`fit_target`, stored in the checkpoint's preprocessing settings); a volume
loaded with `pose` on is resampled (trilinear; masks and labels nearest) into the target pose unless its
rotation from it is under `TOLERANCE_DEG` and its mid-sagittal plane within `TOLERANCE_MM` of the target's
(registered volumes stay bit-identical: the estimates of the 6 registered development volumes lie within
1.9 degrees and 0.6 mm of their mean; the anterior-posterior reference varies by subject, up to 18 mm, so
it does not decide). The search reads a 2 mm block-averaged copy at ~6,000 brain points (~0.4 s a BraTS
volume). The transform is kept (`Geometry.pose`) so patch coordinates and maps go back to the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POINTS = 6000  # brain points the symmetry search compares (a grid: ~6 mm apart in an adult brain)
SMOOTH_MM = 2.0  # Gaussian smoothing (mm) of the image before the symmetry search
COARSE_MM = 2.0  # the search reads the image and mask averaged over blocks of about this size (mm)
XATOL = 0.2  # the search stops when its simplex spans less than this (degrees; mm for the plane offset)
TOLERANCE_DEG = 3.0  # rotation from the target pose under which a volume is not resampled ...
TOLERANCE_MM = 2.0  # ... when its mid-sagittal plane is also within this distance (mm) of the target's
YAW_RANGE, ROLL_RANGE = 24.0, 12.0  # degrees searched (coarse grid, 4-degree steps) before the local refinement


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
    offset: tuple[float, float, float]  # the brain's reference point - the grid centre (mm)

    @property
    def rotation(self) -> np.ndarray:
        return rotation(self.yaw, 0.0, self.roll)

    def as_list(self) -> list[float]:
        return [self.yaw, self.roll, *self.offset]

    @classmethod
    def of(cls, values) -> Pose:
        v = [float(x) for x in values]
        return cls(v[0], v[1], (v[2], v[3], v[4]))


def _mirrored(at, pts: np.ndarray, params, centroid: np.ndarray) -> list[np.ndarray]:
    """The maps' values (`at`: mm points -> values) at pts (N, 3 mm) mirrored across the plane given by
    params = (yaw, roll, left-right offset mm from the centroid)."""
    yaw, roll, shift = params
    n = rotation(yaw, 0.0, roll) @ np.array([1.0, 0.0, 0.0])
    d = float(n @ centroid) + shift
    return at(pts - 2.0 * ((pts @ n) - d)[:, None] * n[None])


def _block_mean(vol: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(X, Y, Z) numbers or bools -> float32 means of its f[0] x f[1] x f[2] voxel blocks (a trailing partial
    block is dropped). Sums one axis at a time, innermost first, without a float copy of the volume."""
    x, y, z = (np.asarray(vol.shape) // f) * f
    acc = np.uint16 if vol.dtype == bool else np.float32
    v = vol[:x, :y, :z].reshape(x // f[0], f[0], y // f[1], f[1], z // f[2], f[2])
    total = v.sum(5, dtype=acc).sum(3, dtype=acc).sum(1, dtype=acc)
    return total.astype(np.float32) / np.float32(np.prod(f))


def _axis_means(mask: np.ndarray, count: int) -> np.ndarray:
    """(3,) mean voxel index of the mask's voxels along each axis, from per-axis counts."""
    means = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        means.append(float((mask.sum(other) * np.arange(mask.shape[axis])).sum()) / count)
    return np.asarray(means)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def estimate(image: np.ndarray, mask: np.ndarray, zooms) -> Pose:
    """image: (X, Y, Z) canonical RAS+ array; mask: (X, Y, Z) bool brain; zooms: (3,) mm -> its Pose."""
    from scipy.ndimage import gaussian_filter, map_coordinates
    from scipy.optimize import minimize

    zooms = np.asarray(zooms, dtype=np.float64)
    count = int(mask.sum())
    if count < 100:
        raise ValueError("too few brain voxels to estimate the head pose")
    centroid = _axis_means(mask, count) * zooms  # the brain's centre of mass (mm), without its voxel list
    centre = (np.asarray(mask.shape) - 1) / 2.0 * zooms
    spacing = (count * np.prod(zooms) / POINTS) ** (1 / 3)  # mm between points
    step = np.maximum(1, np.round(spacing / zooms)).astype(int)
    sub = np.argwhere(mask[:: step[0], :: step[1], :: step[2]]) * step * zooms
    f = np.maximum(1, np.round(COARSE_MM / zooms)).astype(int)  # the search reads a coarse, smoothed copy
    coarse_zooms = zooms * f
    maps = [gaussian_filter(_block_mean(v, f), SMOOTH_MM / coarse_zooms) for v in (image, mask)]

    def at(points: np.ndarray) -> list[np.ndarray]:  # mm -> the maps' values (block centres at (f-1)/2)
        coords = ((points / zooms - (f - 1) / 2.0) / f).T
        return [map_coordinates(m, coords, order=1, mode="nearest") for m in maps]

    here, coarse = at(sub), sub[::8]
    here_coarse = at(coarse)

    def cost(p, points=sub, values=here) -> float:  # -(image + brain-outline symmetry)
        return -sum(_correlation(a, b) for a, b in zip(values, _mirrored(at, points, p, centroid)))

    grid = [
        (y, r, 0.0)
        for y in np.arange(-YAW_RANGE, YAW_RANGE + 1, 4.0)
        for r in np.arange(-ROLL_RANGE, ROLL_RANGE + 1, 4.0)
    ]
    x0 = np.array(min(grid, key=lambda p: cost(p, coarse, here_coarse)))
    res = minimize(
        cost,
        x0,
        method="Nelder-Mead",
        options={
            "xatol": XATOL,
            "fatol": 1e-6,
            "maxiter": 300,
            "initial_simplex": x0 + np.vstack([0 * x0, 2 * np.eye(3)]),
        },
    )
    yaw, roll, shift = (float(v) for v in res.x)
    ref = centroid + shift * (rotation(yaw, 0.0, roll) @ np.array([1.0, 0.0, 0.0]))  # on the mid-sagittal plane
    area = mask.sum((0, 1))
    slab = mask[..., area >= 0.5 * area.max()]  # the brain's widest levels
    ref[1] = float(_axis_means(slab, int(slab.sum()))[1]) * zooms[1]
    return Pose(yaw, roll, tuple(float(v) for v in ref - centre))


def to_target(pose: Pose, target: Pose, shape, zooms) -> np.ndarray:
    """-> (4, 4) voxel map: target-pose grid voxel -> this volume's voxel (same grid shape and zooms). The
    reference point goes to the target's left-right and anterior-posterior place; its axial level is kept
    (slices are compared by their relative level in the brain, not by their index)."""
    zooms = np.asarray(zooms, dtype=np.float64)
    centre = (np.asarray(shape[:3]) - 1) / 2.0 * zooms
    r = pose.rotation @ target.rotation.T
    c_src = centre + np.asarray(pose.offset)
    c_dst = np.array([centre[0] + target.offset[0], centre[1] + target.offset[1], c_src[2]])
    mm = np.eye(4)
    mm[:3, :3] = r
    mm[:3, 3] = c_src - r @ c_dst
    return np.diag([*(1.0 / zooms), 1.0]) @ mm @ np.diag([*zooms, 1.0])


def within(pose: Pose, target: Pose, degrees: float, mm: float) -> bool:
    """The rotation between the two poses is under `degrees` and their mid-sagittal planes' left-right
    offsets differ by less than `mm` (then the volume is left as it is)."""
    r = pose.rotation @ target.rotation.T
    angle = np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))
    return bool(angle < degrees and abs(pose.offset[0] - target.offset[0]) < mm)


def resample(vol: np.ndarray, pull: np.ndarray, order: int, cval: float) -> np.ndarray:
    """vol: (X, Y, Z) -> the same grid with out[v] = vol[pull @ v] (order 1 trilinear, 0 nearest)."""
    from scipy.ndimage import affine_transform

    src = np.asarray(vol, dtype=np.float32) if order else vol
    return affine_transform(src, pull[:3, :3], pull[:3, 3], order=order, mode="constant", cval=cval)


def mean_pose(poses: list[Pose]) -> Pose:
    """The target pose of a training set: mean angles (small rotations) and mean reference point."""
    a = np.array([p.as_list() for p in poses], dtype=np.float64)
    return Pose.of(a.mean(0).round(4))


def zooms_of(geometry) -> np.ndarray:
    """Voxel sizes (mm) of the canonical array (1 mm where the geometry is unknown)."""
    if geometry is None:
        return np.ones(3)
    return np.sqrt((np.asarray(geometry.canonical, dtype=np.float64)[:3, :3] ** 2).sum(0))


def canonicalise(arr: np.ndarray, fg: np.ndarray, labels: np.ndarray | None, zooms, target) -> tuple:
    """arr: (C, X, Y, Z); fg: (X, Y, Z) bool; labels: (X, Y, Z) or None; target: a fitted Pose list ->
    (arr, fg, labels, pull): resampled into the target pose, pull = (4, 4) target-grid voxel -> input voxel;
    the inputs as they are and pull None when the volume is within TOLERANCE_DEG and TOLERANCE_MM of the target."""
    from patchrank.pipeline.data.contract import background_value

    target = Pose.of(target)
    pose = estimate(arr[0], fg, zooms)
    if within(pose, target, TOLERANCE_DEG, TOLERANCE_MM):
        return arr, fg, labels, None
    pull = to_target(pose, target, fg.shape, zooms)
    moved = np.stack([resample(arr[c], pull, 1, background_value(arr[c])[0]) for c in range(arr.shape[0])])
    fg = resample(fg.astype(np.uint8), pull, 0, 0) > 0
    if labels is not None:
        labels = resample(labels, pull, 0, 0)
    return moved, fg, labels, pull


def fit_target(records: list, channels: int = 1, max_voxels: int | None = None) -> list[float]:
    """Training records (volumes) -> the target pose: the mean of their poses (as a list for the settings)."""
    from patchrank.pipeline.data.contract import check_volume
    from patchrank.pipeline.data.loaders import load_scan

    poses = []
    for rec in records:
        scan = load_scan(rec.path, channels=channels, mask_path=rec.mask_path,
                         extra_channel_paths=rec.extra_paths or None, max_voxels=max_voxels)  # fmt: skip
        zooms = zooms_of(scan.geometry)
        poses.append(estimate(scan.array[0], check_volume(scan.array, scan.foreground, zooms), zooms))
    return mean_pose(poses).as_list()


def with_target(cfg, records: list):
    """A TrainConfig with pose canonicalisation on and no target yet -> the same with the target fitted on
    `records` (the training volumes); any other config as it is."""
    pre = cfg.preprocess
    if not pre.pose or pre.pose_target is not None:
        return cfg
    target = fit_target(records, pre.channels, pre.max_voxels)
    return cfg.model_copy(update={"preprocess": pre.model_copy(update={"pose_target": tuple(target)})})

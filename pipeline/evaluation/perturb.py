"""Rigidly moved copies of test volumes: `patchrank bench quality --perturb rigid`.

Real archives are not atlas-registered. This writes a copy of each test scan (image, tumour labels,
brain mask) with the head moved by a seeded random rigid transform in world millimetres: a rotation
about the superior-inferior (axial) axis of up to `max_axial_deg`, about the left-right and
anterior-posterior axes of up to `max_tilt_deg`, about the centre of the volume's grid, then a shift
of up to `max_shift_mm` along each axis (each drawn uniformly). The copy keeps the file's grid and
affine (a valid NIfTI the loaders read as any other); images are resampled trilinearly with the
volume's background value outside, labels and masks by nearest neighbour with 0 outside. Each
subject's transform depends only on the seed and the subject's name, and is recorded in
`perturbation.json` next to the copies.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from patchrank.pipeline.data.contract import background_value
from patchrank.pipeline.data.datasets import DatasetError, Record
from patchrank.pipeline.data.pose import rotation


def random_rigid(
    rng: np.random.Generator, max_axial_deg: float = 15.0, max_tilt_deg: float = 6.0, max_shift_mm: float = 12.0
) -> dict:
    """-> {"axial_deg", "lr_deg", "ap_deg", "shift_mm": [x, y, z]}, each uniform in its +- range."""
    axial = float(rng.uniform(-max_axial_deg, max_axial_deg))
    lr, ap = (float(v) for v in rng.uniform(-max_tilt_deg, max_tilt_deg, 2))
    shift = [float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, 3)]
    return {"axial_deg": axial, "lr_deg": lr, "ap_deg": ap, "shift_mm": shift}


def world_motion(params: dict, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """-> (4, 4) world (RAS mm) motion of the content: rotation about the grid's centre, then the shift."""
    centre = (np.asarray(affine, dtype=np.float64) @ np.r_[(np.asarray(shape[:3]) - 1) / 2.0, 1.0])[:3]
    r = rotation(params["axial_deg"], params["lr_deg"], params["ap_deg"])
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + np.asarray(params["shift_mm"], dtype=np.float64)
    return m


def move_array(data: np.ndarray, affine: np.ndarray, motion: np.ndarray, order: int, cval: float) -> np.ndarray:
    """data: (X, Y, Z) on `affine`'s grid -> the same grid after the content moved by the world `motion`
    (out[v] = data[affine^-1 motion^-1 affine v]); order 1 = trilinear, 0 = nearest neighbour."""
    from scipy.ndimage import affine_transform

    affine = np.asarray(affine, dtype=np.float64)
    pull = np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine  # output voxel -> input voxel
    src = np.asarray(data, dtype=np.float32 if order else data.dtype)
    return affine_transform(src, pull[:3, :3], pull[:3, 3], order=order, mode="constant", cval=cval)


def move_file(src: str | Path, dst: Path, motion: np.ndarray, order: int) -> None:
    """One NIfTI -> its moved copy at dst with the same affine, header and data type."""
    import nibabel as nib

    img = nib.load(str(src), mmap=False)
    data = np.asarray(img.dataobj)
    cval = background_value(data)[0] if order else 0.0
    moved = move_array(data, img.affine, motion, order, cval)
    if np.issubdtype(img.get_data_dtype(), np.integer):
        moved = np.rint(moved)
    out = nib.Nifti1Image(moved.astype(img.get_data_dtype()), img.affine, img.header)
    out.header.set_slope_inter(1, 0)  # values written as they are (no rescaling of the moved data)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(dst))


def _moved_copy(src: str | None, case: Path, motion: np.ndarray, order: int) -> str | None:
    if src is None:
        return None
    dst = case / Path(src).name
    move_file(src, dst, motion, order)
    return str(dst)


def subject_rng(seed: int, subject: str) -> np.random.Generator:
    """A subject's own stream: its transform does not depend on which other subjects are moved."""
    return np.random.default_rng([int(seed), zlib.crc32(subject.encode())])


def perturb_records(records: list[Record], out: Path, seed: int, **ranges) -> list[Record]:
    """Write a rigidly moved copy of every record's files under out/<subject>/ -> records pointing at them.
    The transforms are recorded in out/perturbation.json (with the seed and ranges)."""
    import nibabel as nib

    out = Path(out)
    log: dict = {"kind": "rigid", "seed": int(seed), "ranges": ranges, "subjects": {}}
    moved = []
    for rec in records:
        if not rec.path.lower().endswith((".nii", ".nii.gz")):
            raise DatasetError("--perturb rigid moves NIfTI volumes; this dataset has other files")
        params = random_rigid(subject_rng(seed, rec.subject), **ranges)
        img = nib.load(rec.path, mmap=False)
        motion = world_motion(params, img.affine, img.shape)
        case = out / rec.subject
        moved.append(
            replace(
                rec,
                path=_moved_copy(rec.path, case, motion, 1),
                labels_path=_moved_copy(rec.labels_path, case, motion, 0),
                mask_path=_moved_copy(rec.mask_path, case, motion, 0),
                extra_paths=[_moved_copy(p, case, motion, 1) for p in rec.extra_paths],
            )
        )
        log["subjects"][rec.subject] = {**params, "world_motion": motion.round(6).tolist()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "perturbation.json").write_text(json.dumps(log, indent=1))
    return moved

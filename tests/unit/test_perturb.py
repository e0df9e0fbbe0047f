"""Rigidly moved test volumes (pipeline.evaluation.perturb, `bench quality --perturb rigid`)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from patchrank.pipeline.data.datasets import DatasetError, Record, discover_brats
from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset
from patchrank.pipeline.data.pose import rotation
from patchrank.pipeline.evaluation.perturb import (
    move_array,
    perturb_records,
    random_rigid,
    subject_rng,
    world_motion,
)

ZERO = {"axial_deg": 0.0, "lr_deg": 0.0, "ap_deg": 0.0, "shift_mm": [0.0, 0.0, 0.0]}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, PhantomSpec(shape=(64, 64, 32), n_normal=1, n_abnormal=2, seed=3))
    return discover_brats(root)


def test_rotation_is_proper_and_about_the_named_axes():
    r = rotation(15.0, 6.0, -6.0)
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(rotation(90.0) @ [1, 0, 0], [0, 1, 0])  # axial: R -> A, S-I axis fixed
    assert np.allclose(rotation(0.0, 90.0) @ [0, 1, 0], [0, 0, 1])  # about R-L: A -> S


def test_random_rigid_ranges_and_seeding():
    draws = [random_rigid(subject_rng(7, f"s{i}")) for i in range(200)]
    axial = np.array([d["axial_deg"] for d in draws])
    tilt = np.array([[d["lr_deg"], d["ap_deg"]] for d in draws])
    shift = np.array([d["shift_mm"] for d in draws])
    assert np.abs(axial).max() <= 15 and np.abs(axial).max() > 12
    assert np.abs(tilt).max() <= 6 and np.abs(shift).max() <= 12
    assert random_rigid(subject_rng(7, "s3")) == draws[3]  # the subject's own stream
    assert random_rigid(subject_rng(8, "s3")) != draws[3]


def test_zero_perturbation_is_identity(phantom):
    img = nib.load(phantom[0].path)
    data = np.asarray(img.dataobj)
    motion = world_motion(ZERO, img.affine, img.shape)
    assert np.allclose(motion, np.eye(4))
    assert np.array_equal(move_array(data, img.affine, motion, 0, 0.0), data)
    assert np.allclose(move_array(data, img.affine, motion, 1, 0.0), data, atol=1e-3)


def test_moved_copy_keeps_image_seg_and_mask_consistent(phantom, tmp_path):
    rec = max(phantom, key=lambda r: int((np.asarray(nib.load(r.labels_path).dataobj) > 0).sum()))
    moved = perturb_records([rec], tmp_path, seed=5)[0]
    src, dst = nib.load(rec.path), nib.load(moved.path)
    assert np.allclose(dst.affine, src.affine) and dst.shape == src.shape  # a valid NIfTI on the same grid
    img = np.asarray(dst.dataobj).astype(np.float64)
    seg, mask = np.asarray(nib.load(moved.labels_path).dataobj), np.asarray(nib.load(moved.mask_path).dataobj)
    seg0 = np.asarray(nib.load(rec.labels_path).dataobj)
    assert set(np.unique(seg)) <= set(np.unique(seg0))  # nearest neighbour: no new label values
    assert abs(int((seg > 0).sum()) - int((seg0 > 0).sum())) < 0.1 * (seg0 > 0).sum()
    assert (mask[seg > 0] > 0).mean() > 0.99  # the lesion stays inside the moved brain
    assert (img[mask > 0] > 0).mean() > 0.99 and (img[mask == 0] > 0).mean() < 0.05  # the image moved with it
    assert img[seg == 1].mean() > img[(mask > 0) & (seg == 0)].mean() + 100  # the bright core where the seg says
    params = json.loads((tmp_path / "perturbation.json").read_text())["subjects"][rec.subject]
    assert params == {**random_rigid(subject_rng(5, rec.subject)), "world_motion": params["world_motion"]}
    moment = lambda m: np.argwhere(m > 0).mean(0)  # noqa: E731
    expect = np.array(params["world_motion"]) @ np.r_[moment(seg0), 1]
    assert np.allclose(moment(seg), expect[:3], atol=0.5)  # the lesions' centroid moved as recorded (unit affine)


def test_refuses_2d_images(tmp_path):
    with pytest.raises(DatasetError, match="NIfTI"):
        perturb_records([Record(str(tmp_path / "a.jpg"), "a")], tmp_path, 0)


def test_fold_trains_on_originals_and_tests_on_moved_copies(phantom, tmp_path):
    from patchrank.pipeline.evaluation.folds import build_fold
    from patchrank.pipeline.settings import TrainConfig

    moved = perturb_records(phantom, tmp_path, seed=1)
    test_subject = max(phantom, key=lambda r: int((np.asarray(nib.load(r.labels_path).dataobj) > 0).sum())).subject
    fold = build_fold(phantom, [test_subject], TrainConfig(), 0, moved)
    assert [t.record.path for t in fold.test] == [r.path for r in moved if r.subject == test_subject]
    assert test_subject not in set(fold.train.subjects) | set(fold.val.subjects)

"""Pose canonicalisation of brain volumes (pipeline.data.pose, `preprocess.pose`): the estimate recovers a
known rotation, a volume near the target pose is left bit-identical, and coordinates and maps of a moved
copy go back to that copy's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from patchrank.pipeline.data.loaders import load_scan
from patchrank.pipeline.data.phantom import PhantomSpec, make_subject
from patchrank.pipeline.data.pose import Pose, canonicalise, estimate, rotation, to_target
from patchrank.pipeline.data.preprocess import load_prepared
from patchrank.pipeline.evaluation.perturb import move_array, world_motion

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
MOVE = {"axial_deg": 12.0, "lr_deg": 0.0, "ap_deg": 5.0, "shift_mm": [4.0, -6.0, 0.0]}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A normal phantom with one bright spot (a landmark), and a rigidly moved copy, as NIfTI."""
    flair, mask, _ = make_subject(np.random.default_rng(4), PhantomSpec(shape=(80, 80, 36)), False)
    flair = flair.astype(np.float32)
    flair[30:34, 52:56, 16:20] = 1500.0  # off the midline: left-right asymmetric on purpose
    root = tmp_path_factory.mktemp("pose")
    nib.save(nib.Nifti1Image(flair, AFFINE), str(root / "reg.nii.gz"))
    motion = world_motion(MOVE, AFFINE, flair.shape)
    nib.save(nib.Nifti1Image(move_array(flair, AFFINE, motion, 1, 0.0), AFFINE), str(root / "moved.nii.gz"))
    return root / "reg.nii.gz", root / "moved.nii.gz"


def _pose(path) -> Pose:
    scan = load_scan(path)
    return estimate(scan.array[0], scan.array[0] != 0, (1.5, 1.5, 2.0))


def test_estimate_recovers_the_rotation(volumes):
    reg, moved = _pose(volumes[0]), _pose(volumes[1])
    assert abs(moved.yaw - reg.yaw - MOVE["axial_deg"]) < 1.0
    assert abs(moved.roll - reg.roll - MOVE["ap_deg"]) < 1.0
    assert abs(moved.offset[0] - reg.offset[0] - MOVE["shift_mm"][0]) < 1.5  # the mid-sagittal plane moved with it


def test_to_target_of_a_pose_onto_itself_is_identity():
    p = Pose(7.0, -3.0, (2.0, -5.0, 1.0))
    assert np.allclose(to_target(p, p, (40, 40, 20), (1.5, 1.5, 2.0)), np.eye(4))
    assert np.allclose(Pose.of(p.as_list()).rotation, rotation(7.0, 0.0, -3.0))


def test_within_tolerance_is_left_bit_identical(volumes):
    scan = load_scan(volumes[0])
    fg = scan.array[0] != 0
    target = estimate(scan.array[0], fg, (1.5, 1.5, 2.0))
    near = Pose(target.yaw + 1.0, target.roll, target.offset).as_list()
    arr, fg2, _, pull = canonicalise(scan.array, fg, None, (1.5, 1.5, 2.0), near)
    assert pull is None and arr is scan.array and fg2 is fg


def test_a_shifted_midline_is_resampled_even_when_the_rotation_is_within_tolerance(volumes):
    """A head moved sideways but not turned: symmetry about the image centre needs the plane put back."""
    scan = load_scan(volumes[0])
    fg = scan.array[0] != 0
    target = estimate(scan.array[0], fg, (1.5, 1.5, 2.0))
    aside = Pose(target.yaw, target.roll, (target.offset[0] + 4.0, *target.offset[1:])).as_list()
    arr, _, _, pull = canonicalise(scan.array, fg, None, (1.5, 1.5, 2.0), aside)
    assert pull is not None and np.allclose(pull[:3, :3], np.eye(3))
    assert abs(pull[0, 3] * 1.5 + 4.0) < 1e-6  # output x reads input x - 4 mm: the content moves 4 mm onto the plane


def test_moved_copy_is_scored_in_the_target_pose_and_maps_back(volumes):
    """With the registered volume's pose as target, the moved copy is resampled back onto it; the landmark's
    patch coordinates and the map land on the moved file's own voxels."""
    from patchrank.pipeline.data.geometry import canonical_to_native
    from patchrank.pipeline.scan_scoring import locate, map_volume

    target = tuple(_pose(volumes[0]).as_list())
    pre = {"image_size": 80, "pose": True, "pose_target": target, "min_area_fraction": 0.0}
    reg = load_prepared(volumes[0], {**pre, "pose": False})
    prep = load_prepared(volumes[1], pre)
    assert prep.geometry.pose is not None
    a, b = reg.foreground, prep.foreground
    assert (a & b).sum() / np.sqrt(a.sum() * b.sum()) > 0.85  # the brain is back where the registered one is
    s, y, x = np.unravel_index(np.argmax(prep.images[:, 0]), prep.images[:, 0].shape)
    hit = locate(int(y), int(x), int(y) + 1, int(x) + 1, int(prep.slice_index[s]), prep.geometry)
    moved = np.asarray(nib.load(str(volumes[1])).dataobj)
    spot = np.argwhere(moved > 1000).mean(0)
    assert np.linalg.norm(np.array([hit["i"], hit["j"], hit["k"]]) - spot) < 3.0  # voxels of the moved file
    world = AFFINE @ np.r_[spot, 1.0]
    assert np.linalg.norm(np.array([hit["ras_x_mm"], hit["ras_y_mm"], hit["ras_z_mm"]]) - world[:3]) < 4.5
    native = canonical_to_native(map_volume(prep, prep.images[:, 0]), prep.geometry)  # the image as a "map"
    assert native.shape == moved.shape
    spot_map = np.unravel_index(np.argmax(native), native.shape)
    assert np.linalg.norm(np.array(spot_map) - spot) < 3.0


def test_pose_settings_stored_only_when_on():
    from patchrank.pipeline.settings import PreprocessConfig

    assert "pose" not in PreprocessConfig().saved()  # checkpoints without pose are as before the setting existed
    on = PreprocessConfig(pose=True, pose_target=(1.0, 2.0, 3.0, 4.0, 5.0)).saved()
    assert on["pose"] is True and on["pose_target"] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_fits_the_target_and_the_checkpoint_scores_a_moved_copy(phantom_dir, volumes, tmp_path):
    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.commands.train import fit
    from patchrank.pipeline.scan_scoring import score_prepared
    from patchrank.pipeline.settings import TrainConfig

    cfg = TrainConfig(
        epochs=1, critic_epochs=0, batch_size=8, preprocess={"image_size": 32, "pose": True},
        arch={"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2},
    )  # fmt: skip
    fit(phantom_dir, tmp_path / "m.pt", cfg, show=False)
    model = load_checkpoint(tmp_path / "m.pt")
    assert model.preprocess["pose"] is True and len(model.preprocess["pose_target"]) == 5
    prep = load_prepared(volumes[1], model.preprocess)
    assert prep.geometry.pose is not None  # the moved copy was resampled into the training pose
    assert np.isfinite(score_prepared(model, prep, top_n=3).scan_score)

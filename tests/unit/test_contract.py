"""The input contract of volume models (pipeline.data.contract): a skull-stripped brain on a constant
background, else a ScanError (a `failed` row), never a silent score."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from patchrank.pipeline.data.loaders import ScanError
from patchrank.pipeline.data.phantom import PhantomSpec, make_subject
from patchrank.pipeline.data.preprocess import load_prepared

PRE = {"image_size": 32}


def _brain():
    flair, mask, _ = make_subject(np.random.default_rng(2), PhantomSpec(shape=(64, 64, 24)), False)
    return flair.astype(np.float32), mask > 0


def _write(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), str(path))
    return path


def test_skull_stripped_phantom_scores(tmp_path):
    flair, brain = _brain()
    prep = load_prepared(_write(tmp_path / "brain.nii.gz", flair), PRE)
    assert prep.foreground.any() and not prep.foreground.all()


def test_head_with_non_zero_background_fails_with_the_reason(tmp_path):
    flair, brain = _brain()
    head = np.where(brain, flair, 30 + 10 * np.random.default_rng(0).random(flair.shape))  # scalp, skull, noisy air
    with pytest.raises(
        ScanError, match="^head.nii.gz: not a skull-stripped brain: the volume.s border is not a constant"
    ):
        load_prepared(_write(tmp_path / "head.nii.gz", head), PRE)


def test_foreground_filling_the_field_of_view_fails(tmp_path):
    flair, brain = _brain()
    full = np.pad(flair[16:48, 16:48], ((1, 1), (1, 1), (0, 0)))  # the brain's central block: no background left
    full[1:-1, 1:-1][full[1:-1, 1:-1] == 0] = 400
    with pytest.raises(
        ScanError, match="not a skull-stripped brain: the non-background region covers 8[0-9]% of the field of view"
    ):
        load_prepared(_write(tmp_path / "full.nii.gz", full), PRE)


def test_constant_background_of_a_z_scored_volume_is_background(tmp_path):
    """A provider's z-scoring turns the zero background into one constant: the brain is still the foreground."""
    flair, brain = _brain()
    z = (flair - flair[brain].mean()) / flair[brain].std()
    a = load_prepared(_write(tmp_path / "raw.nii.gz", flair), PRE)
    b = load_prepared(_write(tmp_path / "z.nii.gz", z), PRE)
    assert np.array_equal(a.foreground, b.foreground) and np.array_equal(a.slice_index, b.slice_index)
    assert np.allclose(a.images, b.images, atol=1e-4)


def test_real_brats_volumes_pass(shared_data):
    files = sorted((shared_data / "brats2015").glob("*/*_flair.nii.gz"))
    assert files
    for f in files:
        prep = load_prepared(f, PRE)
        assert 0.05 < prep.foreground.mean() < 0.6  # the brain, not the whole field of view


def test_foreground_larger_than_a_brain_fails_by_its_volume(tmp_path):
    """The same phantom brain on a 1 mm grid passes; on a 4 mm grid it would hold litres: refused by volume."""
    flair, brain = _brain()
    ml = brain.sum() * 64 / 1000
    assert ml > 2200 and brain.mean() < 0.6  # the field-of-view check alone would pass it
    big = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(flair, np.diag([4.0, 4.0, 4.0, 1.0])), str(big))
    with pytest.raises(ScanError, match=r"^big.nii.gz: not a skull-stripped brain: the non-background region holds "):
        load_prepared(big, PRE)


def test_real_brain_inside_a_skull_and_scalp_on_a_zero_background_fails(shared_data, tmp_path):
    """A BraTS brain wrapped in a 5 mm dark skull and a 5 mm bright scalp, air kept at the background value (its
    border is constant, and it covers 26 % of the field of view): refused as too large for a brain."""
    from scipy.ndimage import distance_transform_edt

    src = sorted((shared_data / "brats2015").glob("*/*_flair.nii.gz"))[0]
    img = nib.load(src)
    flair = np.asarray(img.dataobj, np.float32)
    background = flair[0, 0, 0]
    brain = flair != background
    depth = distance_transform_edt(~brain, sampling=img.header.get_zooms()[:3])
    head = flair.copy()
    head[(depth > 0) & (depth <= 5)] = background + 0.05  # skull: almost no signal, but not the background value
    head[(depth > 5) & (depth <= 10)] = np.percentile(flair[brain], 99)  # scalp fat: bright
    out = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(head, img.affine), str(out))
    with pytest.raises(ScanError, match=r"non-background region holds 2,3\d\d mL \(a skull-stripped brain holds at"):
        load_prepared(out, PRE)
    assert load_prepared(src, PRE).foreground.any()  # the brain alone passes

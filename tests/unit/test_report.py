"""The HTML report's pieces: one colour scale per scan, and where a scan lies in the archive (no absolute path)."""

from __future__ import annotations

import numpy as np

from patchrank.pipeline.report import _common_folder, _map_scale, _relative


def test_colour_scale_is_the_scans_not_the_slices():
    """Two scored slices of one map, a quiet one and one with a hot spot: the scale comes from the scored voxels
    of the whole volume (each slice's background, at its minimum, left out), so the quiet slice is not
    stretched to look hot."""
    vol = np.full((20, 20, 3), -5.0, np.float32)  # slice 2: not scored
    vol[..., 1] = -3.0  # each slice's background: its own minimum
    vol[5:15, 5:15, 0] = np.linspace(0, 1, 100).reshape(10, 10)  # quiet slice: 0 ... 1
    vol[5:15, 5:15, 1] = np.linspace(0, 1, 100).reshape(10, 10)
    vol[8:10, 8:10, 1] = 9.0  # hot spot
    lo, hi = _map_scale(vol)
    scored = vol[5:15, 5:15, :2]
    assert np.allclose((lo, hi), np.percentile(scored, [90, 99.8]))
    assert 0.8 < lo < 1.0 and hi > 8  # the quiet slice's top is at the bottom of the scale: barely coloured
    flat = np.zeros((4, 4, 2), np.float32)
    assert _map_scale(flat)[1] > _map_scale(flat)[0]  # a constant map still gives a valid scale


def test_hover_text_is_the_place_below_the_common_folder():
    uris = ["/data/archive/site1/a_flair.nii.gz", "/data/archive/site2/dicom/s7"]
    common = _common_folder(uris)
    assert common == "/data/archive"
    assert [_relative(u, common) for u in uris] == ["site1/a_flair.nii.gz", "site2/dicom/s7"]
    s3 = ["s3://bucket/scans/x/a.nii.gz", "s3://bucket/scans/y/b.nii.gz"]
    assert _common_folder(s3) == "s3://bucket/scans"
    assert _relative(s3[1], _common_folder(s3)) == "y/b.nii.gz"
    assert _common_folder([uris[0], s3[0]]) == ""  # nothing shared: the file name only
    assert _relative(uris[0], "") == "a_flair.nii.gz"
    assert _common_folder(["/a.nii.gz", "/b.nii.gz"]) == ""  # only the filesystem root in common

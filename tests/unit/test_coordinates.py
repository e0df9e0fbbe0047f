"""Patch centres in the input's own voxels and world mm, and maps on the input's grid: RAS, LPS and oblique
copies of one scan score the same and report the same place."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from patchrank.pipeline.data.geometry import Geometry, canonical_to_native

RAS = np.array([[1.2, 0, 0, -40.0], [0, 1.1, 0, -35.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
_A = np.deg2rad(10)
ROT = np.array([[np.cos(_A), -np.sin(_A), 0, 0], [np.sin(_A), np.cos(_A), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def _flip_xy(shape) -> np.ndarray:
    """Voxel map of an array flipped along x and y: i' -> i = X-1-i', j' -> Y-1-j'."""
    return np.array([[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    from patchrank.pipeline.data.phantom import PhantomSpec, make_subject

    vol = make_subject(np.random.default_rng(5), PhantomSpec(shape=(64, 56, 24), min_radius=3, max_radius=6), True)[0]
    root = tmp_path_factory.mktemp("coords")
    paths = {
        "ras": (vol, RAS),
        "lps": (vol[::-1, ::-1].copy(), RAS @ _flip_xy(vol.shape)),
        "oblique": (vol, ROT @ RAS),
    }
    out = {}
    for name, (data, affine) in paths.items():
        out[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(out[name]))
    return out, vol.shape


def test_geometry_round_trip_on_a_permuted_grid():
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[0, 0, -2.0, 10], [-1.0, 0, 0, 5], [0, 1.5, 0, -3], [0, 0, 0, 1]])  # P, I, L-ish axes
    img = nib.Nifti1Image(data, affine)
    canon = nib.as_closest_canonical(img)
    geo = Geometry.of(affine, data.shape)
    assert np.allclose(geo.canonical, canon.affine) and geo.canonical_shape == canon.shape
    assert np.array_equal(canonical_to_native(np.asarray(canon.dataobj), geo), data)
    c = np.array([1.0, 2.0, 3.0])
    native = geo.native_index(c)
    assert np.allclose(affine[:3, :3] @ native + affine[:3, 3], geo.world(c))
    assert np.asarray(canon.dataobj)[1, 2, 3] == data[tuple(native.astype(int))]


def test_ras_lps_oblique_copies_report_one_place(copies, tiny_checkpoint, tmp_path):
    from patchrank.api import load

    paths, shape = copies
    det = load(tiny_checkpoint)
    res = {k: det.score(p, top=3, maps=True) for k, p in paths.items()}
    assert res["ras"].scan_score == pytest.approx(res["lps"].scan_score, abs=1e-6)
    assert res["ras"].scan_score == pytest.approx(res["oblique"].scan_score, abs=1e-6)
    for a, b, o in zip(res["ras"].patches, res["lps"].patches, res["oblique"].patches):
        assert (b.i, b.j, b.k) == (shape[0] - 1 - a.i, shape[1] - 1 - a.j, a.k)  # the LPS file's own voxels
        ras_mm = RAS[:3, :3] @ [a.i, a.j, a.k] + RAS[:3, 3]
        assert np.allclose([a.ras_x_mm, a.ras_y_mm, a.ras_z_mm], ras_mm)
        assert np.allclose([b.ras_x_mm, b.ras_y_mm, b.ras_z_mm], ras_mm)  # same place in the world
        assert (o.i, o.j, o.k) == (a.i, a.j, a.k)
        assert np.allclose([o.ras_x_mm, o.ras_y_mm, o.ras_z_mm], ROT[:3, :3] @ ras_mm)
    # maps on each input's own grid and affine
    m = res["ras"].map_volume
    assert m.shape == shape and np.isfinite(m).all() and m.max() > m.min()
    assert np.allclose(res["lps"].map_volume, res["ras"].map_volume[::-1, ::-1], atol=1e-6)
    written = nib.load(str(res["lps"].save_map(tmp_path / "lps_map.nii.gz")))
    assert np.allclose(written.affine, RAS @ _flip_xy(shape), atol=1e-5)
    assert np.allclose(np.asarray(written.dataobj), res["lps"].map_volume, atol=1e-6)
    frame = res["oblique"].to_frame()
    assert {"i", "j", "k", "ras_x_mm", "ras_y_mm", "ras_z_mm"} <= set(frame.columns)

"""Loaders on small generated NIfTI/PNG files, their clear errors, and the shared data when present."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from patchrank.pipeline.data.loaders import ScanError, load_image, load_nifti, load_scan
from patchrank.pipeline.data.preprocess import preprocess_scan
from patchrank.pipeline.settings import PreprocessConfig


def _brain(shape=(40, 48, 12), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth ellipsoid 'brain' (float, mean ~1, std ~0.2) and its mask."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = (g[0] ** 2 / 0.8 + g[1] ** 2 / 0.8 + g[2] ** 2 / 1.2) < 1
    vol = (1 + 0.3 * np.sin(4 * g[0]) * np.cos(3 * g[1]) + 0.05 * rng.normal(size=shape)) * mask
    return vol.astype(np.float32), mask


def _save(path, arr, affine=None, dtype=None):
    nib.save(nib.Nifti1Image(arr.astype(dtype or arr.dtype), np.eye(4) if affine is None else affine), str(path))
    return path


def test_nifti_canonical_orientation(tmp_path):
    arr = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored L->R: canonical RAS must flip axis 0
    out = load_nifti(_save(tmp_path / "a.nii.gz", arr, flip))
    assert out.dtype == np.float32 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, arr[::-1])
    np.testing.assert_array_equal(load_nifti(_save(tmp_path / "b.nii", arr)), arr)


def test_raw_int16_and_prenormalised_give_comparable_inputs(tmp_path):
    vol, mask = _brain()
    raw = _save(tmp_path / "raw.nii.gz", np.rint(vol * 800 + 0 * mask), dtype=np.int16)  # raw scanner-like units
    z = np.where(mask, (vol - vol[mask].mean()) / vol[mask].std(), 0)
    pre = _save(tmp_path / "z.nii.gz", z, dtype=np.float32)
    m = _save(tmp_path / "mask.nii.gz", mask.astype(np.uint8))
    cfg = PreprocessConfig(image_size=32)
    a = preprocess_scan(load_scan(raw, mask_path=m), cfg)
    b = preprocess_scan(load_scan(pre, mask_path=m), cfg)
    assert a.images.shape == b.images.shape and a.images.min() >= -1 and a.images.max() <= 1
    np.testing.assert_allclose(a.images, b.images, atol=0.01)
    np.testing.assert_array_equal(a.slice_index, b.slice_index)


def test_relative_axial_position(tmp_path):
    vol, _ = _brain()
    vol[..., :2] = 0
    vol[18:21, 22:25, :2] = 1.0  # the two lowest slices: tiny foreground, fail the 15 % area rule
    prep = preprocess_scan(load_scan(_save(tmp_path / "v.nii.gz", vol)), PreprocessConfig(image_size=32))
    k = prep.slice_index
    assert prep.position[0] == 0.0 and prep.position[-1] == 1.0 and np.all(np.diff(prep.position) > 0)
    np.testing.assert_allclose(prep.position, (k - k[0]) / (k[-1] - k[0]))
    every = preprocess_scan(
        load_scan(_save(tmp_path / "v.nii.gz", vol)), PreprocessConfig(image_size=32), all_slices=True
    )
    kept = np.isin(every.slice_index, k)
    np.testing.assert_allclose(every.position[kept], prep.position)  # same levels whichever slices are returned
    assert (every.position[~kept] < 0).any() or (every.position[~kept] > 1).any()


def test_images_gray_and_rgb(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(tmp_path / "g.jpg")
    x = load_image(tmp_path / "c.png")
    assert x.shape == (3, 20, 30) and x[0].min() == 1.0 and x[1].max() == 0.0
    assert load_image(tmp_path / "c.png", channels=1).shape == (1, 20, 30)
    g = load_image(tmp_path / "g.jpg")
    assert g.shape == (1, 20, 30) and abs(float(g.mean()) - 128 / 255) < 0.02
    scan = load_scan(tmp_path / "c.png", channels=3)
    assert scan.kind == "image" and scan.array.shape == (3, 20, 30, 1)
    prep = preprocess_scan(scan, PreprocessConfig(image_size=16, channels=3))
    assert prep.images.shape == (1, 3, 16, 16)
    assert np.isnan(prep.position).all()  # a 2D image has no axial level
    assert prep.foreground[0, 0, 8].all() and not prep.foreground[0, 0, 0].any()  # 20x30 padded to square


def test_dark_lesion_foreground_for_dermoscopy(tmp_path):
    from patchrank.pipeline.data.preprocess import dark_foreground

    h = w = 60
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((3, h, w), 0.8, np.float32) + np.random.default_rng(0).normal(0, 0.02, (3, h, w)).astype(np.float32)
    lesion = (yy - 30) ** 2 + (xx - 28) ** 2 < 100  # dark blob in the middle
    img[:, lesion] = 0.3
    corners = ((yy - 29.5) / 30) ** 2 + ((xx - 29.5) / 30) ** 2 > 1.0  # black vignetting
    img[:, corners] = 0.05
    fg = dark_foreground(img)
    assert fg[lesion].all() and not fg[corners].any()
    assert fg.sum() < 2 * lesion.sum()  # the lesion plus a thin border, not the skin
    assert dark_foreground(np.full((3, 20, 20), 0.5, np.float32)).all()  # nothing distinct -> every pixel
    Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "d.png")
    scan = load_scan(tmp_path / "d.png", channels=3)
    dark = preprocess_scan(scan, PreprocessConfig(image_size=32, channels=3, image_foreground="dark"))
    every = preprocess_scan(scan, PreprocessConfig(image_size=32, channels=3))
    assert every.foreground.all() and 0.05 < dark.foreground.mean() < 0.4
    np.testing.assert_array_equal(dark.images, every.images)  # only the foreground differs


def _hairy_lesion(h: int, w: int) -> tuple[np.ndarray, ...]:
    """(3, h, w, 1) light skin with a dark lesion carrying low-contrast dots (0.08 darker, pigment-network-like)
    and a thin dark line across -> image, lesion, hair on skin, the hair's soft edge on skin."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w) * 100
    img = np.full((3, h, w), 0.8, np.float32)
    lesion = (yy - 50) ** 2 + (xx - 50) ** 2 < 25**2
    img[:, lesion] = 0.45
    dots = lesion & (np.sin(yy * 1.2) * np.sin(xx * 1.2) > 0.6)  # dots ~1.5 % of the side apart
    img[:, dots] = 0.37
    dist = np.abs(yy - 0.3 * xx - 20)
    hair = dist < 0.6  # a line ~1 % of the side wide
    halo = (dist < 0.6 + 100 / max(h, w)) & ~hair & ~lesion  # its 1-px soft edge, too faint to be found itself
    img[:, hair] = 0.15
    img[:, halo] = 0.74
    return img[..., None], lesion, hair & ~lesion, halo


@pytest.mark.parametrize("side", [180, 600])
def test_hair_is_painted_out_and_the_lesion_kept(tmp_path, side):
    from patchrank.pipeline.data.preprocess import without_hair

    img, lesion, hair, halo = _hairy_lesion(side, side)
    out = without_hair(img)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.median(out[0, hair, 0]) > 0.7  # the line on skin now looks like skin
    assert np.median(out[0, halo, 0]) > 0.78  # and its soft edge too (the mask's 1-px dilation)
    yy, xx = np.mgrid[0:side, 0:side] / side * 100
    core = ((yy - 50) ** 2 + (xx - 50) ** 2 < 20**2) & (np.abs(yy - 0.3 * xx - 20) > 3)  # inside, off the line
    np.testing.assert_array_equal(out[:, core], img[:, core])  # the dots (0.08 darker) survive the 0.12 threshold
    assert (without_hair(img, threshold=0.06)[:, core] != img[:, core]).any()  # a lower threshold would erase them
    clean = np.full((3, 40, 40, 1), 0.6, np.float32)
    np.testing.assert_array_equal(without_hair(clean), clean)
    Image.fromarray((img[..., 0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "h.png")
    scan = load_scan(tmp_path / "h.png", channels=3)
    plain = preprocess_scan(scan, PreprocessConfig(image_size=32, channels=3))
    painted = preprocess_scan(scan, PreprocessConfig(image_size=32, channels=3, image_hair=True))
    assert painted.images.mean() > plain.images.mean()  # the dark line is gone
    assert "image_hair" not in PreprocessConfig().saved()  # checkpoints without the step stay as before
    assert PreprocessConfig(image_hair=True).saved()["image_hair"] is True


def test_hair_on_large_non_square_gray_and_tiny_images():
    from patchrank.pipeline.data.preprocess import without_hair

    h, w, col = 300, 700, 350  # analysed on a 110 x 256 copy (2.73 px per working pixel)
    img = np.full((1, h, w, 2), 0.8, np.float64)
    img[:, :, col - 1 : col + 2, 0] = 0.2  # a vertical and a horizontal hair 3 px wide in slice 0; slice 1 is clean
    img[:, 149:152, :, 0] = 0.2
    out = without_hair(img)
    assert out.shape == img.shape and out.dtype == np.float64
    assert (out[0, :, col - 1 : col + 2, 0] > 0.7).all() and (out[0, 149:152, :, 0] > 0.7).all()  # whole length
    changed = out[0, :, :, 0] != img[0, :, :, 0]
    for band, centre in ((np.flatnonzero(changed[:140].any(0)), col), (np.flatnonzero(changed[:, :340].any(1)), 150)):
        assert abs((centre - band.min()) - (band.max() - centre)) <= 1 and band.max() - centre <= 8  # centred
    np.testing.assert_array_equal(out[..., 1], img[..., 1])
    tiny = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    assert without_hair(tiny).shape == tiny.shape
    from patchrank.pipeline.data.preprocess import HAIR_BYTES_PER_VALUE, peak_bytes

    assert peak_bytes(1000, hair=True) - peak_bytes(1000) == 1000 * HAIR_BYTES_PER_VALUE  # the ingest charges the copy


def test_clear_errors(tmp_path):
    vol, mask = _brain()
    good = _save(tmp_path / "v.nii.gz", vol)
    with pytest.raises(ScanError, match="file not found"):
        load_scan(tmp_path / "missing.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ScanError, match="empty file"):
        load_scan(tmp_path / "empty.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20)[:60])
    with pytest.raises(ScanError, match="bad.nii.gz"):
        load_scan(tmp_path / "bad.nii.gz")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ScanError, match="not a readable image"):
        load_scan(tmp_path / "bad.png")
    with pytest.raises(ScanError, match="unsupported file type"):
        load_scan(tmp_path / "notes.txt")
    small = _save(tmp_path / "m.nii.gz", mask[:-2].astype(np.uint8))
    with pytest.raises(ScanError, match="mask shape"):
        load_scan(good, mask_path=small)
    with pytest.raises(ScanError, match="label shape"):
        load_scan(good, label_path=small)
    zeros = _save(tmp_path / "zeros.nii.gz", np.zeros((16, 16, 4), np.float32))
    with pytest.raises(ScanError, match="empty volume"):
        preprocess_scan(load_scan(zeros), PreprocessConfig(image_size=16))
    with pytest.raises(ScanError, match="model expects 2"):
        load_scan(good, channels=2)


def test_shared_brats_2015_and_2023_are_comparable(shared_data):
    """Pre-normalised BraTS 2015 and raw int16 BraTS 2023 land in the same value range."""
    from patchrank.pipeline.data.datasets import load_record
    from patchrank.pipeline.data.discover import discover

    cfg = PreprocessConfig(image_size=64)
    stats = []
    for folder in ("brats2015", "brats2023_unlabeled"):
        rec = discover(shared_data / folder)[0]
        prep = load_record(rec, cfg)
        fg = prep.images[:, 0][prep.foreground[:, 0]]
        assert prep.images.shape[1:] == (1, 64, 64) and len(prep.slice_index) > 50
        stats.append((float(np.median(fg)), float(fg.std())))
    (m15, s15), (m23, s23) = stats
    assert abs(m15 - m23) < 0.1 and 0.1 < s15 < 0.3 and 0.1 < s23 < 0.3


def test_shared_isic_images(shared_data):
    from patchrank.pipeline.data.discover import discover, infer_channels

    recs = discover(shared_data / "isic2016_train")
    assert len(recs) == 349 and sum(r.label for r in recs) == 147
    assert infer_channels(recs) == 3
    scan = load_scan(recs[0].path, channels=3)
    assert scan.array.shape[0] == 3 and 0 <= scan.array.min() and scan.array.max() <= 1

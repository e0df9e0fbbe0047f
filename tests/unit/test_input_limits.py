"""Inputs an attacker or an unlucky archive provides (issue 23): each is refused with a one-line
reason before it can crash the process (SIGBUS), amplify memory or time, lose information
(complex voxels, NaN pixels) or be read the wrong way up (EXIF orientation).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from patchrank.pipeline.data.files import walk_scans
from patchrank.pipeline.data.loaders import ScanError, load_image, load_nifti, load_scan
from patchrank.pipeline.data.preprocess import load_prepared, preprocess_scan
from patchrank.pipeline.settings import PreprocessConfig

ROOT = Path(__file__).resolve().parents[2]
PRE = PreprocessConfig(image_size=32).model_dump()


def _blob(shape, seed=0, dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    inside = sum(a**2 for a in g) < 0.8
    return np.where(inside, 400 + 40 * rng.standard_normal(shape), 0).astype(dtype)


def _nifti(path: Path, data: np.ndarray, zooms=None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4))
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


# ---- 3: no memory-mapping: a file truncated while being read is an error, not SIGBUS ----
_TRUNCATE_WHILE_READING = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import nibabel.arrayproxy as ap
    from patchrank.pipeline.data.loaders import ScanError, load_nifti

    path = Path(sys.argv[1])
    real = ap.array_from_file

    def read_then_truncate(*args, **kwargs):
        arr = real(*args, **kwargs)  # with mmap: a view of the file's pages, not a copy
        with open(path, "r+b") as f:
            f.truncate(400)  # another process truncates the file meanwhile
        return arr

    ap.array_from_file = read_then_truncate
    try:
        data = load_nifti(path)
        print("LOADED", data.shape)
    except ScanError as exc:
        print("SCANERROR", exc)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_uncompressed_nifti_truncated_while_read_is_no_sigbus(tmp_path):
    """Before: nibabel memory-mapped the .nii; touching pages past the new end of file after a
    truncation killed the process with SIGBUS (and every scan in flight in that replica)."""
    path = _nifti(tmp_path / "big.nii", _blob((64, 64, 48)))
    script = tmp_path / "probe.py"
    script.write_text(_TRUNCATE_WHILE_READING)
    proc = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, f"probe died with {proc.returncode} (-7 = SIGBUS): {proc.stderr[-800:]}"
    assert "LOADED" in proc.stdout or "SCANERROR" in proc.stdout, proc.stdout


def test_truncated_before_read_is_a_scan_error(tmp_path):
    path = _nifti(tmp_path / "t.nii", _blob((32, 32, 12)))
    with open(path, "r+b") as f:
        f.truncate(2000)
    with pytest.raises(ScanError, match="corrupt"):
        load_nifti(path)


def test_images_are_read_not_mapped(tmp_path, monkeypatch):
    """Pillow maps uncompressed files it opens by name; the loader hands it a file object."""
    import mmap

    Image.fromarray((np.indices((40, 48)).sum(0) % 256).astype(np.uint8)).save(tmp_path / "raw.bmp")
    calls = []
    real = mmap.mmap
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert load_image(tmp_path / "raw.bmp").shape == (1, 40, 48)
    assert not calls


# ---- 4: amplification: implausible geometry, slice and byte caps ------------------------
@pytest.mark.parametrize(
    "shape, zooms, expect",
    [
        ((8, 8, 1000), None, "implausible shape"),  # 1.2 kB that became 1000 upsampled slices
        ((8, 8, 20000), None, "implausible shape"),
        ((16, 300, 20), None, "implausible slice aspect"),
        ((32, 32, 12), (1e-6, 1e-6, 1.0), "implausible voxel size"),
        ((32, 32, 12), (1.0, 1.0, 500.0), "implausible voxel size"),
        ((64, 64, 48), (1.0, 1.0, 49.0), "implausible field of view"),
    ],
)
def test_implausible_geometry_is_refused_before_reading(tmp_path, shape, zooms, expect):
    path = _nifti(tmp_path / "odd.nii.gz", _blob(shape), zooms)
    t0 = time.perf_counter()
    with pytest.raises(ScanError, match=expect) as info:
        load_prepared(path, PRE)
    assert time.perf_counter() - t0 < 5 and "\n" not in str(info.value)


def test_plausible_scans_pass(tmp_path):
    for shape, zooms in (((64, 64, 24), None), ((40, 48, 12), (0.5, 0.5, 6.0)), ((24, 64, 64), (3.0, 0.8, 0.8))):
        prep = load_prepared(_nifti(tmp_path / "ok.nii.gz", _blob(shape), zooms), PRE)
        assert len(prep.images) > 0


def test_slice_and_byte_caps(tmp_path):
    path = _nifti(tmp_path / "v.nii.gz", _blob((48, 48, 60)))
    scan = load_scan(path)
    with pytest.raises(ScanError, match="exceed the limit of 10"):
        preprocess_scan(scan, PRE, max_slices=10)
    with pytest.raises(ScanError, match="over the limit of 1 MiB"):
        preprocess_scan(scan, PreprocessConfig(image_size=128), max_bytes=2**20)
    assert len(preprocess_scan(scan, PRE).images) > 10


def test_preprocessing_memory_grows_with_kept_slices_not_the_volume(tmp_path):
    """A 256x256x200 float volume (50 MiB) whose foreground fills 20 slices: preprocessing's
    extra peak stays under the volume's size (25 MiB; 164 MiB when every slice was normalised
    with full-volume temporaries), and the output is the same as before (test_model_upgrade)."""
    vol = np.zeros((256, 256, 200), np.float32)
    vol[64:192, 64:192, 90:110] = 1 + np.random.default_rng(0).random((128, 128, 20), dtype=np.float32)
    from patchrank.pipeline.data.loaders import Scan

    scan = Scan(vol[None], "volume")
    tracemalloc.start()
    prep = preprocess_scan(scan, PRE)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(prep.images) == 20
    assert peak < 0.75 * vol.nbytes, f"peak {peak / 2**20:.0f} MiB for a {vol.nbytes / 2**20:.0f} MiB volume"


# ---- 5, also: non-finite, complex, EXIF ---------------------------------------------------
def test_float_tiff_with_a_nan_pixel_is_refused(tmp_path):
    arr = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    arr[5, 7] = np.nan
    Image.fromarray(arr, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ScanError, match="1 non-finite"):
        load_image(tmp_path / "nan.tif")
    arr[5, 7] = 0.5
    Image.fromarray(arr, mode="F").save(tmp_path / "fine.tif")
    assert np.isfinite(load_image(tmp_path / "fine.tif")).all()


def test_complex_nifti_is_refused(tmp_path):
    data = _blob((32, 32, 12)).astype(np.complex64) * (1 + 1j)
    with pytest.raises(ScanError, match="complex-valued"):
        load_nifti(_nifti(tmp_path / "c.nii.gz", data))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:, :10] = 255  # bright band on the left of the stored pixels
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (1, 40, 20)  # displayed upright: portrait
    assert out[0, :10].mean() > 0.8 and out[0, -10:].mean() < 0.2  # the band is now on top


# ---- also: folder walks count what they skip ---------------------------------------------
def test_walk_counts_fifos_scan_named_folders_and_symlink_loops(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    _nifti(root / "good.nii.gz", _blob((32, 32, 12)))
    os.mkfifo(root / "pipe.nii.gz")
    (root / "folder.nii.gz").mkdir()
    (root / "loop_a.nii.gz").symlink_to(root / "loop_b.nii.gz")
    (root / "loop_b.nii.gz").symlink_to(root / "loop_a.nii.gz")
    (root / "dangling.nii.gz").symlink_to(root / "gone.nii.gz")
    (root / "sub").mkdir()
    (root / "linked_dir").symlink_to(root / "sub")
    (root / ".hidden.nii.gz").write_bytes(b"x")
    files, skipped = walk_scans([root])
    assert [f.name for f in files] == ["good.nii.gz"]
    why = {p.name: r for p, r in skipped}
    assert why["pipe.nii.gz"] == "not a regular file (FIFO)"
    assert why["folder.nii.gz"] == "folder named like a scan file"
    assert why["loop_a.nii.gz"] == why["loop_b.nii.gz"] == "symlink loop"
    assert why["dangling.nii.gz"] == "broken symlink"
    assert why["linked_dir"] == "symlink to a folder (not followed)"
    assert why[".hidden.nii.gz"] == "hidden file"


def test_implausible_dicom_series_is_refused_before_its_pixels_are_decoded(tmp_path, monkeypatch):
    """The same geometry rules for a DICOM series (its grid and spacing come from the headers)."""
    import patchrank.pipeline.data.dicom as dicom
    from patchrank.pipeline.data.dicom_export import write_series

    thin = np.zeros((8, 8, 100), np.float32)
    thin[2:6, 2:6] = 300
    write_series(thin, np.diag([-1.0, -1.0, 1.0, 1.0]), tmp_path / "thin")
    decoded = []
    monkeypatch.setattr(dicom, "_pixels", lambda ds: decoded.append(ds) or np.zeros((8, 8), np.float32))
    with pytest.raises(ScanError, match="implausible shape 8x8x100") as info:
        load_prepared(tmp_path / "thin", PRE)
    assert not decoded and "\n" not in str(info.value)
    ok = _blob((32, 32, 12)).astype(np.float32)
    write_series(ok, np.diag([-1.0, -1.0, 2.0, 1.0]), tmp_path / "ok")
    monkeypatch.undo()
    assert len(load_prepared(tmp_path / "ok", PRE).images) > 0

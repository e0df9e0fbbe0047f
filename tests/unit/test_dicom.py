"""DICOM input: series grouping, slice order, rescale, geometry (vs the NIfTI of the same volume and dcm2niix),
failures as one-line reasons, and no header text anywhere."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicomkit import SECRET, write_series

from patchrank.pipeline.data.dicom import find_series, load_series, series_image, series_scan_id
from patchrank.pipeline.data.files import walk_scans
from patchrank.pipeline.data.loaders import ScanError, load_nifti

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "brats2015"
# An oblique LPS-stored grid: 12 degrees about x, anisotropic voxels, an offset origin.
_T = np.deg2rad(12)
OBLIQUE = np.array(
    [
        [-0.9, 0, 0, 80.0],
        [0, -0.95 * np.cos(_T), -2.5 * np.sin(_T), 60.0],
        [0, -0.95 * np.sin(_T), 2.5 * np.cos(_T), -30.0],
        [0, 0, 0, 1],
    ]
)


def _volume() -> np.ndarray:
    """A BraTS FLAIR (cropped to 32 slices) when the dev data is present, else a phantom with lesions."""
    flair = sorted(SHARED.glob("*/*_flair.nii.gz"))
    if flair:
        v = np.asarray(nib.load(str(flair[0])).dataobj, dtype=np.float32)
        mid = v.shape[2] // 2
        return np.rint(v[:, :, mid - 16 : mid + 16])
    from patchrank.pipeline.data.phantom import PhantomSpec, make_subject

    spec = PhantomSpec(shape=(64, 60, 24), min_radius=3, max_radius=6)
    return make_subject(np.random.default_rng(3), spec, True)[0].astype(np.float32)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A PACS-like export: two series (FLAIR, T1) of one study, shuffled file names in one folder, + the
    NIfTI of the FLAIR volume."""
    root = tmp_path_factory.mktemp("dicom")
    vol = _volume()
    nii = root / "flair.nii.gz"
    nib.save(nib.Nifti1Image(vol, OBLIQUE), str(nii))
    export = root / "export"
    flair_uid, _ = write_series(vol, OBLIQUE, export, description="AX FLAIR", seed=1)
    t1_uid, _ = write_series(vol * 0.5 + 20, OBLIQUE, export, description="T1 SAG", seed=2)
    return {"root": root, "nii": nii, "export": export, "flair": flair_uid, "t1": t1_uid, "vol": vol}


def test_series_grouped_and_loaded_as_the_nifti(archive):
    scans, skipped = walk_scans([archive["export"]])
    assert skipped == []
    assert sorted(s.uid for s in scans) == sorted([archive["flair"], archive["t1"]])
    ref = find_series(archive["export"], archive["flair"])
    assert "flair" in ref.label and len(ref.files) == archive["vol"].shape[2]
    got, want = load_series(ref), load_nifti(archive["nii"])
    assert got.shape == want.shape and np.array_equal(got, want)  # order, rescale and orientation all exact
    canon = nib.as_closest_canonical(series_image(ref)).affine
    assert np.allclose(canon, nib.as_closest_canonical(nib.load(str(archive["nii"]))).affine, atol=1e-4)
    t1 = load_series(find_series(archive["export"], archive["t1"]))
    assert np.allclose(t1, want * 0.5 + 20)


def test_scan_id_stable_and_changes_with_the_series(archive, tmp_path):
    ref = find_series(archive["export"], archive["flair"])
    assert series_scan_id(ref) == series_scan_id(find_series(archive["export"], archive["flair"]))
    copy = tmp_path / "copy"
    shutil.copytree(archive["export"], copy)
    moved = find_series(copy, archive["flair"])
    first = series_scan_id(moved)
    moved.files[0].write_bytes(moved.files[0].read_bytes() + b"\0\0")
    assert series_scan_id(find_series(copy, archive["flair"])) != first


def _broken(tmp_path, kind: str) -> Path:
    vol = _volume()[:, :, :8]
    folder = tmp_path / kind
    if kind == "compressed":
        write_series(vol, OBLIQUE, folder, transfer_syntax="1.2.840.10008.1.2.4.90")
    elif kind == "localiser":
        write_series(vol, OBLIQUE, folder, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    else:
        _, files = write_series(vol, OBLIQUE, folder)
        by_pos = sorted(files, key=lambda p: float(_ipp(p) @ _normal(p)))
        if kind == "missing":
            by_pos[4].unlink()
        elif kind == "uneven":
            _shift(by_pos[4], 0.4)
        elif kind == "multiframe":
            _set(by_pos[0], NumberOfFrames=2)
    return folder


def _ipp(p):
    import pydicom

    return np.asarray(pydicom.dcmread(p).ImagePositionPatient, dtype=float)


def _normal(p):
    import pydicom

    iop = np.asarray(pydicom.dcmread(p).ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def _set(p, **tags):
    import pydicom

    ds = pydicom.dcmread(p)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(p, enforce_file_format=True)


def _shift(p, mm: float):
    _set(p, ImagePositionPatient=[float(v) for v in _ipp(p) + mm * _normal(p)])


@pytest.mark.parametrize(
    "kind, words",
    [
        ("compressed", "no installed decoder"),
        ("missing", "missing slices"),
        ("uneven", "uneven slice spacing"),
        ("localiser", "localiser"),
        ("multiframe", "multi-frame"),
    ],
)
def test_unsupported_series_give_a_one_line_reason_without_header_text(tmp_path, caplog, kind, words):
    folder = _broken(tmp_path, kind)
    caplog.set_level(logging.DEBUG)
    scans, skipped = walk_scans([folder])
    if scans:  # found as a series, fails when loaded
        assert len(scans) == 1 and not skipped
        with pytest.raises(ScanError) as err:
            load_series(scans[0])
        reason = str(err.value)
    else:  # counted as a skipped series
        assert len(skipped) == 1
        reason = skipped[0][1]
    assert words in reason and "\n" not in reason
    assert SECRET not in reason and SECRET not in caplog.text


def test_dcm2niix_agrees_on_geometry(archive, tmp_path):
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    try:
        subprocess.run([exe, "-h"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("dcm2niix cannot run here (pip install dcm2niix)")
    one = tmp_path / "flair"
    one.mkdir()
    for p in find_series(archive["export"], archive["flair"]).files:
        shutil.copy(p, one / p.name)
    out = tmp_path / "nii"
    out.mkdir()
    run = subprocess.run([exe, "-z", "y", "-f", "conv", "-o", str(out), str(one)], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    ref_img = nib.as_closest_canonical(nib.load(str(out / "conv.nii.gz")))
    ours = nib.as_closest_canonical(series_image(find_series(one)))
    assert ours.shape == ref_img.shape
    assert np.allclose(ours.affine, ref_img.affine, atol=1e-3)
    assert np.allclose(np.asarray(ours.dataobj), np.asarray(ref_img.dataobj, dtype=np.float32), atol=1e-3)


def test_dicom_and_nifti_score_the_same(archive, tiny_checkpoint, tmp_path, capsys, caplog):
    from patchrank.api import load
    from patchrank.pipeline.cli import main

    det = load(tiny_checkpoint)
    a = det.score(archive["nii"], top=5)
    b = det.score(archive["export"], series_uid=archive["flair"], top=5)
    assert a.scan_score == pytest.approx(b.scan_score, abs=1e-6)
    assert [(p.slice_index, p.row, p.col) for p in a.patches] == [(p.slice_index, p.row, p.col) for p in b.patches]
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "res.json"
    assert main(["score", str(archive["export"]), "--checkpoint", str(tiny_checkpoint), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert sorted(r["series_uid"] for r in rows) == sorted([archive["flair"], archive["t1"]])
    flair = next(r for r in rows if r["series_uid"] == archive["flair"])
    assert flair["scan_score"] == pytest.approx(a.scan_score, abs=1e-6)
    assert SECRET not in printed + out.read_text() + caplog.text


def test_enqueue_message_carries_folder_and_series(archive):
    from patchrank.pipeline.commands.enqueue import collect
    from patchrank.pipeline.service.messages import ScanMessage, message_for

    files, skipped = collect([archive["export"]])
    msgs = [message_for(f) for f in files]
    assert {m.series_uid for m in msgs} == {archive["flair"], archive["t1"]}
    assert all(m.uri == str(archive["export"].resolve()) for m in msgs)
    back = ScanMessage.from_fields(msgs[0].to_fields())
    assert back == msgs[0] and SECRET not in msgs[0].model_dump_json()


def test_read_series_finds_it_and_makes_an_unreadable_folder_a_scan_error(archive, monkeypatch):
    """The consumer reads a queued series' headers once (read_series) and loads the SeriesRef it found; a folder
    it cannot read (gone, no permission) is the input's fault: a ScanError naming the folder, not a retry."""
    from patchrank.pipeline.data import dicom

    ref = dicom.read_series(archive["export"], archive["flair"])
    assert ref == dicom.find_series(archive["export"], archive["flair"]) and ref.uid == archive["flair"]

    def unreadable(folder, uid=None):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dicom, "find_series", unreadable)
    with pytest.raises(ScanError, match=rf"^{ref.folder.name}: cannot read the series \(Permission denied\)$"):
        dicom.read_series(ref.folder, ref.uid)

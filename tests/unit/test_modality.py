"""Modality is part of the model: scans of another modality are skipped with a reason; BIDS layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicomkit import write_series

from patchrank.pipeline.data.dicom import SeriesRef
from patchrank.pipeline.data.modality import file_modality, model_modality, select, series_matches


@pytest.mark.parametrize(
    "name, mod",
    [
        ("BraTS15_pat0001_flair.nii.gz", "flair"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
        ("BraTS19_x_t1ce.nii.gz", "t1ce"),
        ("BraTS19_x_t1.nii.gz", "t1"),
        ("BraTS19_x_t2.nii", "t2"),
        ("sub-01_ses-2_FLAIR.nii.gz", "flair"),
        ("sub-01_T1w.nii.gz", "t1"),
        ("sub-01_ce-gd_T1w.nii.gz", "t1ce"),
        ("sub-01_T2w.nii", "t2"),
        ("ISIC_0000001.jpg", "rgb"),
        ("scan.nii.gz", None),
    ],
)
def test_file_modality(name, mod):
    assert file_modality(name) == mod


def test_series_patterns():
    assert series_matches("ax flair fs", "flair") and not series_matches("t1 sag", "flair")
    assert series_matches("t1 mprage", "t1") and not series_matches("t1 post gd", "t1")
    assert series_matches("t1 post gd", "t1ce")
    assert series_matches("dark fluid", "weird", pattern="dark")


def test_select_counts_the_rest_with_a_reason(tmp_path):
    files = [tmp_path / "a_flair.nii.gz", tmp_path / "a_t1.nii.gz", tmp_path / "plain.nii.gz"]
    series = [SeriesRef(tmp_path, "1.2.3", (), "ax flair"), SeriesRef(tmp_path, "1.2.4", (), "t1 sag")]
    kept, skipped = select(files + series, "flair")
    assert kept == [files[0], files[2], series[0]]
    assert [why for _, why in skipped] == [
        "modality t1, the model expects flair",
        "DICOM series description does not match modality flair",
    ]
    assert select(files, None) == (files, [])


def test_model_modality_from_checkpoint_meta():
    assert model_modality({"train_config": {"modality": "flair"}}) == "flair"
    assert model_modality({"train_config": {}}) is None


def test_score_keeps_the_model_modality(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    from patchrank.pipeline.cli import main

    case = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    folder = tmp_path / "mixed"
    folder.mkdir()
    flair = next(case.glob("*_flair.nii.gz"))
    shutil.copy(flair, folder / flair.name)
    shutil.copy(flair, folder / flair.name.replace("_flair", "_t2"))
    img = nib.load(str(flair))
    write_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, folder / "dicom" / "a", description="AX FLAIR")
    write_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, folder / "dicom" / "b", description="T1 SAG")
    out = tmp_path / "r.json"
    argv = ["score", str(folder), "--checkpoint", str(tiny_checkpoint), "--json", str(out), "--modality", "flair"]
    argv += ["--maps", str(tmp_path / "maps")]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert sum(r["series_uid"] is not None for r in rows) == 1
    assert rows[0]["scan_score"] == pytest.approx(rows[1]["scan_score"], abs=1e-6)  # DICOM == NIfTI
    out = capsys.readouterr().out
    assert "skipped 1 file (modality t2, the model expects flair): PHANTOM_0001_t2.nii.gz\n" in out
    assert "skipped 1 file (DICOM series description does not match modality flair): b (DICOM series" in out
    assert f"  a [series ...{next(r['series_uid'] for r in rows if r['series_uid'])[-8:]}]  [s" in out
    maps = [nib.as_closest_canonical(nib.load(r["map"])) for r in rows]
    names = sorted(Path(r["map"]).name for r in rows)
    ids = {r["scan_id"][:8]: Path(r["uri"]).name.removesuffix(".nii.gz") for r in rows}
    assert names == sorted(f"{stem}.{sid}.map.nii.gz" for sid, stem in ids.items())
    assert np.allclose(maps[0].affine, maps[1].affine) and np.allclose(maps[0].dataobj, maps[1].dataobj, atol=1e-6)


def test_bids_discovery_keeps_subject_and_session(phantom_dir, tmp_path):
    from patchrank.pipeline.data.bids import entities
    from patchrank.pipeline.data.discover import discover

    flair = next(phantom_dir.rglob("*_flair.nii.gz"))
    layout = [
        "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        "sub-02/anat/sub-02_FLAIR.nii",
        "sub-02/anat/sub-02_T2w.nii.gz",
        "sub-02/func/sub-02_task-rest_bold.nii.gz",
    ]
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        img = nib.load(str(flair))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(tmp_path / rel))
    recs = discover(tmp_path, modality="flair")
    assert [(r.subject, r.session) for r in recs] == [("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", None)]
    assert [r.subject for r in discover(tmp_path, modality="t1")] == ["sub-01"]
    assert entities(tmp_path / layout[1]) == {"subject": "sub-01", "session": "ses-2"}
    assert entities("/x/BraTS15_pat0001_flair.nii.gz") == {"subject": None, "session": None}


def test_score_maps_of_2d_images_says_there_are_none(tmp_path, capsys):
    from legacy_images import write_images

    from patchrank.pipeline.cli import main

    write_images(tmp_path / "skin", n=2)
    ckpt = Path(__file__).resolve().parents[1] / "data" / "legacy_v0_skin.pt"
    assert (
        main(["score", str(tmp_path / "skin"), "--checkpoint", str(ckpt), "--maps", str(tmp_path / "m"), "--quiet"])
        == 0
    )
    assert "no anomaly map for 2 2D images: --maps writes the maps of volumes only" in capsys.readouterr().out
    assert not (tmp_path / "m").exists()


def test_other_modality_is_what_the_consumer_refuses(tmp_path):
    """Scans queued without a modality (plain `enqueue`): the service refuses those known to be another."""
    from patchrank.pipeline.data.modality import other_modality

    assert other_modality(tmp_path / "p_t1ce.nii.gz", None, "flair") == (
        "p_t1ce.nii.gz: a t1ce scan by its file name; this model scores flair"
    )
    for name in ("p_flair.nii.gz", "scan.nii.gz", "photo.png"):  # matches, cannot tell, or a 2D image
        assert other_modality(tmp_path / name, None, "flair") is None
    assert other_modality(tmp_path / "p_t1ce.nii.gz", None, "rgb") is None
    vol = np.zeros((8, 8, 4), np.float32)
    write_series(vol, np.eye(4), tmp_path / "dicom" / "a", description="AX FLAIR")
    write_series(vol, np.eye(4), tmp_path / "dicom" / "b", description="T1 SAG")
    write_series(vol, np.eye(4), tmp_path / "dicom" / "c", description="")  # anonymised: cannot tell
    refs = {ref.folder.name: ref for ref in _series(tmp_path / "dicom")}
    assert other_modality(tmp_path / "dicom" / "a", refs["a"], "flair") is None
    assert other_modality(tmp_path / "dicom" / "c", refs["c"], "flair") is None
    assert other_modality(tmp_path / "dicom" / "b", refs["b"], "flair") == (
        "b: DICOM series description does not match modality flair"
    )


def _series(folder):
    from patchrank.pipeline.data.files import walk_scans

    return [s for s in walk_scans([folder])[0] if isinstance(s, SeriesRef)]


def test_score_refuses_2d_images_for_a_volume_model_even_with_modality_given(tiny_checkpoint, tmp_path, capsys):
    from legacy_images import write_images

    from patchrank.pipeline.cli import main

    write_images(tmp_path / "skin", n=1)
    argv = ["score", str(tmp_path / "skin"), "--checkpoint", str(tiny_checkpoint), "--modality", "rgb"]
    assert main(argv) == 1
    assert "img_00.png: this model was trained on volumes; cannot score a 2D image" in capsys.readouterr().out

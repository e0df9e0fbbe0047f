"""`patchrank bench dicom --checkpoint`: a held-out case exported as two DICOM series, the FLAIR one scored
with the NIfTI's score and world position, and its top patch measured against the tumour in world mm."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from patchrank.pipeline.bench.dicom_lesion import check_patient
from patchrank.pipeline.inference import load_for_inference


def test_check_patient_on_a_phantom_case(phantom_dir, tiny_checkpoint, tmp_path):
    flair = next(
        p for p in sorted(phantom_dir.rglob("*_flair.nii.gz")) if (p.parent / p.name.replace("_flair", "_seg")).exists()
    )
    case = tmp_path / "CASE_0001"
    case.mkdir()
    for suffix in ("flair", "seg"):
        shutil.copy(flair.parent / flair.name.replace("_flair", f"_{suffix}"), case / f"CASE_0001_{suffix}.nii.gz")
    img = nib.load(str(flair))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 0.5, img.affine), str(case / "CASE_0001_t1ce.nii.gz"))
    r = check_patient(load_for_inference(tiny_checkpoint), case, tmp_path / "work", near_mm=5.0)
    assert (r["series_found"], r["series_scored"]) == (2, 1)
    assert r["skipped"] == ["DICOM series description does not match modality flair"]
    assert r["dicom_score"] == pytest.approx(r["nifti_same_volume_score"], abs=1e-5)
    assert r["top_patch_same_world_point_as_nifti"]
    assert r["top_patch_distance_mm"] >= 0 and isinstance(r["top_patch_inside_tumour"], bool)

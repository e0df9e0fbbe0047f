"""`patchrank bench dicom --checkpoint CK`: does a trained model put its top patch on the lesion when a held-out
patient arrives as a PACS-like DICOM export?

For each patient of --patients (default: the last case folder under --data, BraTS-style with `_seg`), it writes
the FLAIR and the T1ce volume as two single-frame DICOM series mixed in one folder (random file names,
InstanceNumber unrelated to position: pipeline.data.dicom_export), and the NIfTI of the same FLAIR as the
DICOM stores it (scaled so the largest |value| is FULL_SCALE, int16 with slope/intercept; a zero
background stays zero). Then, through the path of `patchrank score`
(walk_scans -> modality selection from the checkpoint -> load_prepared -> score_prepared) it reports:
  * the series scored (one expected: the FLAIR);
  * the DICOM score next to the NIfTI of the same volume (equal up to float error) and the original file;
  * the top patch's centre in world mm (ras_*_mm) against the tumour segmentation in world mm: inside or
    not, the distance to the nearest tumour voxel centre, the rank of the first patch within --near-mm and
    how many of the top 10 are.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

FULL_SCALE = 16000.0  # the largest |intensity| after scaling: int16 steps of 0.5 (slope) stay in range


def _case(folder: Path, modality: str) -> Path:
    found = sorted(folder.glob(f"*_{modality}.nii.gz"))
    if not found:
        raise FileNotFoundError(f"no *_{modality}.nii.gz in {folder}")
    return found[0]


def _tumour_mm(seg_path: Path) -> np.ndarray:
    """World (RAS mm) coordinates of every tumour voxel (label > 0)."""
    import nibabel as nib

    seg = nib.load(str(seg_path))
    ijk = np.argwhere(np.asarray(seg.dataobj) > 0)
    return nib.affines.apply_affine(seg.affine, ijk)


def _scaled(vol: np.ndarray) -> np.ndarray:
    return vol * np.float32(FULL_SCALE / max(float(np.abs(vol).max()), 1e-6))


def _ras(hit) -> np.ndarray:
    return np.array([hit.ras_x_mm, hit.ras_y_mm, hit.ras_z_mm], dtype=np.float64)


def _score(model, target, series_uid=None):
    from patchrank.pipeline.data.preprocess import as_config, load_prepared
    from patchrank.pipeline.scan_scoring import score_prepared

    return score_prepared(model, load_prepared(target, as_config(model.preprocess), series_uid), top_n=20)


def check_patient(model, case: Path, tmp: Path, near_mm: float) -> dict:
    import nibabel as nib

    from patchrank.pipeline.data.dicom import SeriesRef
    from patchrank.pipeline.data.dicom_export import INTERCEPT, SLOPE, write_series
    from patchrank.pipeline.data.files import walk_scans
    from patchrank.pipeline.data.modality import model_modality, select

    flair, t1ce = _case(case, "flair"), _case(case, "t1ce")
    img = nib.load(str(flair))
    vol = _scaled(np.asarray(img.dataobj, dtype=np.float32))
    stored = np.rint((vol - INTERCEPT) / SLOPE) * SLOPE + INTERCEPT  # what the DICOM series will hold
    pacs, nifti = tmp / case.name / "pacs", tmp / case.name / "flair_as_stored.nii.gz"
    uid, _ = write_series(stored, img.affine, pacs, description="AX FLAIR", study_uid="1.2.826.0.1.1", seed=1)
    t1 = _scaled(np.asarray(nib.load(str(t1ce)).dataobj, dtype=np.float32))
    write_series(t1, img.affine, pacs, description="AX T1 POST GD", study_uid="1.2.826.0.1.1", seed=2)
    nib.save(nib.Nifti1Image(stored.astype(np.float32), img.affine), str(nifti))
    found, _ = walk_scans([pacs])
    chosen, skipped = select(found, model_modality(model.meta) or "flair")
    series = [s for s in chosen if isinstance(s, SeriesRef)]
    if [s.uid for s in series] != [uid]:
        raise RuntimeError(f"{case.name}: expected the FLAIR series alone to be scored, got {len(series)} series")
    dicom, same, original = _score(model, series[0]), _score(model, nifti), _score(model, flair)
    tumour = _tumour_mm(_case(case, "seg"))
    hits = [h for h in dicom.patches if h.ras_x_mm is not None]
    dist = [float(np.min(np.linalg.norm(tumour - _ras(h), axis=1))) for h in hits]
    top = hits[0]
    seg = nib.load(str(_case(case, "seg")))
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(seg.affine), _ras(top)))
    ijk = np.clip(ijk.astype(int), 0, np.array(seg.shape[:3]) - 1)
    inside = bool(np.asarray(seg.dataobj)[tuple(ijk)] > 0)
    return {
        "patient": case.name,
        "series_found": len(found),
        "series_scored": len(series),
        "skipped": [why for _, why in skipped],
        "dicom_score": dicom.scan_score,
        "nifti_same_volume_score": same.scan_score,
        "original_nifti_score": original.scan_score,
        "top_patch_ras_mm": [round(float(v), 1) for v in _ras(top)],
        "top_patch_inside_tumour": inside,
        "top_patch_distance_mm": round(dist[0], 1),
        "first_rank_within_near_mm": next((h.rank for h, d in zip(hits, dist) if d <= near_mm), None),
        "top10_within_near_mm": sum(d <= near_mm for d in dist[:10]),
        "top_patch_same_world_point_as_nifti": bool(np.allclose(_ras(top), _ras(same.patches[0]), atol=1e-3)),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from patchrank.pipeline.data.storage import local_checkpoint
    from patchrank.pipeline.inference import load_for_inference

    torch.set_num_threads(1)
    model = load_for_inference(local_checkpoint(args.checkpoint))
    data = Path(args.data)
    names = args.patients.split(",") if args.patients else [sorted(p.name for p in data.iterdir() if p.is_dir())[-1]]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check_patient(model, data / n, Path(tmp), args.near_mm) for n in names]
    for r in rows:
        print(
            f"{r['patient']}: {r['series_found']} series found, {r['series_scored']} scored; score DICOM "
            f"{r['dicom_score']:.4f}, NIfTI of the same volume {r['nifti_same_volume_score']:.4f}, original file "
            f"{r['original_nifti_score']:.4f}; top patch at RAS {r['top_patch_ras_mm']} mm: "
            f"{'inside' if r['top_patch_inside_tumour'] else 'outside'} the tumour, {r['top_patch_distance_mm']} mm "
            f"from its nearest voxel; first patch within {args.near_mm:g} mm: rank {r['first_rank_within_near_mm']}, "
            f"top 10 within it: {r['top10_within_near_mm']}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2))
    ok = all(
        abs(r["dicom_score"] - r["nifti_same_volume_score"]) < 1e-5 and r["top_patch_same_world_point_as_nifti"]
        for r in rows
    )
    return 0 if ok else 1

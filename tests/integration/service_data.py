"""Test archive for the service tests: 20 scans, 8 readable volumes, 4 readable PNGs (refused:
the test model was trained on volumes) and 8 broken in known ways."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

# file name -> (expected status, substring of the error)
EXPECTED_BAD = {
    "corrupt.nii.gz": "corrupt",
    "truncated.nii.gz": "corrupt",
    "notes.dcm": "unsupported file type",
    "empty.nii": "empty file",
    "fourd.nii.gz": "expected a 3D volume",
    "zeros.nii.gz": "empty volume",
    "missing.nii.gz": "file not found",
    "escape.nii.gz": "outside the allowed input roots",
    # good PNGs, but the test model was trained on FLAIR volumes
    **{f"image_{i}.png": "trained on volumes" for i in range(4)},
}


def write_archive(root: Path, phantom_dir: Path, outside: Path) -> dict[str, str]:
    """Write the archive under root; returns {file name: expected status}."""
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for f in sorted(phantom_dir.rglob("*_flair.nii.gz")):
        shutil.copy(f, root / f.name)
        expected[f.name] = "ok"
    rng = np.random.default_rng(0)
    for i in range(4):
        img = (rng.random((40 + 4 * i, 48)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"image_{i}.png")
    (root / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file at all" * 10)
    good = next(iter(sorted(root.glob("*_flair.nii.gz")))).read_bytes()
    (root / "truncated.nii.gz").write_bytes(gzip.compress(gzip.decompress(good)[:300]))
    (root / "notes.dcm").write_bytes(b"DICM" * 50)
    (root / "empty.nii").write_bytes(b"")
    nib.save(nib.Nifti1Image(rng.random((16, 16, 8, 2)).astype(np.float32), np.eye(4)), str(root / "fourd.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), str(root / "zeros.nii.gz"))
    shutil.copy(next(iter(sorted(phantom_dir.rglob("*_flair.nii.gz")))), outside / "secret.nii.gz")
    os.symlink(outside / "secret.nii.gz", root / "escape.nii.gz")
    for name in EXPECTED_BAD:
        expected[name] = "failed"
    return expected


def missing_message(root: Path):
    """A message for a file that does not exist (deleted after it was queued)."""
    from patchrank.pipeline.service.messages import ScanMessage

    uri = str((root / "missing.nii.gz").resolve())
    return ScanMessage(scan_id=hashlib.sha256(uri.encode()).hexdigest()[:32], uri=uri, submitted_at=0.0)

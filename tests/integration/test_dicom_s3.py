"""A PACS-like DICOM export under an s3:// prefix (moto): found by SeriesInstanceUID like a local folder,
one row per matching series through enqueue -> consumer -> Parquet and through `patchrank score`, with
the score of the NIfTI of the same volume, and no header text anywhere."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicomkit import SECRET, write_series
from s3server import TEST_BUCKET as BUCKET
from servicekit import LocalScorer, drive, make_consumer, service_config

from patchrank.pipeline.commands.enqueue import enqueue_paths
from patchrank.pipeline.data.dicom import SeriesRef
from patchrank.pipeline.data.files import walk_s3
from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.slice_scorer import SliceScorer
from patchrank.pipeline.service.streams import StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
AFFINE = np.array([[-1.0, 0, 0, 30.0], [0, -1.1, 0, 40.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


def _export(phantom_dir: Path, local: Path, s3) -> str:
    """The NIfTI of a phantom FLAIR and two DICOM series of it (FLAIR, T1; shuffled names), uploaded."""
    vol = np.asarray(nib.load(str(next(phantom_dir.rglob("*_flair.nii.gz")))).dataobj, dtype=np.float32)
    local.mkdir()
    nib.save(nib.Nifti1Image(vol, AFFINE), str(local / "case_flair.nii.gz"))
    uid, _ = write_series(vol, AFFINE, local / "pacs" / "study1", description="AX FLAIR", study_uid="1.2.3", seed=1)
    write_series(vol * 0.5 + 20, AFFINE, local / "pacs" / "study1", description="T1 SAG", study_uid="1.2.3", seed=2)
    c = s3.client()
    for f in sorted(local.rglob("*")):
        if f.is_file():
            c.upload_file(str(f), BUCKET, f"archive/{f.relative_to(local).as_posix()}")
    return uid


def test_dicom_series_under_an_s3_prefix(s3, redis_url, phantom_dir, tiny_checkpoint, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    uid = _export(phantom_dir, tmp_path / "export", s3)
    prefix = f"s3://{BUCKET}/archive"
    found, skipped = walk_s3(prefix, s3.endpoint)
    series = [f for f in found if isinstance(f, SeriesRef)]
    assert skipped == [] and len(found) == 3 and len(series) == 2
    assert {s.folder for s in series} == {f"{prefix}/pacs/study1"} and {len(s.files) for s in series} == {24}

    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, allowed_roots=[prefix], s3_endpoint_url=s3.endpoint)
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        report = enqueue_paths(client, [prefix], modality="flair", show=False, endpoint=s3.endpoint)
    finally:
        client.close()
    assert len(report.queued) == 2  # the NIfTI and the FLAIR series
    assert [w for _, w in report.skipped] == ["DICOM series description does not match modality flair"]
    scorer = LocalScorer(SliceScorer(cfg.checkpoint, torch_threads=1))
    asyncio.run(drive([make_consumer(cfg, scorer)], cfg, timeout_s=120))
    _, rows = ResultStore(cfg.output_dir).sql("SELECT uri, series_uid, status, scan_score, scan_id FROM scans")
    by_kind = {("dicom" if r[1] else "nifti"): r for r in rows}
    assert [r[2] for r in rows] == ["ok", "ok"], rows
    assert by_kind["dicom"][:2] == (f"{prefix}/pacs/study1", uid)
    assert by_kind["dicom"][3] == pytest.approx(by_kind["nifti"][3], abs=1e-6)
    assert by_kind["dicom"][4] in report.uris  # the scan_id is stable: the one enqueue computed

    capsys.readouterr()
    from patchrank.pipeline.cli import main

    assert main(["score", prefix, "--checkpoint", str(tiny_checkpoint), "--modality", "flair"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[2]: float(line.split()[1]) for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert (
        listed.keys() == {"case_flair.nii.gz", "study1"}
        and "skipped 1 file (DICOM series description does not match modality flair): " in out
    )
    assert listed["study1"] == pytest.approx(listed["case_flair.nii.gz"], abs=1e-3)
    assert listed["study1"] == pytest.approx(by_kind["dicom"][3], abs=1e-3)
    assert SECRET not in out and SECRET not in caplog.text and SECRET not in str(rows)

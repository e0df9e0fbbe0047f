"""A PACS-like DICOM export through the real stream path: enqueue (modality selection) -> consumer -> Parquet.
One row per matching series, the same score and world position as the NIfTI of the same volume, no header text."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicomkit import SECRET, write_series
from servicekit import LocalScorer, drive, make_consumer, service_config

from patchrank.model.checkpoint import load_checkpoint, save_checkpoint
from patchrank.pipeline.commands.enqueue import enqueue_paths
from patchrank.pipeline.evaluation import operating_point
from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.slice_scorer import SliceScorer
from patchrank.pipeline.service.streams import StreamClient

pytestmark = pytest.mark.integration
AFFINE = np.array([[-1.0, 0, 0, 30.0], [0, -1.1, 0, 40.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])  # stored LPS


@pytest.mark.timeout(180)
def test_dicom_series_screen_like_their_nifti(redis_url, phantom_dir, tiny_checkpoint, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    scans = tmp_path / "scans"
    flair = next(phantom_dir.rglob("*_flair.nii.gz"))
    vol = np.asarray(nib.load(str(flair)).dataobj, dtype=np.float32)
    scans.mkdir()
    nib.save(nib.Nifti1Image(vol, AFFINE), str(scans / "case_flair.nii.gz"))
    study = "1.2.3.4.5"
    uid, _ = write_series(vol, AFFINE, scans / "pacs", description="AX FLAIR", study_uid=study, seed=1)
    write_series(vol * 0.5 + 20, AFFINE, scans / "pacs", description="T1 SAG", study_uid=study, seed=2)
    ckpt = tmp_path / "model.pt"
    tiny = load_checkpoint(tiny_checkpoint)  # saved as `train` saves it: with its modality
    save_checkpoint(ckpt, tiny.recon, tiny.disc, preprocess=tiny.preprocess, scoring=tiny.scoring, stats=tiny.stats,
                    meta={**tiny.meta, "modality": "flair"})  # fmt: skip
    operating_point.save(ckpt, load_checkpoint(ckpt).model_version, {"threshold": 0.0})
    cfg = service_config(redis_url, tmp_path, ckpt, allowed_roots=[str(scans)], write_maps=True)
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        report = enqueue_paths(client, [scans], modality="flair", show=False)
        assert len(report.queued) == 2  # the NIfTI and the FLAIR series
        assert [w for _, w in report.skipped] == ["DICOM series description does not match modality flair"]
        untagged = enqueue_paths(client, [scans / "pacs"], show=False)  # `enqueue` without --modality: both
    finally:
        client.close()
    assert len(untagged.queued) == 2
    scorer = LocalScorer(SliceScorer(cfg.checkpoint, torch_threads=1))
    asyncio.run(drive([make_consumer(cfg, scorer)], cfg, timeout_s=90))
    store = ResultStore(cfg.output_dir)
    _, failed = store.sql("SELECT uri, error FROM scans WHERE status = 'failed'")
    assert failed == [(str((scans / "pacs").resolve()), "pacs: DICOM series description does not match modality flair")]
    _, rows = store.sql(
        "SELECT uri, series_uid, status, scan_score, result_id, map_uri, flagged, scan_id FROM scans "
        "WHERE status = 'ok' ORDER BY uri"
    )
    assert [r[6] for r in rows] == [r[3] >= 0.0 for r in rows]
    assert [r[2] for r in rows] == ["ok", "ok"]
    by_kind = {("dicom" if r[1] else "nifti"): r for r in rows}
    assert by_kind["dicom"][1] == uid and by_kind["dicom"][0] == str((scans / "pacs").resolve())
    assert by_kind["dicom"][3] == pytest.approx(by_kind["nifti"][3], abs=1e-6)
    q = "SELECT ras_x_mm, ras_y_mm, ras_z_mm, k FROM patches WHERE result_id = ? ORDER BY rank"
    top = [store.con.execute(q, [by_kind[k][4]]).fetchall() for k in ("dicom", "nifti")]
    assert len(top[0]) > 0 and np.allclose(np.array(top[0])[:, :3], np.array(top[1])[:, :3], atol=1e-3)
    maps = {k: nib.as_closest_canonical(nib.load(str(Path(cfg.output_dir) / by_kind[k][5]))) for k in by_kind}
    assert np.allclose(maps["dicom"].affine, maps["nifti"].affine, atol=1e-4)  # both overlay the same place
    assert np.allclose(np.asarray(maps["dicom"].dataobj), np.asarray(maps["nifti"].dataobj), atol=1e-5)
    nifti_map = nib.load(str(Path(cfg.output_dir) / by_kind["nifti"][5]))
    assert np.allclose(nifti_map.affine, AFFINE, atol=1e-5) and nifti_map.shape == vol.shape  # the input's grid
    dump = str(store.sql("SELECT * FROM scans")[1]) + str(store.sql("SELECT * FROM patches")[1])
    assert SECRET not in dump and SECRET not in caplog.text
    from patchrank.pipeline.cli import main

    capsys.readouterr()
    assert main(["query", cfg.output_dir, "--flagged"]) == 0
    assert f"{sum(r[6] for r in rows)} flagged" in capsys.readouterr().out
    png = tmp_path / "series.png"  # the series' own folder holds a second series: the row's uid picks it
    assert main(["query", cfg.output_dir, "--scan", by_kind["dicom"][7][:12], "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    _check_report(Path(cfg.output_dir), tmp_path)


def _check_report(results: Path, tmp_path: Path) -> None:
    """`patchrank report` on the screening: self-contained, both scans with images, renders in Chromium."""
    import subprocess

    from PIL import Image

    from patchrank.pipeline.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("<tr><td") == 3 and text.count("data:image/png;base64,") >= 2  # 2 scored, 1 not scored
    assert "<h2>Not scored (1)</h2>" in text and "pacs [series ..." in text
    assert "DICOM series description does not match modality flair" in text
    assert "http://" not in text and "https://" not in text and SECRET not in text
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return  # the browser check needs Chromium (apt-get install chromium)
    shot = tmp_path / "report.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,1000"]
    subprocess.run([*cmd, out.as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 60).mean() > 0.01  # rendered: text and dark scan images, not blank

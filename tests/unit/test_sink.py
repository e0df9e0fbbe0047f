"""Parquet sink + DuckDB query: atomic parts, versioned schemas, one logical result per key."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from patchrank.pipeline.service.results import ResultStore, format_ranking
from patchrank.pipeline.service.sink import ParquetSink, part_files, write_part
from patchrank.pipeline.service.tables import (
    PATCHES_SCHEMA,
    SCANS_SCHEMA,
    SCHEMA_VERSION,
    PatchRow,
    ScanRow,
    TopPatch,
    to_arrow,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _result(
    scan_id: str,
    score: float | None,
    *,
    mv: str = "v1",
    status: str = "ok",
    at: datetime = T0,
    n_patches: int = 3,
    uri: str | None = None,
):
    rid = uuid.uuid4().hex
    patches = [
        PatchRow(
            result_id=rid,
            scan_id=scan_id,
            slice_index=2,
            row=r,
            col=1,
            y0=8 * r,
            x0=8,
            y1=8 * r + 8,
            x1=16,
            score=float(score or 0) - r,
            rank=r + 1,
            rec=0.5,
            disc=0.1,
            model_version=mv,
            stream_id=f"1-{r}",
            scored_at=at,
        )
        for r in range(n_patches if status == "ok" else 0)
    ]
    tops = [TopPatch(**{k: getattr(p, k) for k in TopPatch.model_fields}) for p in patches]
    scan = ScanRow(
        result_id=rid,
        scan_id=scan_id,
        uri=uri or f"/data/{scan_id}.nii.gz",
        status=status,
        error=None if status == "ok" else "bad file",
        n_slices=5 if status == "ok" else 0,
        scan_score=score,
        top_patches=tops,
        latency_s=0.1,
        model_version=mv,
        stream_id="1-0",
        scored_at=at,
    )
    return scan, patches


def test_parts_are_partitioned_atomic_and_versioned(tmp_path):
    sink = ParquetSink(tmp_path)
    s1, p1 = _result("a" * 16, 3.0)
    s2, p2 = _result("b" * 16, None, status="failed")
    written = sink.write([s1, s2], p1 + p2)
    assert {p.parent.relative_to(tmp_path).as_posix() for p in written} == {
        "patches/v1/2026-01-02",
        "scans/v1/2026-01-02",
    }
    assert not list(tmp_path.rglob(".*.tmp")), "no temporary files left behind"
    scans = pq.read_table(part_files(tmp_path, "scans")[0])
    assert scans.schema.equals(SCANS_SCHEMA)
    assert scans.schema.metadata[b"patchrank.schema_version"] == str(SCHEMA_VERSION).encode()
    assert pq.read_table(part_files(tmp_path, "patches")[0]).schema.equals(PATCHES_SCHEMA)
    assert sorted(scans.column("status").to_pylist()) == ["failed", "ok"]


def test_failed_write_leaves_no_part(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_part(tmp_path / "x", to_arrow("scans", [_result("c" * 16, 1.0)[0]]))
    assert list((tmp_path / "x").iterdir()) == []


def test_skip_on_write_and_dedupe_on_read(tmp_path):
    first, fp = _result("a" * 16, 5.0)
    ParquetSink(tmp_path).write([first], fp)
    sink = ParquetSink(tmp_path)  # a new sink (restarted replica) is seeded from the dataset
    assert sink.is_written("a" * 16, "v1")
    assert sink.write([_result("a" * 16, 9.0)[0]], []) == []
    # A redelivery that raced past the check (another replica) still yields one logical result.
    late, lp = _result("a" * 16, 9.0, at=T0 + timedelta(seconds=5))
    ParquetSink(tmp_path / "elsewhere").write([late], lp)
    for p in (tmp_path / "elsewhere").rglob("*.parquet"):
        dest = tmp_path / p.relative_to(tmp_path / "elsewhere")
        dest.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dest)
    store = ResultStore(tmp_path)
    assert store.sql("SELECT count(*) FROM scans_all")[1] == [(2,)]
    assert store.sql("SELECT scan_id, scan_score FROM scans")[1] == [("a" * 16, 5.0)]
    assert store.sql("SELECT count(*), min(result_id) = max(result_id) FROM patches")[1] == [(3, True)]
    # Same scan under another model version is a separate logical result.
    v2, v2p = _result("a" * 16, 1.0, mv="v2")
    ParquetSink(tmp_path).write([v2], v2p)
    assert ResultStore(tmp_path).counts() == {"ok": 2}
    assert ResultStore(tmp_path).counts("v2") == {"ok": 1}


def test_orphan_patches_are_ignored(tmp_path):
    scan, patches = _result("d" * 16, 2.0)
    write_part(tmp_path / "patches" / "model_version=v1" / "date=2026-01-02", to_arrow("patches", patches))
    store = ResultStore(tmp_path)
    assert store.sql("SELECT count(*) FROM patches_all")[1] == [(3,)]
    assert store.sql("SELECT count(*) FROM patches")[1] == [(0,)]


def test_query_top_scans_known_answer(tmp_path):
    rows = [_result(f"{i:016x}", s) for i, s in enumerate([0.5, 7.25, -1.0, 3.0])]
    rows.append(_result("f" * 16, None, status="failed"))
    ParquetSink(tmp_path).write([r[0] for r in rows], [p for r in rows for p in r[1]])
    store = ResultStore(tmp_path)
    top = store.top_scans(2, patches=2)
    assert [t["scan_id"] for t in top] == [f"{1:016x}", f"{3:016x}"]
    assert [p["rank"] for p in top[0]["patches"]] == [1, 2]
    assert top[0]["patches"][0]["score"] == pytest.approx(7.25)
    assert store.failed() == [{"scan_id": "f" * 16, "uri": f"/data/{'f' * 16}.nii.gz", "error": "bad file"}]
    assert "7.250" in format_ranking(top)
    assert ResultStore(tmp_path / "scans").sql("SELECT count(*) FROM scans")[1] == [(0,)]  # empty dataset works


def test_empty_and_missing_dataset(tmp_path):
    assert ResultStore(tmp_path).top_scans(5) == []
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "nope")


def test_rows_are_validated():
    with pytest.raises(ValidationError):
        ScanRow(
            result_id="x",
            scan_id="a",
            uri="/a",
            status="ok",
            latency_s=0,
            model_version="v",
            stream_id="1-0",
            scored_at=T0,
        )
    good = _result("a" * 16, 1.0)[0].model_dump()
    with pytest.raises(ValidationError):
        ScanRow(**{**good, "status": "maybe"})
    with pytest.raises(ValidationError):
        ScanRow(**{**good, "surprise": 1})


def test_heatmap_png(tmp_path):
    from patchrank.pipeline.service.heatmap import render_scan_png

    vol = np.zeros((32, 32, 6), np.int16)
    vol[4:28, 4:28] = 400
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "s.nii.gz"))
    scan, patches = _result("e" * 16, 4.0, uri=str(tmp_path / "s.nii.gz"))
    ParquetSink(tmp_path / "ds").write([scan], patches)
    out = render_scan_png(ResultStore(tmp_path / "ds"), "e" * 16, tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

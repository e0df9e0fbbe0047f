"""The result dataset reads as it is with pandas, pyarrow.dataset, DuckDB (and polars when installed)."""

from __future__ import annotations

import shutil
from datetime import timedelta

import duckdb
import pyarrow.dataset as ds
import pytest
from test_sink import T0, _result

from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.sink import ParquetSink, written_keys


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results"
    for mv in ("v1", "v2"):
        sink = ParquetSink(root, model_version=mv)
        for day in range(2):
            rows = [_result(f"{mv}{day}{n:014d}", 1.0 + n, mv=mv, at=T0 + timedelta(days=day)) for n in range(3)]
            sink.write([s for s, _ in rows], [p for _, ps in rows for p in ps])
    return root


def test_pandas_pyarrow_duckdb_read_both_tables(results):
    pd = pytest.importorskip("pandas")
    scans = pd.read_parquet(results / "scans")
    patches = pd.read_parquet(results / "patches")
    assert len(scans) == 12 and len(patches) == 36
    assert sorted(scans["model_version"].unique()) == ["v1", "v2"]
    assert {"i", "j", "k", "ras_x_mm"} <= set(patches.columns)
    assert ds.dataset(results / "scans").to_table().num_rows == 12
    q = f"SELECT count(*), count(DISTINCT model_version) FROM '{results}/scans/**/*.parquet'"
    n = duckdb.connect().execute(q).fetchone()
    assert n == (12, 2)


def test_polars_reads_the_tables(results):
    pl = pytest.importorskip("polars")
    assert pl.read_parquet(f"{results}/scans/**/*.parquet").height == 12


def test_datasets_in_the_old_hive_layout_are_still_read(results, tmp_path):
    old = tmp_path / "old"
    for part in results.rglob("*.parquet"):
        table, mv, day = part.parts[-4:-1]
        dest = old / table / f"model_version={mv}" / f"date={day}" / part.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(part, dest)
    assert len(written_keys(old, "v1")) == 6
    assert ResultStore(old).counts("v2") == ResultStore(results).counts("v2")

"""`patchrank compact` while a writer commits results through the real sink, on disk and on S3 (moto):
afterwards every result is there exactly once (pandas and the query path) and the part count dropped."""

from __future__ import annotations

import sys
import threading
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from s3server import TEST_BUCKET  # noqa: E402
from test_sink import T0, _result  # noqa: E402 - the unit tests' row factory

from patchrank.pipeline.data.storage import filesystem, is_s3  # noqa: E402
from patchrank.pipeline.service.compact import Compactor, compact  # noqa: E402
from patchrank.pipeline.service.results import ResultStore  # noqa: E402
from patchrank.pipeline.service.sink import ParquetSink, part_files  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _read(root, table: str) -> pd.DataFrame:
    fs, path = filesystem(f"{root}/{table}" if is_s3(root) else Path(root) / table)
    return pd.read_parquet(path, filesystem=fs)


def _n_parts(root) -> int:
    return len(part_files(root, "scans")) + len(part_files(root, "patches"))


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return tmp_path / "results"
    request.getfixturevalue("s3")  # endpoint and credentials come from the environment
    return f"s3://{TEST_BUCKET}/results"


def test_concurrent_writer_every_result_exactly_once(root):
    """A writer thread commits results (every 4th scan delivered again, by a consumer that raced past the
    sink's check and has to list the parts to start) while compaction runs again and again."""
    n = 120 if is_s3(root) else 160
    first: dict[str, str] = {}
    done = threading.Event()
    errors: list = []

    def writer():
        try:
            sink = ParquetSink(root)
            for i in range(n):
                sid = f"{i:016x}"
                scan, patches = _result(sid, float(i), at=T0 + timedelta(milliseconds=i))
                first[sid] = scan.result_id
                sink.write([scan], patches)
                if i % 4 == 3:
                    racer = ParquetSink(root)  # reads what is written while parts are replaced under it
                    racer.seen.clear()
                    j = i - 3
                    late, late_p = _result(f"{j:016x}", -1.0, at=T0 + timedelta(seconds=1, milliseconds=j))
                    racer.write([late], late_p)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    runs, most = 0, 0
    while not done.is_set() or runs < 3:
        most = max(most, _n_parts(root))
        compact(root)
        runs += 1
    t.join()
    assert not errors, errors
    most = max(most, _n_parts(root))
    final = compact(root)
    assert runs >= 3 and final.parts_after == 2 < most, (runs, most, final)
    scans = _read(root, "scans")
    assert len(scans) == n and dict(zip(scans.scan_id, scans.result_id)) == first
    patches = _read(root, "patches")
    assert sorted(patches.result_id.unique()) == sorted(first.values())
    assert patches.groupby("result_id").size().eq(3).all()
    store = ResultStore(root)
    assert dict(store.sql("SELECT scan_id, result_id FROM scans")[1]) == first
    assert store.sql("SELECT count(*), count(DISTINCT (result_id, rank)) FROM patches")[1] == [(3 * n, 3 * n)]


def test_interrupted_run_on_s3_is_repaired_by_the_next(s3, monkeypatch):
    root = f"s3://{TEST_BUCKET}/results"
    sink = ParquetSink(root)
    results = [_result(f"{i:016x}", float(i)) for i in range(6)]
    for scan, patches in results:
        sink.write([scan], patches)
    real = Compactor._delete

    def crash(self, parts):
        if parts:
            raise RuntimeError("killed")

    monkeypatch.setattr(Compactor, "_delete", crash)
    with pytest.raises(RuntimeError):
        compact(root)
    assert _n_parts(root) == 13  # 12 sources + the merged patches part
    assert ResultStore(root).sql("SELECT count(*) FROM patches")[1] == [(18,)]
    monkeypatch.setattr(Compactor, "_delete", real)
    stats = compact(root)
    assert (stats.leftovers, stats.parts_after) == (6, 2)
    assert len(_read(root, "patches")) == 18 and len(_read(root, "scans")) == 6

"""`patchrank compact`: small parts merged per folder, repeated deliveries dropped by the readers' rule,
nothing a reader shows changes, parts written meanwhile untouched, an interrupted run repaired."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_sink import T0, _result

from patchrank.pipeline.cli import main
from patchrank.pipeline.service import compact as compact_mod
from patchrank.pipeline.service.compact import Compactor, compact
from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.sink import ParquetSink, part_files, write_part
from patchrank.pipeline.service.tables import to_arrow


def _write(root, *results, race: bool = False) -> None:
    """Through the real sink; race=True: a consumer that has not seen the others' writes."""
    sink = ParquetSink(root)
    if race:
        sink.seen.clear()
    sink.write([s for s, _ in results], [p for _, ps in results for p in ps])


def _views(root) -> tuple[list, list]:
    store = ResultStore(root)
    return (
        store.sql("SELECT * FROM scans ORDER BY scan_id")[1],
        store.sql("SELECT * FROM patches ORDER BY result_id, rank")[1],
    )


def _n_parts(root) -> int:
    return len(part_files(root, "scans")) + len(part_files(root, "patches"))


@pytest.fixture()
def messy(tmp_path):
    """One folder, 18 parts: repeated deliveries, a give-up then a result, a tie, uncommitted patches."""
    root = tmp_path / "results"
    a = _result("a" * 16, 5.0)
    _write(root, a)
    _write(root, _result("a" * 16, 9.0, at=T0 + timedelta(seconds=5)), race=True)  # loses: later
    gave_up, _ = _result("b" * 16, None, status="failed")
    _write(root, (gave_up.model_copy(update={"error": "gave up after 2 deliveries: scorer down"}), []))
    b = _result("b" * 16, 2.0, at=T0 + timedelta(seconds=10))  # wins over the give-up
    _write(root, b, race=True)
    c1, c2 = _result("c" * 16, 1.0), _result("c" * 16, 1.5)  # same scored_at and stream_id: result_id decides
    _write(root, c1)
    _write(root, c2, race=True)
    e = _result("e" * 16, 4.0)
    _write(root, e)
    folder = root / "patches" / "v1" / "2026-01-02"
    d_pending = _result("d" * 16, 3.0)[1]  # patches of a result whose scan row is not written yet
    e_late = _result("e" * 16, 8.0, at=T0 + timedelta(seconds=20))[1]  # can never beat e: dropped
    g = _result("g" * 16, 6.0, at=T0 + timedelta(seconds=30))
    g_early = _result("g" * 16, 7.0, at=T0 + timedelta(seconds=29))[1]  # could still beat g: kept
    _write(root, g)
    for rows in (d_pending, e_late, g_early):
        write_part(folder, to_arrow("patches", rows))
    winners = {"a": a[0], "b": b[0], "c": min(c1[0], c2[0], key=lambda s: s.result_id), "e": e[0], "g": g[0]}
    kept_pending = {d_pending[0].result_id, g_early[0].result_id}
    return root, winners, kept_pending, e_late[0].result_id


def test_merge_keeps_what_readers_show_and_drops_repeated_deliveries(messy):
    root, winners, kept_pending, dropped = messy
    before, parts = _views(root), _n_parts(root)
    stats = compact(root)
    assert (stats.parts_before, stats.parts_after) == (parts, 2) and parts == 18
    assert _views(root) == before  # the query path shows exactly what it showed
    scans = pd.read_parquet(root / "scans")
    assert sorted(scans.result_id) == sorted(s.result_id for s in winners.values())
    patches = pd.read_parquet(root / "patches")
    assert not patches.duplicated(["result_id", "rank"]).any()
    assert set(patches.result_id) == {s.result_id for s in winners.values() if s.status == "ok"} | kept_pending
    assert dropped not in set(patches.result_id)
    assert stats.rows_in - stats.rows_out == 3 + 9  # a', the give-up, c's loser; the patches of a', c, e_late
    assert "parts 18 -> 2" in stats.line(root)
    again = compact(root)  # one part per folder: nothing to do
    assert (again.parts_before, again.parts_after, again.rows_in) == (2, 2, 0)


@pytest.mark.parametrize("crash_at", [1, 2])  # while deleting the patches sources / the scans sources
def test_interrupted_between_write_and_delete(messy, monkeypatch, crash_at):
    root, winners, *_ = messy
    before = _views(root)
    calls = []
    real = Compactor._delete

    def crash(self, parts):
        calls.append(parts) if parts else None
        if parts and len(calls) == crash_at:
            raise RuntimeError("killed")
        real(self, parts)

    monkeypatch.setattr(Compactor, "_delete", crash)
    with pytest.raises(RuntimeError):
        compact(root)
    assert _views(root) == before  # the copies are invisible to the query path
    key = {"scans": ["result_id"], "patches": ["result_id", "rank"]}
    table = "patches" if crash_at == 1 else "scans"
    assert pd.read_parquet(root / table).duplicated(key[table]).any()  # raw reads see copies until the next run
    monkeypatch.setattr(Compactor, "_delete", real)
    stats = compact(root)
    assert stats.leftovers > 0 and stats.parts_after == 2
    assert _views(root) == before
    for table in ("scans", "patches"):
        assert not pd.read_parquet(root / table).duplicated(key[table]).any()
    assert sorted(pd.read_parquet(root / "scans").scan_id) == sorted(s.scan_id for s in winners.values())


def test_parts_written_while_compacting_are_left_alone(messy, monkeypatch):
    root, winners, *_ = messy
    late = _result("h" * 16, 0.5)
    real = compact_mod.read_part

    def read_and_write(*a, **k):
        if not late_written:
            late_written.append(1)
            _write(root, late)  # a writer commits a result during the merge
        return real(*a, **k)

    late_written: list = []
    monkeypatch.setattr(compact_mod, "read_part", read_and_write)
    stats = compact(root)
    assert stats.parts_after == 4  # the two merged parts + the writer's two
    store = ResultStore(root)
    assert store.sql("SELECT count(*) FROM scans WHERE scan_id = ?", ["h" * 16])[1] == [(1,)]
    assert store.sql("SELECT count(*) FROM patches WHERE scan_id = ?", ["h" * 16])[1] == [(3,)]


def test_small_target_merges_in_groups_and_skips_big_parts(messy):
    root, *_ = messy
    before = _views(root)
    sizes = [p.stat().st_size for p in part_files(root, "patches")]
    stats = compact(root, target_bytes=2 * max(sizes) + 1)
    assert 2 < stats.parts_after < stats.parts_before
    assert _views(root) == before


def test_unknown_columns_leave_a_folder_as_is(tmp_path, caplog):
    root = tmp_path / "r"
    _write(root, _result("a" * 16, 1.0))
    folder = root / "scans" / "v1" / "2026-01-02"
    t = to_arrow("scans", [_result("b" * 16, 2.0)[0]])
    pq.write_table(t.append_column("from_the_future", pa.array([1])), folder / "part-x.parquet")
    stats = compact(root)
    assert len(part_files(root, "scans")) == 2 and stats.rows_in == 0
    assert "from_the_future" in caplog.text


def test_cli_summary_and_missing_dataset(messy, tmp_path, capsys):
    root, *_ = messy
    assert main(["compact", str(root)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"compacted {root}: parts 18 -> 2, rows merged ") and len(out.splitlines()) == 1
    assert main(["compact", str(tmp_path / "nope")]) == 2
    assert "no result dataset" in capsys.readouterr().err


def test_a_reader_opened_before_compaction_still_answers(messy):
    root, winners, *_ = messy
    store = ResultStore(root)  # lists the parts now; compaction deletes them
    before = store.sql("SELECT scan_id, result_id FROM scans ORDER BY scan_id")[1]
    compact(root)
    assert store.sql("SELECT scan_id, result_id FROM scans ORDER BY scan_id")[1] == before
    assert store.counts() == {"ok": 5}


@pytest.mark.parametrize(
    "text",
    [
        "AWS Error RESOURCE_NOT_FOUND during HeadObject operation",
        "AWS Error NO_SUCH_KEY during GetObject operation: The specified key does not exist.",
        "NoSuchKey",
    ],
)
def test_a_vanished_s3_object_is_recognised_in_each_form_pyarrow_reports(text):
    from patchrank.pipeline.data.storage import vanished

    assert vanished(OSError(text)) and vanished(FileNotFoundError("x"))
    assert not vanished(OSError("AWS Error ACCESS_DENIED during GetObject operation"))

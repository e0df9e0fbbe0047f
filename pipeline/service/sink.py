"""Parquet sink: result rows -> atomic part files in a partitioned dataset.

Layout: <root>/<table>/<model_version>/<YYYY-MM-DD>/part-<time>-<uuid>.parquet
for table in (scans, patches). The folder names are plain (not hive `key=value`), so pandas.read_parquet,
pyarrow.dataset, polars and DuckDB read <root>/<table> as it is: model_version is a column of every file,
never also a partition key (datasets written before, with `model_version=<v>/date=<d>` folders, are still read
here). A part is written under a hidden temporary name in the
same folder, fsynced and renamed into place, so a reader never sees a half-written
file. Patches are written before scans: a scan row is the commit marker of a result,
and patch rows whose scan row never landed are ignored by readers (pipeline/query.py).

Exactly-once results on at-least-once delivery: the sink remembers which
(scan_id, model_version) keys it has written (`seen`, seeded from the dataset), the
consumer also checks the shared Redis done-set, and readers keep only the first result
per key, so a redelivery never yields a second logical result.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from patchrank.pipeline.service.tables import PatchRow, ScanRow, to_arrow

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(folder: Path, table: pa.Table) -> Path:
    """Write one Parquet part atomically (hidden temp name, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return folder / name


def part_files(root: str | Path, table: str) -> list[Path]:
    base = Path(root) / table
    return sorted(p for p in base.glob("*/*/*.parquet") if not p.name.startswith(".")) if base.is_dir() else []


def written_keys(root: str | Path, model_version: str | None = None) -> set[tuple[str, str]]:
    """(scan_id, model_version) of every scan row already in the dataset."""
    keys: set[tuple[str, str]] = set()
    for p in part_files(root, "scans"):
        if model_version is not None and p.parent.parent.name not in (model_version, f"model_version={model_version}"):
            continue
        t = pq.read_table(p, columns=["scan_id", "model_version"])
        keys.update(zip(t.column("scan_id").to_pylist(), t.column("model_version").to_pylist()))
    return keys


class ParquetSink:
    def __init__(self, root: str | Path, *, model_version: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.seen = written_keys(self.root, model_version)

    def is_written(self, scan_id: str, model_version: str) -> bool:
        return (scan_id, model_version) in self.seen

    def write(self, scans: list[ScanRow], patches: list[PatchRow]) -> list[Path]:
        """Write the results not yet written; returns the part files created."""
        fresh = [s for s in scans if (s.scan_id, s.model_version) not in self.seen]
        fresh_ids = {s.result_id for s in fresh}
        if len({(s.scan_id, s.model_version) for s in fresh}) != len(fresh):  # same key twice in one call
            first: dict = {}
            for s in fresh:
                first.setdefault((s.scan_id, s.model_version), s)
            fresh = list(first.values())
            fresh_ids = {s.result_id for s in fresh}
        patches = [p for p in patches if p.result_id in fresh_ids]
        written = []
        for table, rows in (("patches", patches), ("scans", fresh)):  # scans last: the commit marker
            groups: dict[tuple[str, str], list] = defaultdict(list)
            for r in rows:
                groups[(r.model_version, r.scored_at.strftime("%Y-%m-%d"))].append(r)
            for (version, date), part in sorted(groups.items()):
                folder = self.root / table / version / date
                written.append(write_part(folder, to_arrow(table, part)))
        self.seen.update((s.scan_id, s.model_version) for s in fresh)
        log.debug("wrote %d scan results, %d patch rows in %d parts", len(fresh), len(patches), len(written))
        return written

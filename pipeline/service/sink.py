"""Parquet sink: result rows -> atomic part files in a partitioned dataset.

Layout: <root>/<table>/<model_version>/<YYYY-MM-DD>/part-<time>-<uuid>.parquet
for table in (scans, patches). The folder names are plain (not hive `key=value`), so pandas.read_parquet,
pyarrow.dataset, polars and DuckDB read <root>/<table> as it is: model_version is a column of every file,
never also a partition key (datasets written before, with `model_version=<v>/date=<d>` folders, are still read
here). Locally a part is written under a hidden temporary name in
the same folder, fsynced and renamed into place, so a reader never sees a half-written
file. On s3:// (no rename) the whole part is encoded in memory first and sent as one PUT
to its final, unique key: S3 makes an object visible only once its upload completes, so
a part is again all or nothing. Patches are written before scans: a scan row is the
commit marker of a result, and patch rows whose scan row never landed are ignored by
readers (pipeline/service/results.py), on both backends.

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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from patchrank.pipeline.data.storage import S3, filesystem, is_s3, vanished
from patchrank.pipeline.service.tables import PatchRow, ScanRow, gave_up, to_arrow

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _part_name(prefix: str = "part") -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"


def write_object_part(fs: pafs.FileSystem, folder: str, table: pa.Table, prefix: str = "part") -> str:
    """Write one Parquet part to an object store as a single upload to a unique key `<prefix>-<time>-<uuid>`."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()  # fully encoded before the upload starts: nothing partial is ever sent
    key = f"{folder}/{_part_name(prefix)}"
    with fs.open_output_stream(key) as out:
        out.write(data)
    return key


def write_part(folder: Path, table: pa.Table, prefix: str = "part") -> Path:
    """Write one Parquet part `<prefix>-<time>-<uuid>` atomically (hidden temp name, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = _part_name(prefix)
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
    fsync_dir(folder)
    return folder / name


def list_parts(root: str | Path, table: str, endpoint: str | None = None) -> list[tuple]:
    """(part, size in bytes) of every visible part file of a table: Paths locally, s3:// URI strings on S3."""
    if is_s3(root):
        fs, base = filesystem(root, endpoint)
        sel = pafs.FileSelector(f"{base}/{table}", recursive=True, allow_not_found=True)
        return sorted(
            (S3 + i.path, int(i.size or 0))
            for i in fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
        )
    base = Path(root) / table
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.glob("*/*/*.parquet")):
        if not p.name.startswith("."):
            try:
                out.append((p, p.stat().st_size))
            except FileNotFoundError:  # removed since the listing (compaction)
                continue
    return out


def part_files(root: str | Path, table: str, endpoint: str | None = None) -> list:
    """Visible part files of a table: Paths locally, s3:// URI strings on S3."""
    return [p for p, _ in list_parts(root, table, endpoint)]


def read_part(part: str | Path, columns: list[str] | None = None, endpoint: str | None = None) -> pa.Table:
    """One part file (a path or an s3:// URI) as an Arrow table."""
    fs, path = filesystem(part, endpoint)
    return pq.read_table(path, columns=columns, filesystem=fs)


def written_keys(
    root: str | Path, model_version: str | None = None, endpoint: str | None = None
) -> set[tuple[str, str]]:
    """(scan_id, model_version) of every final scan row already in the dataset (rows that gave
    up on an infrastructure fault are not final: such a scan is scored again when queued again).
    A part that vanishes before it is read (compacted meanwhile) makes it list again: its rows are
    then in the merged part."""
    keys: set[tuple[str, str]] = set()
    read: set[str] = set()
    for _ in range(10):
        gone = False
        for p in part_files(root, "scans", endpoint):
            folder = str(p).rsplit("/", 3)[-3]  # <table>/<model_version>/<date>/<part>
            if str(p) in read or (
                model_version is not None and folder not in (model_version, f"model_version={model_version}")
            ):
                continue
            try:
                t = read_part(p, ["scan_id", "model_version", "status", "error"], endpoint).to_pydict()
            except OSError as exc:
                if not vanished(exc):
                    raise
                gone = True
                continue
            read.add(str(p))
            keys.update(
                (sid, mv)
                for sid, mv, st, err in zip(t["scan_id"], t["model_version"], t["status"], t["error"])
                if not gave_up(st, err)
            )
        if not gone:
            return keys
    raise FileNotFoundError(f"result parts under {root} keep vanishing while read")


class ParquetSink:
    def __init__(self, root: str | Path, *, model_version: str | None = None, endpoint: str | None = None) -> None:
        self.s3 = is_s3(root)
        if self.s3:
            self.root: str | Path = str(root).rstrip("/")
            self.fs, self.base = filesystem(self.root, endpoint)
        else:
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)
        self.seen = written_keys(self.root, model_version, endpoint)

    def is_written(self, scan_id: str, model_version: str) -> bool:
        return (scan_id, model_version) in self.seen

    def write(self, scans: list[ScanRow], patches: list[PatchRow]) -> list:
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
                sub = f"{table}/{version}/{date}"
                if self.s3:
                    written.append(S3 + write_object_part(self.fs, f"{self.base}/{sub}", to_arrow(table, part)))
                else:
                    written.append(write_part(self.root / sub, to_arrow(table, part)))
        self.seen.update((s.scan_id, s.model_version) for s in fresh if not gave_up(s.status, s.error))
        log.debug("wrote %d scan results, %d patch rows in %d parts", len(fresh), len(patches), len(written))
        return written

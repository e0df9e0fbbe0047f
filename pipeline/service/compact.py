"""Compaction: the many small part files of each `<table>/<model_version>/<date>/` folder of a result
dataset (pipeline/service/sink.py layout; a folder or an s3:// prefix) merged into a few.

Only the parts listed when compaction starts are touched; parts a writer adds meanwhile are left for
the next run. In each folder the listed parts under `target_bytes` are merged in groups of about
`target_bytes`: a group is read, deduplicated, written as one part `compacted-<time>-<uuid>.parquet`
exactly as the sink writes parts (locally hidden temp name, fsync, rename; on S3 one PUT to a new
key), and only then are the group's parts deleted. So a result written while compacting is neither
lost nor duplicated.

Deduplication follows the readers' rule (results.FIRST_RESULT_ORDER):
  scans    the first row per (scan_id, model_version) within the group is kept;
  patches  kept once per (result_id, rank); a patch row is dropped only when its result can never be
           shown: its scan row is in the folder and lost to another result for the key, or its scan
           row is not there (yet: patches land before their scan row) and a final result with an
           earlier scored_at is. Patch rows of a result still being written are kept.
Patches are compacted before scans, so the scan rows that decide are still there.

A crash between writing the merged part and deleting its sources leaves each row in two files: the
readers' views still show each result once (scans per key, patches per (result_id, rank)); raw reads
see the copies until the next run, which first deletes the sources named in the merged part's
metadata (`patchrank.compacted_from`), since their rows are already in it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from patchrank.pipeline.data.storage import filesystem, is_s3, vanished
from patchrank.pipeline.service.results import FIRST_RESULT_ORDER, GAVE_UP_SQL
from patchrank.pipeline.service.sink import fsync_dir, list_parts, read_part, write_object_part, write_part
from patchrank.pipeline.service.tables import SCHEMAS

log = logging.getLogger(__name__)
TARGET_BYTES = 64 << 20  # merged parts stay about this size (Parquet, compressed), so a merge fits in memory
PREFIX = "compacted"
SOURCES_KEY = b"patchrank.compacted_from"
_KEY = ["result_id", "scan_id", "model_version", "status", "error", "scored_at", "stream_id"]


@dataclass
class CompactStats:
    parts_before: int = 0
    parts_after: int = 0
    rows_in: int = 0  # rows of the merged parts
    rows_out: int = 0
    leftovers: int = 0  # sources of an interrupted earlier run, deleted

    def line(self, root: str | Path) -> str:
        dup = self.rows_in - self.rows_out
        extra = f", {self.leftovers} parts left by an interrupted run removed" if self.leftovers else ""
        return (
            f"compacted {root}: parts {self.parts_before} -> {self.parts_after}, rows merged {self.rows_in} -> "
            f"{self.rows_out} ({dup} duplicate rows dropped){extra}"
        )


def _folder(part) -> str:
    return str(part).rsplit("/", 1)[0]


def _name(part) -> str:
    return str(part).rsplit("/", 1)[1]


def _conform(t: pa.Table, table: str) -> pa.Table:
    """A part (any schema version) in the current schema; columns it lacks are null."""
    schema = SCHEMAS[table]
    extra = set(t.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"columns {sorted(extra)} unknown to this version")
    n = len(t)
    cols = [t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _keep_scans(t: pa.Table) -> list[int]:
    con = duckdb.connect()
    con.register("t", t.select(_KEY).append_column("_i", pa.array(range(len(t)), pa.int64())))
    sql = (
        "SELECT _i FROM (SELECT _i, row_number() OVER (PARTITION BY scan_id, model_version "
        f"ORDER BY {FIRST_RESULT_ORDER}) AS _rn FROM t) WHERE _rn = 1 ORDER BY _i"
    )
    return [r[0] for r in con.execute(sql).fetchall()]


def _keep_patches(t: pa.Table, scans: pa.Table) -> list[int]:
    con = duckdb.connect()
    con.register(
        "p",
        t.select(["result_id", "scan_id", "model_version", "rank", "scored_at"]).append_column(
            "_i", pa.array(range(len(t)), pa.int64())
        ),
    )
    con.register("s", scans)
    sql = f"""
        WITH ranked AS (SELECT *, row_number() OVER (PARTITION BY scan_id, model_version
                        ORDER BY {FIRST_RESULT_ORDER}) AS _rn FROM s),
             r AS (SELECT result_id, bool_or(_rn = 1) AS won FROM ranked GROUP BY result_id),
             f AS (SELECT scan_id, model_version, min(scored_at) AS at FROM s WHERE NOT {GAVE_UP_SQL} GROUP BY ALL)
        SELECT p._i FROM p LEFT JOIN r USING (result_id)
        LEFT JOIN f ON f.scan_id = p.scan_id AND f.model_version = p.model_version
        WHERE coalesce(r.won, f.at IS NULL OR p.scored_at <= f.at)
        QUALIFY row_number() OVER (PARTITION BY p.result_id, p.rank ORDER BY p._i) = 1
        ORDER BY p._i"""
    return [r[0] for r in con.execute(sql).fetchall()]


class Compactor:
    def __init__(self, root: str | Path, *, endpoint: str | None = None, target_bytes: int = TARGET_BYTES) -> None:
        self.root = str(root).rstrip("/") if is_s3(root) else Path(root)
        self.endpoint = endpoint
        self.target = target_bytes
        self.stats = CompactStats()
        self._keys: dict[tuple, pa.Table] = {}  # the scans folder last read for a patches folder

    def run(self) -> CompactStats:
        listed = {t: list_parts(self.root, t, self.endpoint) for t in ("patches", "scans")}
        self.stats.parts_before = sum(map(len, listed.values()))
        scans_by_folder: dict[str, list] = {}
        for p, _ in listed["scans"]:
            scans_by_folder.setdefault(_folder(p), []).append(p)
        for table in ("patches", "scans"):  # patches first: the scan rows that decide are still there
            by_folder: dict[str, list] = {}
            for p, size in listed[table]:
                by_folder.setdefault(_folder(p), []).append((p, size))
            for folder, parts in sorted(by_folder.items()):
                parts = self._drop_leftovers(parts)
                sibling = folder.rsplit("/", 3)
                scans = scans_by_folder.get("/".join([sibling[0], "scans", *sibling[2:]]), [])
                for group in self._groups(parts):
                    self._merge(table, folder, group, scans)
        self.stats.parts_after = sum(len(list_parts(self.root, t, self.endpoint)) for t in ("patches", "scans"))
        return self.stats

    def _drop_leftovers(self, parts: list[tuple]) -> list[tuple]:
        """Delete the sources still listed of every compacted part here (an earlier run stopped midway)."""
        names = {_name(p) for p, _ in parts}
        done: set[str] = set()
        for p, _ in parts:
            if _name(p).startswith(PREFIX + "-"):
                meta = self._read_meta(p)
                done.update(n for n in json.loads(meta.get(SOURCES_KEY, b"[]")) if n in names)
        leftovers = [p for p, _ in parts if _name(p) in done]
        self._delete(leftovers)
        self.stats.leftovers += len(leftovers)
        return [(p, s) for p, s in parts if _name(p) not in done]

    def _read_meta(self, part) -> dict:
        fs, path = filesystem(part, self.endpoint)
        try:
            with fs.open_input_file(path) as f:
                return pq.read_schema(f).metadata or {}
        except OSError as exc:
            if vanished(exc):  # merged again meanwhile by another compaction
                return {}
            raise

    def _groups(self, parts: list[tuple]) -> list[list]:
        """Runs of small parts of about target bytes each; a run of one is left as it is."""
        groups: list[list] = [[]]
        total = 0
        for p, size in parts:
            if size >= self.target:
                continue
            if total + size > self.target and groups[-1]:
                groups.append([])
                total = 0
            groups[-1].append(p)
            total += size
        return [g for g in groups if len(g) > 1]

    def _merge(self, table: str, folder: str, group: list, scan_parts: list) -> None:
        try:
            t = pa.concat_tables([_conform(read_part(p, endpoint=self.endpoint), table) for p in group])
            if table == "scans":
                keep = _keep_scans(t)
            else:
                keep = _keep_patches(t, self._scan_keys(scan_parts))
        except ValueError as exc:
            log.warning("%s: not compacted (%s)", folder, exc)
            return
        except OSError as exc:
            if not vanished(exc):
                raise
            log.warning("%s: parts vanished while compacting (another compaction?); left for the next run", folder)
            return
        out = t.take(pa.array(keep, pa.int64()))
        meta = {**(out.schema.metadata or {}), SOURCES_KEY: json.dumps([_name(p) for p in group]).encode()}
        out = out.replace_schema_metadata(meta)
        if len(out):
            if is_s3(folder):
                fs, path = filesystem(folder, self.endpoint)
                write_object_part(fs, path, out, prefix=PREFIX)
            else:
                write_part(Path(folder), out, prefix=PREFIX)
        self._delete(group)  # only now: every kept row is in the new part
        self.stats.rows_in += len(t)
        self.stats.rows_out += len(out)
        log.debug("%s: %d parts, %d rows -> %d rows", folder, len(group), len(t), len(out))

    def _scan_keys(self, parts: list) -> pa.Table:
        """The key columns of these scans parts (read once per folder)."""
        key = tuple(map(str, parts))
        if key not in self._keys:
            empty = pa.Table.from_pylist([], schema=SCHEMAS["scans"]).select(_KEY)
            tables = [read_part(p, _KEY, self.endpoint) for p in parts]
            self._keys = {key: pa.concat_tables([empty, *tables], promote_options="default")}
        return self._keys[key]

    def _delete(self, parts: list) -> None:
        for p in parts:
            if is_s3(p):
                fs, path = filesystem(p, self.endpoint)
                try:
                    fs.delete_file(path)
                except OSError as exc:
                    if not vanished(exc):
                        raise
            else:
                Path(p).unlink(missing_ok=True)
        if parts and not is_s3(parts[0]):
            fsync_dir(Path(parts[0]).parent)


def compact(root: str | Path, *, endpoint: str | None = None, target_bytes: int = TARGET_BYTES) -> CompactStats:
    """Merge the small part files of every folder of a result dataset; see the module docstring."""
    return Compactor(root, endpoint=endpoint, target_bytes=target_bytes).run()

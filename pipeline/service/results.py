"""DuckDB over the Parquet result dataset (pipeline/service/sink.py layout), a folder or s3:// prefix.

Views (one logical result per (scan_id, model_version): the first one written wins, except
that a row which gave up on an infrastructure fault yields to a later result for the key;
patch rows belong to the winning result, orphans of an interrupted write are dropped):
  scans_all, patches_all   every row of every part file
  scans, patches           deduplicated logical results
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from patchrank.pipeline.data.storage import S3Uri, filesystem, is_s3
from patchrank.pipeline.service.sink import part_files
from patchrank.pipeline.service.tables import GAVE_UP, SCHEMAS


class ResultStore:
    def __init__(self, root: str | Path, *, endpoint: str | None = None) -> None:
        self.root: str | Path = str(root).rstrip("/") if is_s3(root) else Path(root)
        self.endpoint = endpoint
        if not (self._s3_exists(endpoint) if is_s3(root) else self.root.is_dir()):
            raise FileNotFoundError(f"no result dataset at {self.root}")
        self.con = duckdb.connect()
        for table in ("scans", "patches"):
            files = part_files(self.root, table, endpoint)
            if files and is_s3(root):  # pyarrow reads the objects; DuckDB scans the Arrow dataset
                fs, _ = filesystem(self.root, endpoint)
                parts = [S3Uri.parse(f).path for f in files]
                self.con.register(f"{table}_all", ds.dataset(parts, schema=SCHEMAS[table], filesystem=fs))
            elif files:
                paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
                self.con.execute(
                    f"CREATE VIEW {table}_all AS SELECT * FROM read_parquet([{paths}], union_by_name=true, "
                    f"hive_partitioning=false)"
                )
            else:
                self.con.register(f"{table}_all", pa.Table.from_pylist([], schema=SCHEMAS[table]))
        self.con.execute(  # the first final result per key; a row that gave up yields to a later one
            "CREATE VIEW scans AS SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER "
            "(PARTITION BY scan_id, model_version ORDER BY "
            f"(status = 'failed' AND starts_with(coalesce(error, ''), '{GAVE_UP}')), scored_at, stream_id) AS _rn "
            "FROM scans_all) WHERE _rn = 1"
        )
        self.con.execute(
            "CREATE VIEW patches AS SELECT p.* FROM patches_all p SEMI JOIN scans s ON p.result_id = s.result_id"
        )

    def _s3_exists(self, endpoint: str | None) -> bool:
        fs, base = filesystem(self.root, endpoint)
        return bool(fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True)))

    def sql(self, query: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        rel = self.con.execute(query, params) if params else self.con.execute(query)
        cols = [d[0] for d in rel.description] if rel.description else []
        return cols, rel.fetchall()

    def counts(self, model_version: str | None = None) -> dict[str, int]:
        where, params = ("WHERE model_version = ?", [model_version]) if model_version else ("", [])
        rows = self.con.execute(f"SELECT status, count(*) FROM scans {where} GROUP BY status", params).fetchall()
        return {s: int(n) for s, n in rows}

    def model_versions(self) -> list[str]:
        return [
            r[0]
            for r in self.con.execute(
                "SELECT model_version FROM scans GROUP BY 1 ORDER BY max(scored_at) DESC"
            ).fetchall()
        ]

    def top_scans(self, n: int = 10, *, model_version: str | None = None, patches: int = 3) -> list[dict]:
        """Most suspicious `ok` scans first, each with its top patches."""
        where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
        rel = self.con.execute(
            f"SELECT scan_id, uri, scan_score, n_slices, model_version, result_id, latency_s FROM scans "
            f"WHERE status = 'ok' {where} ORDER BY scan_score DESC NULLS LAST, scan_id LIMIT ?",
            [*params, n],
        )
        cols = [d[0] for d in rel.description]
        out = [dict(zip(cols, r)) for r in rel.fetchall()]
        for row in out:
            row["patches"] = self.patches_of(row["result_id"], patches)
        return out

    def failed(self, model_version: str | None = None) -> list[dict]:
        where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
        rel = self.con.execute(
            f"SELECT scan_id, uri, error FROM scans WHERE status = 'failed' {where} ORDER BY uri", params
        )
        return [dict(zip(("scan_id", "uri", "error"), r)) for r in rel.fetchall()]

    def gave_up(self, model_version: str) -> list[str]:
        """URIs of the scans whose logical result gave up on an infrastructure fault."""
        rel = self.con.execute(
            "SELECT uri FROM scans WHERE model_version = ? AND status = 'failed' AND starts_with(error, ?) "
            "ORDER BY uri",
            [model_version, GAVE_UP],
        )
        return [r[0] for r in rel.fetchall()]

    def patches_of(self, result_id: str, n: int) -> list[dict]:
        rel = self.con.execute(
            "SELECT rank, slice_index, row, col, y0, x0, y1, x1, score, rec, disc FROM patches WHERE result_id "
            "= ? ORDER BY rank LIMIT ?",
            [result_id, n],
        )
        cols = [d[0] for d in rel.description]
        return [dict(zip(cols, r)) for r in rel.fetchall()]

    def scan(self, scan_id: str, model_version: str | None = None) -> dict:
        where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
        rel = self.con.execute(
            f"SELECT * FROM scans WHERE scan_id = ? {where} ORDER BY scored_at DESC LIMIT 1", [scan_id, *params]
        )
        cols = [d[0] for d in rel.description]
        row = rel.fetchone()
        if row is None:
            raise ValueError(
                f"no result for scan {scan_id}" + (f" and model version {model_version}" if model_version else "")
            )
        return dict(zip(cols, row))


def format_ranking(rows: list[dict], *, truth: dict[str, bool] | None = None) -> str:
    """Ranked scans with their top patches; `truth` maps a uri to abnormal yes/no (demo)."""
    lines = [f"{'rank':>4}  {'score':>8}  {'scan_id':<12}  {'truth':<7}  scan  [top patches: slice (row,col) score]"]
    for i, r in enumerate(rows, 1):
        tops = ", ".join(f"s{p['slice_index']} ({p['row']},{p['col']}) {p['score']:.2f}" for p in r["patches"])
        mark = ("LESION" if truth.get(r["uri"]) else "normal") if truth is not None else ""
        score = f"{r['scan_score']:8.3f}" if r["scan_score"] is not None else f"{'nan':>8}"
        lines.append(f"{i:>4}  {score}  {r['scan_id'][:12]:<12}  {mark:<7}  {Path(r['uri']).name}  [{tops}]")
    return "\n".join(lines)

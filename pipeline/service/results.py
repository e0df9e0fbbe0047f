"""DuckDB over the Parquet result dataset (pipeline/service/sink.py layout), a folder or s3:// prefix.

Views (one logical result per (scan_id, model_version): the first one written wins, except
that a row which gave up on an infrastructure fault yields to a later result for the key;
patch rows belong to the winning result, orphans of an interrupted write are dropped):
  scans_all, patches_all   every row of every part file
  scans, patches           deduplicated logical results (a patch row once per (result_id, rank): a
                           compaction interrupted between its write and its deletes leaves two copies)
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

# Which physical row of a key is its logical result, for readers and compaction alike: a row that gave
# up on an infrastructure fault yields to any other, then the earliest; result_id makes the order total.
GAVE_UP_SQL = f"(status = 'failed' AND starts_with(coalesce(error, ''), '{GAVE_UP}'))"
FIRST_RESULT_ORDER = f"{GAVE_UP_SQL}, scored_at, stream_id, result_id"


def no_results(root: str | Path) -> str:
    """What `query` and `report` say about a folder that holds no results."""
    return f"no results under {root} (is it the --out folder of `patchrank screen`?)"


class ResultStore:
    def __init__(self, root: str | Path, *, endpoint: str | None = None) -> None:
        self.root: str | Path = str(root).rstrip("/") if is_s3(root) else Path(root)
        self.endpoint = endpoint
        if not (self._s3_exists(endpoint) if is_s3(root) else self.root.is_dir()):
            raise FileNotFoundError(f"no result dataset at {self.root}")
        self._load()

    def _load(self) -> None:
        """Views over the part files listed now (again after `patchrank compact` replaced some)."""
        self.con = duckdb.connect()
        for table in ("scans", "patches"):
            files = part_files(self.root, table, self.endpoint)
            if files and is_s3(self.root):  # pyarrow reads the objects; DuckDB scans the Arrow dataset
                fs, _ = filesystem(self.root, self.endpoint)
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
            f"(PARTITION BY scan_id, model_version ORDER BY {FIRST_RESULT_ORDER}) AS _rn FROM scans_all) WHERE _rn = 1"
        )
        self.con.execute(
            "CREATE VIEW patches AS SELECT p.* FROM patches_all p SEMI JOIN scans s ON p.result_id = s.result_id "
            "QUALIFY row_number() OVER (PARTITION BY p.result_id, p.rank) = 1"
        )

    def _s3_exists(self, endpoint: str | None) -> bool:
        fs, base = filesystem(self.root, endpoint)
        return bool(fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True)))

    def sql(self, query: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """(column names, rows); if a part file listed earlier has gone (compacted), list again and retry once."""
        for attempt in (0, 1):
            try:
                rel = self.con.execute(query, params) if params else self.con.execute(query)
                return ([d[0] for d in rel.description] if rel.description else []), rel.fetchall()
            except (duckdb.IOException, duckdb.InvalidInputException):
                if attempt:
                    raise
                self._load()
        raise AssertionError("unreachable")

    def _dicts(self, query: str, params: list | None = None) -> list[dict]:
        cols, rows = self.sql(query, params)
        return [dict(zip(cols, r)) for r in rows]

    def counts(self, model_version: str | None = None) -> dict[str, int]:
        where, params = ("WHERE model_version = ?", [model_version]) if model_version else ("", [])
        rows = self.sql(f"SELECT status, count(*) FROM scans {where} GROUP BY status", params)[1]
        return {s: int(n) for s, n in rows}

    def model_versions(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT model_version FROM scans GROUP BY 1 ORDER BY max(scored_at) DESC")[1]]

    def top_scans(self, n: int = 10, *, model_version: str | None = None, patches: int = 3) -> list[dict]:
        """Most suspicious `ok` scans first, each with its top patches (and its flag, where results have one)."""
        where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
        flag = ", flagged" if "flagged" in self.sql("SELECT * FROM scans LIMIT 0")[0] else ""
        out = self._dicts(
            f"SELECT scan_id, uri, series_uid, scan_score, n_slices, model_version, result_id, latency_s{flag} "
            f"FROM scans WHERE status = 'ok' {where} ORDER BY scan_score DESC NULLS LAST, scan_id LIMIT ?",
            [*params, n],
        )
        for row in out:
            row["patches"] = self.patches_of(row["result_id"], patches)
        return out

    def failed(self, model_version: str | None = None) -> list[dict]:
        where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
        return self._dicts(
            f"SELECT scan_id, uri, error FROM scans WHERE status = 'failed' {where} ORDER BY uri", params
        )

    def gave_up(self, model_version: str) -> list[str]:
        """URIs of the scans whose logical result gave up on an infrastructure fault."""
        rows = self.sql(
            "SELECT uri FROM scans WHERE model_version = ? AND status = 'failed' AND starts_with(error, ?) "
            "ORDER BY uri",
            [model_version, GAVE_UP],
        )[1]
        return [r[0] for r in rows]

    def patches_of(self, result_id: str, n: int) -> list[dict]:
        return self._dicts(
            "SELECT rank, slice_index, row, col, y0, x0, y1, x1, score, rec, disc FROM patches WHERE result_id "
            "= ? ORDER BY rank LIMIT ?",
            [result_id, n],
        )

    def scan(self, scan_id: str, model_version: str | None = None) -> dict:
        where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
        rows = self._dicts(
            f"SELECT * FROM scans WHERE scan_id = ? {where} ORDER BY scored_at DESC LIMIT 1", [scan_id, *params]
        )
        if not rows:
            raise ValueError(
                f"no result for scan {scan_id}" + (f" and model version {model_version}" if model_version else "")
            )
        return rows[0]


def display_name(row: dict, full: bool = False) -> str:
    """How a result is named on screen: its file (full: its path), a DICOM series by its folder and the end
    of its SeriesInstanceUID (series of one folder differ only there; their descriptions are header text)."""
    name = row["uri"] if full else Path(row["uri"]).name
    return f"{name} [series ...{row['series_uid'][-8:]}]" if row.get("series_uid") else name


def format_ranking(rows: list[dict], *, truth: dict[str, bool] | None = None) -> str:
    """Ranked scans with their top patches (slice, patch-grid row and column, score); `truth` maps a uri
    to abnormal yes/no (the demo's phantoms), shown as a column."""
    mark = (lambda r: f"{'LESION' if truth.get(r['uri']) else 'normal':<7}  ") if truth is not None else (lambda r: "")
    head = f"{'truth':<7}  " if truth is not None else ""
    lines = [f"{'rank':>4}  {'score':>8}  {'scan_id':<12}  {head}scan  [top patches: slice (row,col) score]"]
    for i, r in enumerate(rows, 1):
        tops = ", ".join(f"s{p['slice_index']} ({p['row']},{p['col']}) {p['score']:.2f}" for p in r["patches"])
        score = f"{r['scan_score']:8.3f}" if r["scan_score"] is not None else f"{'nan':>8}"
        flag = "  FLAGGED" if r.get("flagged") else ""
        lines.append(f"{i:>4}  {score}  {r['scan_id'][:12]:<12}  {mark(r)}{display_name(r)}  [{tops}]{flag}")
    return "\n".join(lines)

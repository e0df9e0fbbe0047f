"""The two result tables, defined once and versioned: **scans** and **patches**.

Rows are validated with pydantic before they become Arrow; the Arrow schemas carry
`patchrank.table` / `patchrank.schema_version` metadata and every row a
`schema_version` column, so readers can union old and new part files by name.
A result is keyed by (scan_id, model_version); `result_id` links a scan row to its
patch rows (readers keep the first result per key and only its patches). A `failed` row
that gave up on an infrastructure fault ("gave up after N deliveries: ...") is not final:
the scan is scored again when it is queued again (`screen --retry-failed` queues every
such scan), and readers prefer any later result for that key.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2  # 2: patch centres (i, j, k, ras_*_mm), scans.series_uid / subject / session / map_uri / flagged
TABLES = ("scans", "patches")
GAVE_UP = "gave up after "  # the error of a failed row whose cause was the infrastructure, not the scan


def gave_up(status: str | None, error: str | None) -> bool:
    """A `failed` row written because retries ran out (transient): not a final result."""
    return status == "failed" and (error or "").startswith(GAVE_UP)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopPatch(_Row):
    rank: int = Field(ge=1)
    slice_index: int = Field(ge=0)
    row: int = Field(ge=0)
    col: int = Field(ge=0)
    y0: int
    x0: int
    y1: int
    x1: int
    score: float


class ScanRow(_Row):
    result_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    scan_id: str = Field(min_length=1, max_length=64)
    uri: str = Field(max_length=4096)
    series_uid: str | None = Field(None, max_length=64, description="DICOM SeriesInstanceUID when uri is its folder")
    subject: str | None = Field(None, max_length=128, description="BIDS sub-<label> from the file name")
    session: str | None = Field(None, max_length=128, description="BIDS ses-<label> from the file name")
    map_uri: str | None = Field(None, max_length=256, description="anomaly map NIfTI, relative to the dataset root")
    flagged: bool | None = Field(None, description="scan_score >= the model's operating point (None: none fitted)")
    status: Literal["ok", "failed"]
    error: str | None = Field(None, max_length=1000)
    n_slices: int = Field(0, ge=0)
    scan_score: float | None = None
    top_patches: list[TopPatch] = Field(default_factory=list)
    latency_s: float = Field(ge=0, description="seconds from dequeue to result row")
    queue_s: float = Field(0.0, ge=0, description="seconds the entry waited in the stream before dequeue")
    model_version: str = Field(min_length=1, max_length=64)
    stream_id: str = Field(max_length=64)
    deliveries: int = Field(1, ge=0)
    scored_at: datetime
    schema_version: int = SCHEMA_VERSION


class PatchRow(_Row):
    result_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    scan_id: str = Field(min_length=1, max_length=64)
    slice_index: int = Field(ge=0)
    row: int = Field(ge=0)
    col: int = Field(ge=0)
    y0: int
    x0: int
    y1: int
    x1: int
    score: float
    rank: int = Field(ge=1)
    rec: float
    disc: float
    i: float | None = Field(None, description="box centre in the input file's own voxel indices (data.geometry)")
    j: float | None = None
    k: float | None = None
    ras_x_mm: float | None = Field(None, description="box centre in world mm, RAS+ (volumes only)")
    ras_y_mm: float | None = None
    ras_z_mm: float | None = None
    model_version: str = Field(min_length=1, max_length=64)
    stream_id: str = Field(max_length=64)
    scored_at: datetime
    schema_version: int = SCHEMA_VERSION


def _hit_fields(hit, model: type[_Row]) -> dict:
    """The fields of a pipeline.scan_scoring.PatchHit that the row model also has."""
    return {f: getattr(hit, f) for f in model.model_fields if hasattr(hit, f)}


def top_patch(hit) -> TopPatch:
    """A scan row's top_patches entry for a PatchHit."""
    return TopPatch(**_hit_fields(hit, TopPatch))


def patch_row(hit, **result) -> PatchRow:
    """A patches-table row for a PatchHit; `result`: result_id, scan_id, model_version, stream_id, scored_at."""
    return PatchRow(**_hit_fields(hit, PatchRow), **result)


_TS = pa.timestamp("us", tz="UTC")
_TOP = pa.struct(
    [(n, pa.int32()) for n in ("rank", "slice_index", "row", "col", "y0", "x0", "y1", "x1")] + [("score", pa.float64())]
)


def _meta(table: str) -> dict[bytes, bytes]:
    return {b"patchrank.table": table.encode(), b"patchrank.schema_version": str(SCHEMA_VERSION).encode()}


SCANS_SCHEMA = pa.schema(
    [
        ("result_id", pa.string()),
        ("scan_id", pa.string()),
        ("uri", pa.string()),
        ("series_uid", pa.string()),
        ("subject", pa.string()),
        ("session", pa.string()),
        ("map_uri", pa.string()),
        ("flagged", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("n_slices", pa.int32()),
        ("scan_score", pa.float64()),
        ("top_patches", pa.list_(_TOP)),
        ("latency_s", pa.float64()),
        ("queue_s", pa.float64()),
        ("model_version", pa.string()),
        ("stream_id", pa.string()),
        ("deliveries", pa.int32()),
        ("scored_at", _TS),
        ("schema_version", pa.int16()),
    ],
    metadata=_meta("scans"),
)

PATCHES_SCHEMA = pa.schema(
    [
        ("result_id", pa.string()),
        ("scan_id", pa.string()),
        ("slice_index", pa.int32()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("y0", pa.int32()),
        ("x0", pa.int32()),
        ("y1", pa.int32()),
        ("x1", pa.int32()),
        ("score", pa.float64()),
        ("rank", pa.int32()),
        ("rec", pa.float64()),
        ("disc", pa.float64()),
        ("i", pa.float64()),
        ("j", pa.float64()),
        ("k", pa.float64()),
        ("ras_x_mm", pa.float64()),
        ("ras_y_mm", pa.float64()),
        ("ras_z_mm", pa.float64()),
        ("model_version", pa.string()),
        ("stream_id", pa.string()),
        ("scored_at", _TS),
        ("schema_version", pa.int16()),
    ],
    metadata=_meta("patches"),
)

SCHEMAS = {"scans": SCANS_SCHEMA, "patches": PATCHES_SCHEMA}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_arrow(table: str, rows: list[_Row]) -> pa.Table:
    """Validated rows -> an Arrow table with exactly the versioned schema."""
    schema = SCHEMAS[table]
    cols = {name: [] for name in schema.names}
    for r in rows:
        d = r.model_dump()
        for name in schema.names:
            cols[name].append(d[name])
    return pa.Table.from_pydict(cols, schema=schema)

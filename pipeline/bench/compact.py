"""`patchrank bench compact`: what `patchrank compact` costs on a dataset of many small parts.

Writes --scans results through the real sink, --per-part scans per flush (one scans part and one
patches part each, as the consumer does), every --redeliver-th scan delivered twice, then times one
compaction and checks that the `scans` / `patches` views are unchanged.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compact", help="cost of `patchrank compact` on many small parts", description=__doc__)
    p.add_argument("--scans", type=int, default=2000, help="results written (default 2000)")
    p.add_argument("--per-part", type=int, default=2, help="results per sink flush (default 2)")
    p.add_argument("--patches", type=int, default=20, help="patch rows per result (default 20, the service's)")
    p.add_argument("--redeliver", type=int, default=10, help="every Nth result is written twice (default 10)")
    p.set_defaults(func=run)


def _result(scan_id: str, score: float, at, n_patches: int):
    from patchrank.pipeline.service.tables import PatchRow, ScanRow

    rid, common = uuid.uuid4().hex, {"scan_id": scan_id, "model_version": "bench", "stream_id": "1-0", "scored_at": at}
    box = {"slice_index": 1, "row": 0, "col": 0, "y0": 0, "x0": 0, "y1": 8, "x1": 8}
    patches = [
        PatchRow(result_id=rid, score=score - r, rank=r + 1, rec=0.0, disc=0.0, **box, **common)
        for r in range(n_patches)
    ]
    scan = ScanRow(
        result_id=rid, uri=f"/x/{scan_id}", status="ok", n_slices=1, scan_score=score, latency_s=0.0, **common
    )
    return scan, patches


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from patchrank.pipeline.service.compact import compact
    from patchrank.pipeline.service.results import ResultStore
    from patchrank.pipeline.service.sink import ParquetSink
    from patchrank.pipeline.service.tables import utcnow

    t0 = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        sink, racer = ParquetSink(root), ParquetSink(root)
        for i in range(0, args.scans, args.per_part):
            ids = range(i, min(i + args.per_part, args.scans))
            rows = [_result(f"{j:016x}", float(j), t0 + timedelta(milliseconds=j), args.patches) for j in ids]
            sink.write([s for s, _ in rows], [p for _, ps in rows for p in ps])
            again = [
                _result(f"{j:016x}", -1.0, t0 + timedelta(seconds=1), args.patches)
                for j in ids
                if j % args.redeliver == 0
            ]
            racer.seen.clear()  # a consumer that raced past the check
            racer.write([s for s, _ in again], [p for _, ps in again for p in ps])
        views = "SELECT * FROM scans ORDER BY scan_id", "SELECT * FROM patches ORDER BY result_id, rank"
        before = [ResultStore(root).sql(q)[1] for q in views]
        start = time.perf_counter()
        stats = compact(root)
        took = time.perf_counter() - start
        same = [ResultStore(root).sql(q)[1] for q in views] == before
    print(f"{stats.line('dataset')}; {took:.1f} s; views unchanged: {same}")
    return 0 if same else 1

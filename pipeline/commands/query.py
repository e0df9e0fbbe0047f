"""`patchrank query`: ranked scans, SQL, and heatmaps over the Parquet result dataset."""

from __future__ import annotations

import argparse

from patchrank.pipeline.commands.options import number, output_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="query scoring results (Parquet): top scans, SQL, per-scan heatmap PNG",
        description="Tables: scans, patches (deduplicated logical results) and scans_all, patches_all (every row).",
    )
    p.add_argument("dir", help="result dataset: directory or s3://bucket/prefix (the --out of `patchrank screen`)")
    p.add_argument(
        "--s3-endpoint", default=None, help="S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)"
    )
    p.add_argument("--top", type=number(int, 0), default=10, help="list the N most suspicious scans (default 10)")
    p.add_argument("--patches", type=number(int, 0), default=3, help="top patches listed per scan (default 3)")
    p.add_argument("--model-version", help="only results of this model version")
    mode = p.add_mutually_exclusive_group()  # default: the top scans
    mode.add_argument("--sql", help='run SQL over the tables, e.g. "SELECT status, count(*) FROM scans GROUP BY 1"')
    mode.add_argument("--scan", help="scan_id (or unique prefix) to show / render")
    mode.add_argument("--flagged", action="store_true", help="list the flagged scans (score >= the operating point)")
    p.add_argument("--png", help="with --scan: write the heatmap with ranked patch boxes to this PNG")
    p.set_defaults(func=run)


def _print_table(cols: list[str], rows: list[tuple], limit: int = 200) -> None:
    cells = [[("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r] for r in rows[:limit]]
    widths = [min(60, max([len(c)] + [len(r[i]) for r in cells])) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(r, widths)))
    if len(rows) > limit:
        print(f"... {len(rows) - limit} more rows")


def _resolve(store, prefix: str) -> str:
    ids = [r[0] for r in store.sql("SELECT DISTINCT scan_id FROM scans WHERE starts_with(scan_id, ?)", [prefix])[1]]
    if len(ids) != 1:
        raise ValueError(f"scan id prefix {prefix!r} matches {len(ids)} scans")
    return ids[0]


def _flagged(store, model_version: str | None) -> int:
    """The flagged scans, highest score first, and how many ok scans have no flag because their
    checkpoint had no operating point (or the results predate operating points)."""
    no_point = (
        "no operating point: the checkpoint these scans were scored with had none, so no scan is flagged "
        "or cleared (`patchrank evaluate --checkpoint CK --data HELD_OUT --out DIR` on held-out normal and "
        "abnormal scans stores one; scans screened after that, into a new --out, carry the flag)"
    )
    if "flagged" not in store.sql("SELECT * FROM scans LIMIT 0")[0]:
        print("no flags: these results were written before operating points existed (no flagged column)")
        return 0
    where, params = ("AND model_version = ?", [model_version]) if model_version else ("", [])
    ((unset, judged),) = store.sql(
        "SELECT count(*) FILTER (WHERE status = 'ok' AND flagged IS NULL), count(*) FILTER (WHERE flagged IS NOT NULL) "
        f"FROM scans WHERE true {where}",
        params,
    )[1]
    if unset and not judged:
        print(no_point)
        return 0
    cols, rows = store.sql(
        f"SELECT scan_id, scan_score, uri, series_uid FROM scans WHERE flagged {where} "
        "ORDER BY scan_score DESC, scan_id",
        params,
    )
    print(f"{len(rows)} flagged")
    if unset:
        print(f"({unset} ok scans have no flag: scored with a checkpoint without an operating point)")
    _print_table(cols, rows)
    return 0


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.service.results import ResultStore, format_ranking, no_results

    if args.png and not args.scan:
        raise ValueError("--png draws one scan: give --scan SCAN_ID too")
    if args.png:
        output_file(args.png, "--png", new_folder=True)
    if args.sql and args.model_version:
        raise ValueError("--model-version does not apply to --sql: filter with WHERE model_version = '...'")
    store = ResultStore(args.dir, endpoint=args.s3_endpoint)
    if args.sql:
        import duckdb

        try:
            cols, rows = store.sql(args.sql)
        except duckdb.Error as exc:
            raise ValueError(f"SQL error: {str(exc).splitlines()[0]}") from None
        _print_table(cols, rows)
        return 0
    if args.flagged:
        return _flagged(store, args.model_version)
    if args.scan:
        scan_id = _resolve(store, args.scan)
        row = store.scan(scan_id, args.model_version)
        for k in (
            "scan_id",
            "uri",
            "status",
            "error",
            "scan_score",
            "n_slices",
            "model_version",
            "latency_s",
            "scored_at",
            "series_uid",
            "subject",
            "session",
            "map_uri",
            "flagged",
        ):
            if k in row:
                print(f"{k:>14}: {row[k]}")
        for p in store.patches_of(row["result_id"], args.patches):
            print(
                f"  #{p['rank']} slice {p['slice_index']} rows {p['y0']}:{p['y1']} cols {p['x0']}:{p['x1']} "
                f"score {p['score']:.3f} (rec {p['rec']:.2f}, disc {p['disc']:.2f})"
            )
        if args.png:
            from patchrank.pipeline.service.heatmap import render_scan_png

            print(f"wrote {render_scan_png(store, scan_id, args.png, model_version=args.model_version)}")
        return 0
    if args.png:
        raise ValueError("--png needs --scan ID")
    counts = store.counts(args.model_version)
    if counts:
        print(f"{sum(counts.values())} results: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    else:
        print(no_results(args.dir))
    print(format_ranking(store.top_scans(args.top, model_version=args.model_version, patches=args.patches)))
    failed = store.failed(args.model_version)
    for f in failed[:20]:
        print(f"FAILED {f['scan_id'][:12]}  {f['error']}")
    if len(failed) > 20:
        print(f"... {len(failed) - 20} more failed")
    return 0

"""`patchrank compact RESULTS`: merge the small Parquet part files of a result dataset (pipeline/service/compact.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="merge the small Parquet part files of a result dataset (safe while writers run)",
        description="Merge the small part files of each <table>/<model_version>/<date>/ folder into parts of "
        "about 64 MiB, dropping repeated deliveries as `query` does (the first result per scan and model "
        "version). Only the parts present when it starts are merged, and each is deleted only after the "
        "merged part is in place, so it can run while `screen`/`serve` write results. Rerun it after an "
        "interruption: it removes what the interrupted run left behind.",
    )
    p.add_argument("results", help="result dataset: directory or s3://bucket/prefix (the --out of `patchrank screen`)")
    p.add_argument(
        "--s3-endpoint", default=None, help="S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from patchrank.pipeline.data.storage import exists, is_s3
    from patchrank.pipeline.service.compact import compact

    if not (exists(args.results, args.s3_endpoint) if is_s3(args.results) else Path(args.results).is_dir()):
        raise FileNotFoundError(f"no result dataset at {args.results}")
    print(compact(args.results, endpoint=args.s3_endpoint).line(args.results))
    return 0

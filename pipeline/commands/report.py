"""`patchrank report RESULTS --out report.html`: a self-contained HTML screening report (pipeline/report.py)."""

from __future__ import annotations

import argparse

from patchrank.pipeline.commands.options import number, output_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a result dataset (open in a browser)")
    p.add_argument("results", help="result dataset folder (screen --out)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--top", type=number(), default=50, help="scans to include, highest score first (default 50)")
    p.add_argument("--slices", type=number(), default=3, help="most suspicious slices drawn per scan (default 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.report import build_report

    output_file(args.out, "--out")
    print(f"wrote {build_report(args.results, args.out, top=args.top, slices=args.slices)}")
    return 0

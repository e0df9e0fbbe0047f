"""`patchrank score`: score scans in-process (no Redis/Ray) and print them ranked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from patchrank.pipeline.data.files import walk_scans


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score scan files in-process and print them ranked (no services)")
    p.add_argument("paths", nargs="+", help="scan files or folders (.nii, .nii.gz, .png, .jpg)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--top", type=int, default=3, help="patches to list per scan (default 3)")
    p.add_argument("--json", dest="json_out", help="also write all results to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.data.loaders import ScanError
    from patchrank.pipeline.data.prefetch import prefetched
    from patchrank.pipeline.data.preprocess import as_config, load_prepared
    from patchrank.pipeline.inference import load_for_inference
    from patchrank.pipeline.scan_scoring import score_prepared

    model = load_for_inference(args.checkpoint)
    pre = as_config(model.preprocess)
    files, skipped = walk_scans(args.paths)
    results = []
    # The next file is read and preprocessed in a background thread while this one is scored.
    for path, loading in tqdm(
        prefetched(files, lambda p: load_prepared(p, pre)), total=len(files), desc="scoring", unit="scan"
    ):
        try:
            s = score_prepared(model, loading.result(), top_n=args.top)
            results.append(
                {
                    "uri": str(path),
                    "status": "ok",
                    "scan_score": s.scan_score,
                    "top_patches": [p.__dict__ for p in s.patches],
                }
            )
        except ScanError as exc:
            results.append(
                {"uri": str(path), "status": "failed", "error": str(exc), "scan_score": None, "top_patches": []}
            )
    ok = sorted((r for r in results if r["status"] == "ok"), key=lambda r: -r["scan_score"])
    print(f"{'rank':>4}  {'score':>8}  scan  [top patches: slice (row,col) score]")
    for i, r in enumerate(ok, 1):
        tops = ", ".join(f"s{p['slice_index']} ({p['row']},{p['col']}) {p['score']:.2f}" for p in r["top_patches"])
        print(f"{i:>4}  {r['scan_score']:8.3f}  {Path(r['uri']).name}  [{tops}]")
    for r in results:
        if r["status"] == "failed":
            print(f"FAILED  {r['uri']}: {r['error']}")
    aux = [p for p, why in skipped if why.startswith("label/mask")]
    for path, why in skipped:
        if not why.startswith("label/mask"):
            print(f"skipped {path}: {why}")
    if aux:
        print(f"skipped {len(aux)} label/mask files (not scans)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model_version": model.model_version, "results": results}, indent=2))
    return 0

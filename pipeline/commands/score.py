"""`patchrank score`: score scans in-process (no Redis/Ray) and print them ranked.

Exit status (as `screen`'s): 0 when every scan found has a result, ok or failed because of the scan (its FAILED line
says why; a last line on stderr counts them); 1 when none could be scored; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from patchrank.pipeline.commands.options import add_modality_args, add_quiet_arg, number, output_file, output_folder
from patchrank.pipeline.data.files import skipped_lines, walk_s3, walk_scans


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score scan files in-process and print them ranked (no services)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="+", help="scan files or folders (NIfTI, DICOM, 2D images), local or s3://bucket/prefix"
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint path or s3://bucket/key (its endpoint from the AWS env)"
    )
    p.add_argument("--top", type=number(int, 0), default=3, help="patches to list per scan (default 3)")
    p.add_argument("--json", dest="json_out", help="also write all results to this JSON file")
    p.add_argument(
        "--maps",
        metavar="DIR",
        help="write each volume's anomaly map on the input's grid as "
        "DIR/<input name>.<first 8 hex digits of the scan id>.map.nii.gz",
    )
    add_modality_args(p, "score")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.data.bids import entities
    from patchrank.pipeline.data.dicom import SeriesRef, series_scan_id
    from patchrank.pipeline.data.geometry import canonical_to_native, write_map
    from patchrank.pipeline.data.loaders import ScanError
    from patchrank.pipeline.data.modality import model_modality, select, wrong_kind
    from patchrank.pipeline.data.prefetch import prefetched
    from patchrank.pipeline.data.preprocess import as_config, load_prepared
    from patchrank.pipeline.data.storage import is_s3, local_checkpoint
    from patchrank.pipeline.evaluation import operating_point
    from patchrank.pipeline.inference import load_for_inference
    from patchrank.pipeline.progress import Progress
    from patchrank.pipeline.scan_scoring import score_prepared
    from patchrank.pipeline.service.intake import load_uri
    from patchrank.pipeline.service.messages import scan_id_for
    from patchrank.pipeline.service.results import display_name
    from patchrank.pipeline.service.slice_scorer import input_kind

    missing = [p for p in args.paths if not is_s3(p) and not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such file or folder")
    if args.maps:
        output_folder(args.maps, "--maps")
    if args.json_out:
        output_file(args.json_out, "--json")
    model = load_for_inference(local_checkpoint(args.checkpoint))  # an s3:// checkpoint is fetched once (cached)
    threshold = operating_point.load(args.checkpoint, model.model_version)
    pre = as_config(model.preprocess)
    files, skipped = walk_scans([p for p in args.paths if not is_s3(p)])
    for uri in filter(is_s3, args.paths):  # endpoint and credentials from the AWS environment
        found, skip = walk_s3(uri)
        files, skipped = files + found, skipped + skip
    modality = args.modality or model_modality(model.meta)
    files, other = select(files, modality, args.modality_pattern)
    skipped += other
    results = []

    trained_on = input_kind(model.stats)

    def load(p):  # s3:// objects and series are first copied to a temp folder (service.intake.load_uri)
        why = wrong_kind(p.folder, p.uid, trained_on) if isinstance(p, SeriesRef) else wrong_kind(p, None, trained_on)
        if why:
            raise ScanError(why)
        if isinstance(p, SeriesRef) and is_s3(p.folder):
            return load_uri(p.folder, pre, series_uid=p.uid)
        return load_uri(p, pre) if is_s3(p) else load_prepared(p, pre)

    # The next scan is read and preprocessed in a background thread while this one is scored.
    loads = prefetched(files, load)
    n_failed = n_flat = 0
    bar = Progress(len(files), "scoring", quiet=args.quiet, note=lambda: f"{n_failed} failed" if n_failed else "")
    for path, loading in loads:
        series = isinstance(path, SeriesRef)
        scan_id = series_scan_id(path) if series else scan_id_for(path)
        where = {
            **entities(path.folder if series else path),
            "scan_id": scan_id,
            "uri": str(path.folder if series else path),
            "series_uid": path.uid if series else None,
        }
        try:
            prep = loading.result()
            s = score_prepared(model, prep, top_n=args.top, keep_maps=bool(args.maps))
            if not math.isfinite(s.scan_score) or not all(math.isfinite(p.score) for p in s.patches):
                raise ScanError("the model gave a non-finite score (NaN/inf) for this scan")
            if args.maps and "map_volume" in s.extras:
                where["map"] = str(Path(args.maps) / map_name(where["uri"], scan_id))
                write_map(where["map"], canonical_to_native(s.extras["map_volume"], prep.geometry), prep.geometry)
            elif args.maps:
                n_flat += 1
            results.append(
                {
                    **where,
                    "status": "ok",
                    "scan_score": s.scan_score,
                    "flagged": operating_point.flagged(s.scan_score, threshold),
                    "top_patches": [p.__dict__ for p in s.patches],
                }
            )
        except ScanError as exc:
            results.append({**where, "status": "failed", "error": str(exc), "scan_score": None, "top_patches": []})
            n_failed += 1
        bar.update()
    bar.close()
    ok = sorted((r for r in results if r["status"] == "ok"), key=lambda r: -r["scan_score"])
    if ok:
        print(f"{'rank':>4}  {'score':>8}  scan  [top patches: slice (row,col) score]")
    for i, r in enumerate(ok, 1):
        tops = ", ".join(f"s{p['slice_index']} ({p['row']},{p['col']}) {p['score']:.2f}" for p in r["top_patches"])
        flag = "  FLAGGED" if r["flagged"] else ""
        print(f"{i:>4}  {r['scan_score']:8.3f}  {display_name(r)}  [{tops}]{flag}")
    for r in results:
        if r["status"] == "failed":
            why = r["error"].removeprefix(f"{Path(r['uri']).name}: ")  # the path says which file
            print(f"FAILED  {display_name(r, full=True)}: {why}")
    for line in skipped_lines(skipped):
        print(line)
    if n_flat:
        print(f"no anomaly map for {n_flat} 2D images: --maps writes the maps of volumes only")
    if args.maps and len(ok) > n_flat:
        print(f"anomaly maps in {Path(args.maps)}/ (<input name>.<first 8 hex digits of the scan id>.map.nii.gz)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model_version": model.model_version, "results": results}, indent=2))
    if not results:
        why = "see the skipped lines above" if skipped else "no scan files found"
        raise ValueError(f"no scans to score in {', '.join(map(str, args.paths))} ({why})")
    if not ok:
        print(
            f"patchrank score: none of the {len(results)} scans could be scored (see the FAILED lines)", file=sys.stderr
        )
        return 1
    if n_failed:
        print(f"patchrank score: {n_failed} of {len(results)} scans could not be scored (see the FAILED lines)",
              file=sys.stderr)  # fmt: skip
    return 0


def map_name(uri: str, scan_id: str) -> str:
    """The map file of a scan: its input's name (a series: its folder's) and 8 digits of its scan id."""
    name = Path(uri).resolve().name or "scan"
    for ext in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return f"{name}.{scan_id[:8]}.map.nii.gz"

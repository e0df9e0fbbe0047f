"""`patchrank screen`: queue scans, score them through Redis -> Ray Serve -> Parquet, rank.

With nothing configured it starts a private redis-server and a local Ray, and stops
both when done (also on Ctrl-C). --redis-url / --address use existing services.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=os.environ.get("PATCHRANK_REDIS_URL"),
        help="existing Redis (redis:// or rediss://); default: start a private one",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="existing Ray cluster (e.g. auto); default: start a local Ray",
    )
    p.add_argument("--namespace", default="patchrank", help="Redis key prefix (default patchrank)")
    p.add_argument("--scorer-replicas", type=int, default=1)
    p.add_argument("--scorer-gpus", type=float, default=0.0, help="GPUs per scorer replica (> 0 implies --device cuda)")
    p.add_argument("--batch-size", type=int, default=32, help="max slices per scorer forward (@serve.batch)")
    p.add_argument("--batch-wait", type=float, default=0.01, help="max seconds a batch waits to fill")
    p.add_argument("--chunk", type=int, default=8, help="slices per scorer request")
    p.add_argument("--inflight", type=int, default=4, help="scans scored concurrently per ingest replica")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded local Ray (default: all)")
    p.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3-compatible endpoint for s3:// inputs/outputs (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, "
        "else AWS); credentials come from the standard AWS environment/config",
    )


def _location(uri: str) -> str:
    """A local path made absolute, or an s3:// URI normalised."""
    from patchrank.pipeline.data.storage import S3Uri, is_s3

    return str(S3Uri.parse(uri)) if is_s3(uri) else str(Path(uri).resolve())


def app_args(args: argparse.Namespace, *, redis_url: str, checkpoint: str, out: str, roots: list[str]):
    from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig

    threads = max(1, (os.cpu_count() or 1) // max(1, args.scorer_replicas))
    service = ServiceConfig(
        redis_url=redis_url,
        namespace=args.namespace,
        checkpoint=_location(checkpoint),
        output_dir=_location(out),
        allowed_roots=roots,
        s3_endpoint_url=args.s3_endpoint,
        max_batch_size=args.batch_size,
        batch_wait_timeout_s=args.batch_wait,
        chunk_slices=min(args.chunk, args.batch_size),
        max_inflight_scans=args.inflight,
        device="cuda" if args.scorer_gpus > 0 else "cpu",
        torch_threads=threads,
        write_maps=bool(getattr(args, "maps", False)),
    )
    n = args.scorer_replicas
    scorer = Placement(num_cpus=0.5, num_gpus=args.scorer_gpus, min_replicas=n, max_replicas=n)
    ingest = Placement(num_cpus=0.1, min_replicas=1, max_replicas=1)
    return AppArgs(service=service, scorer=scorer, ingest=ingest)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "screen", help="score scans through the streaming service (Redis -> Ray Serve -> Parquet) and rank them"
    )
    p.add_argument("paths", nargs="+", help="scan files or folders, local or s3://bucket/prefix")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or s3://bucket/key")
    p.add_argument(
        "--out", required=True, help="Parquet result dataset: directory or s3://bucket/prefix (created; appended to)"
    )
    p.add_argument("--top", type=int, default=10, help="scans to list in the summary")
    p.add_argument(
        "--maps", action="store_true", help="write each volume's anomaly map as OUT/maps/<scan_id>.nii.gz (input grid)"
    )
    p.add_argument(
        "--modality",
        help="score only scans of this modality (default: the one the checkpoint was trained on, e.g. flair)",
    )
    p.add_argument(
        "--modality-pattern",
        help="regular expression a DICOM series' SeriesDescription/ProtocolName must match (default per modality)",
    )
    p.add_argument(
        "--timeout", type=float, default=6 * 3600, help="give up if the stream is not drained after this many seconds"
    )
    add_service_args(p)
    p.set_defaults(func=run)


def allowed_roots(paths: list[str], endpoint: str | None = None) -> list[str]:
    """The folders the service may read: each given folder (or s3:// prefix), or the parent of a given file."""
    from patchrank.pipeline.data.storage import S3Uri, is_file, is_s3

    roots = set()
    for raw in paths:
        if is_s3(raw):
            u = S3Uri.parse(raw)
            roots.add(str(u.parent() if is_file(str(u), endpoint) else u))
            continue
        p = Path(raw).resolve()
        roots.add(str(p if p.is_dir() else p.parent))
    return sorted(roots)


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.data.storage import is_file
    from patchrank.pipeline.service.results import ResultStore, format_ranking
    from patchrank.pipeline.service.screening import screen, services

    if not is_file(args.checkpoint, args.s3_endpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.data.modality import model_modality

    modality = args.modality or model_modality(load_checkpoint(args.checkpoint).meta)
    embedded = "private redis-server" if args.redis_url is None else "existing Redis"
    print(f"screen: {embedded}, {'Ray at ' + args.address if args.address else 'local Ray'}")
    with services(args.redis_url, args.address, args.num_cpus) as url:
        app = app_args(
            args,
            redis_url=url,
            checkpoint=args.checkpoint,
            out=args.out,
            roots=allowed_roots(args.paths, args.s3_endpoint),
        )
        res = screen(args.paths, app, timeout_s=args.timeout, modality=modality, pattern=args.modality_pattern)
    print(f"scored {res.queued} scans in {res.seconds:.1f}s with model {res.model_version}; results in {res.out}")
    if res.skipped:
        from collections import Counter

        print("skipped: " + ", ".join(f"{n} {why}" for why, n in Counter(w for _, w in res.skipped).most_common()))
    store = ResultStore(res.out, endpoint=args.s3_endpoint)
    counts = store.counts(res.model_version)
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(format_ranking(store.top_scans(args.top, model_version=res.model_version)))
    for f in store.failed(res.model_version)[:20]:
        print(f"FAILED {f['scan_id'][:12]}  {f['error']}")
    return 0

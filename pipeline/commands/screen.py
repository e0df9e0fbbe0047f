"""`patchrank screen`: queue scans, score them through Redis -> Ray Serve -> Parquet, rank.

With nothing configured it starts a private redis-server and a local Ray, and stops
both when done (also on Ctrl-C, SIGTERM, and by a watchdog on kill -9). --redis-url /
--address use existing services; the run then gets a Serve app and (unless --namespace
is given) Redis keys of its own, so it never collides with another run or a `serve`.

Exit status: 0 when every queued scan has a final result row (ok, or failed because of the
scan); 1 when any has none (its dead letter, printed, is all that is left), is missing
altogether or only gave up on an infrastructure fault (`--retry-failed` scores those again),
or the stream was not drained within --timeout; 2 for bad arguments (a path that does not exist,
no scans under the paths) or a bad checkpoint.

The service reads only under the folders given (the parent of a file given), and the targets of
the symlinked scan files found there (those files only).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from patchrank.pipeline.commands.options import (
    add_modality_args,
    add_quiet_arg,
    add_redis_password_arg,
    number,
    output_folder,
)


def add_service_args(p: argparse.ArgumentParser, *, private_redis: bool = True) -> None:
    """The options `screen` and `serve` share; `serve` (private_redis=False) needs an existing Redis."""
    p.add_argument(
        "--redis-url",
        default=os.environ.get("PATCHRANK_REDIS_URL"),
        help="existing Redis (redis:// or rediss://; default $PATCHRANK_REDIS_URL)"
        + ("; without one a private redis-server is started" if private_redis else "; required"),
    )
    add_redis_password_arg(p)
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="existing Ray cluster (e.g. auto); default: start a local Ray",
    )
    p.add_argument(
        "--namespace",
        help="Redis key prefix (default: patchrank for `serve` and a private Redis, "
        "patchrank-screen-<run id> for `screen` on an existing Redis)",
    )
    p.add_argument("--scorer-replicas", type=number(), default=1, help="scorer replicas (default 1)")
    p.add_argument(
        "--scorer-gpus",
        type=number(float, 0),
        default=0.0,
        help="GPUs per scorer replica (> 0 scores on CUDA; default 0)",
    )
    p.add_argument(
        "--batch-size", type=number(int, 1, 4096), default=32, help="max slices per scorer forward (default 32)"
    )
    p.add_argument(
        "--batch-wait", type=number(float, 0, 10), default=0.01, help="max seconds a batch waits to fill (default 0.01)"
    )
    p.add_argument("--chunk", type=number(), help="slices per scorer request (default: the max batch size)")
    p.add_argument(
        "--inflight",
        type=number(int, 1, 256),
        default=4,
        help="scans scored concurrently per ingest replica (default 4)",
    )
    p.add_argument("--num-cpus", type=number(), help="CPUs for the embedded local Ray (default: all)")
    p.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3-compatible endpoint for s3:// inputs/outputs (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, "
        "else AWS); credentials come from the standard AWS environment/config",
    )
    p.add_argument(
        "--max-deliveries",
        type=number(int, 1, 100),
        default=3,
        help="deliveries before a scan is given up as failed (default 3)",
    )
    p.add_argument(
        "--retry-after",
        type=number(float, 0.1),
        default=30.0,
        help="seconds a scan whose scoring or result write failed waits before it is retried (default 30)",
    )


def _location(uri: str) -> str:
    """A local path made absolute, or an s3:// URI normalised."""
    from patchrank.pipeline.data.storage import S3Uri, is_s3

    return str(S3Uri.parse(uri)) if is_s3(uri) else str(Path(uri).resolve())


def redis_password(args: argparse.Namespace):
    """The password for an existing Redis (settings.cli_password), as a SecretStr or None."""
    from patchrank.pipeline.service.settings import cli_password

    return cli_password(getattr(args, "redis_url", None), getattr(args, "redis_password_file", None))


def app_args(
    args: argparse.Namespace,
    *,
    redis_url: str,
    checkpoint: str,
    out: str,
    roots: list[str],
    namespace: str | None = None,
):
    from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig

    threads = max(1, (os.cpu_count() or 1) // max(1, args.scorer_replicas))
    external = getattr(args, "redis_url", None) is not None and redis_url == args.redis_url
    service = ServiceConfig(
        redis_url=redis_url,
        redis_password=redis_password(args) if external else None,
        namespace=namespace or args.namespace or "patchrank",
        max_deliveries=getattr(args, "max_deliveries", 3),
        claim_idle_ms=int(1000 * getattr(args, "retry_after", 30.0)),
        checkpoint=_location(checkpoint),
        output_dir=_location(out),
        allowed_roots=roots,
        s3_endpoint_url=getattr(args, "s3_endpoint", None),
        max_batch_size=args.batch_size,
        batch_wait_timeout_s=args.batch_wait,
        chunk_slices=min(args.chunk, args.batch_size) if args.chunk else None,
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
    p.add_argument("paths", nargs="*", help="scan files or folders, local or s3://bucket/prefix")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="also queue every scan whose result in --out gave up on an infrastructure fault "
        '("gave up after N deliveries"), to score it again (paths may then be omitted)',
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint path or s3://bucket/key")
    p.add_argument(
        "--out", required=True, help="Parquet result dataset: directory or s3://bucket/prefix (created; appended to)"
    )
    p.add_argument("--top", type=number(int, 0), default=10, help="scans to list in the summary (default 10)")
    p.add_argument(
        "--maps", action="store_true", help="write each volume's anomaly map as OUT/maps/<scan_id>.nii.gz (input grid)"
    )
    add_modality_args(p, "score")
    p.add_argument(
        "--timeout",
        type=number(float, 0, open_low=True),
        default=6 * 3600,
        help="give up if the stream is not drained after this many seconds (default 21600: 6 hours)",
    )
    add_service_args(p)
    add_quiet_arg(p)
    p.set_defaults(func=run)


def allowed_roots(paths: list[str], endpoint: str | None = None, scans: list | None = None) -> list[str]:
    """What the service may read: each given folder (or s3:// prefix) or the parent of a given file,
    and each local scan file in `scans` that is reached through a symlink from there (its target,
    that one file)."""
    from patchrank.pipeline.data.storage import S3Uri, is_file, is_s3

    roots = set()
    for raw in paths:
        if is_s3(raw):
            u = S3Uri.parse(raw)
            roots.add(str(u.parent() if is_file(str(u), endpoint) else u))
            continue
        p = Path(raw).resolve()
        roots.add(str(p if p.is_dir() else p.parent))
    folders = {Path(r) for r in roots if not is_s3(r)}
    for scan in scans or []:
        if not isinstance(scan, Path):
            continue  # s3:// objects; DICOM series (folder walks do not follow symlinked folders)
        try:
            real = scan.resolve()
        except (OSError, RuntimeError):  # a symlink loop: refused by the service with its reason
            continue
        if not any(parent in folders for parent in real.parents):
            roots.add(str(real))
    return sorted(roots)


def run(args: argparse.Namespace) -> int:
    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.commands.enqueue import scan_list
    from patchrank.pipeline.data.modality import model_modality
    from patchrank.pipeline.data.storage import is_s3, local_checkpoint
    from patchrank.pipeline.service.results import ResultStore, format_ranking
    from patchrank.pipeline.service.screening import check_redis, run_id, screen, services
    from patchrank.pipeline.service.settings import check_redis_url

    for p in args.paths:
        if not is_s3(p):
            _check_exists(p)
    if not args.address:  # on a cluster the nodes write --out, not this machine
        output_folder(args.out, "--out")
    model = load_checkpoint(local_checkpoint(args.checkpoint, args.s3_endpoint))  # bad: one line now, not at deploy
    modality = args.modality or model_modality(model.meta)
    paths = list(args.paths)
    if args.retry_failed:
        retry = retry_paths(args.out, model.model_version, args.s3_endpoint)
        if not retry:
            print(f"nothing to retry: no scan in {args.out} gave up on an infrastructure fault with this model")
            if not paths:
                return 0
        else:
            print(f"retrying {len(retry)} scans whose result gave up on an infrastructure fault")
        paths += [p for p in retry if p not in paths]
    if not paths:
        raise ValueError("nothing to screen: give scan files or folders (or --retry-failed with earlier results)")
    scans = scan_list(paths, modality, args.modality_pattern, args.s3_endpoint)
    if not scans[0]:
        skipped = f" (skipped: {_skip_counts(scans[1])})" if scans[1] else ""
        raise ValueError(f"no scans to screen in {', '.join(paths)}{skipped}")
    pw = redis_password(args)  # an unreadable password file: one line now
    if args.redis_url:  # checked before anything is started; errors never quote the URL
        check_redis_url(args.redis_url)
        check_redis(args.redis_url, **({"password": pw.get_secret_value()} if pw else {}))
    rid = run_id()
    embedded = "private redis-server" if args.redis_url is None else "existing Redis"
    print(f"screen: {embedded}, {'Ray at ' + args.address if args.address else 'local Ray'}, run {rid}")
    with services(args.redis_url, args.address, args.num_cpus) as url:
        ns = args.namespace or ("patchrank" if args.redis_url is None else f"patchrank-screen-{rid}")
        app = app_args(
            args,
            redis_url=url,
            checkpoint=args.checkpoint,
            out=args.out,
            roots=allowed_roots(paths, args.s3_endpoint, scans[0]),
            namespace=ns,
        )
        res = screen(
            paths,
            app,
            timeout_s=args.timeout,
            app_name=f"patchrank-screen-{rid}",
            modality=modality,
            pattern=args.modality_pattern,
            show=not args.quiet,
            scans=scans,
        )
        if args.redis_url is not None and args.namespace is None:
            _drop_run_keys(app.service, keep_dead=bool(res.accounting and res.accounting.dead_only))
    acc = res.accounting
    print(f"queued {res.queued} scans, {res.seconds:.1f}s with model {res.model_version}; results in {res.out}")
    if res.skipped:
        from patchrank.pipeline.data.files import skipped_lines

        print("\n".join(skipped_lines(res.skipped)))
    print(acc.summary())
    if acc.rows:
        store = ResultStore(res.out, endpoint=args.s3_endpoint)
        print(format_ranking(store.top_scans(args.top, model_version=res.model_version)))
        for f in store.failed(res.model_version)[:20]:
            print(f"FAILED {f['scan_id'][:12]}  {f['error']}")
    problems = []
    if not res.queued:
        problems.append("no scan was queued")
    if acc.counts().get("gave up"):
        problems.append(
            f"{acc.counts()['gave up']} scans gave up on an infrastructure fault (rerun with --retry-failed)"
        )
    if res.timed_out:
        problems.append(f"the stream was not drained: {res.timed_out}")
    if acc.dead_only:
        saved = _save_dead_letters(res.out, rid, acc.dead_only)
        print(
            f"NO RESULT ROW for {len(acc.dead_only)} scans: their only record is a dead letter"
            + (f", saved to {saved}" if saved else " (could not be saved; listed here)")
        )
        shown = acc.dead_only[:50] if saved else acc.dead_only  # all of them when the file could not be written
        for sid, uri, why in shown:
            print(f"  DEAD {sid[:12]}  {uri}: {why}")
        if len(shown) < len(acc.dead_only):
            print(f"  ... and {len(acc.dead_only) - len(shown)} more in {saved}")
        problems.append(f"{len(acc.dead_only)} scans have no result row (rerun with --retry-failed)")
    if acc.missing:
        print(f"MISSING {len(acc.missing)} queued scans: no result row and no dead letter")
        for sid, uri in acc.missing:
            print(f"  MISSING {sid[:12]}  {uri}")
        problems.append(f"{len(acc.missing)} scans are missing")
    if problems:
        import sys

        print(f"patchrank screen: incomplete: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def _check_exists(path: str) -> None:
    """A clear error for a local path that is not there or cannot be looked at."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file or folder") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None


def _skip_counts(skipped: list[tuple[str, str]]) -> str:
    """'2 not found, 1 label/mask ...': how many were skipped for each reason."""
    from collections import Counter

    return ", ".join(f"{n} {why}" for why, n in Counter(w for _, w in skipped).most_common())


def retry_paths(out: str | Path, model_version: str, endpoint: str | None = None) -> list[str]:
    """The scans in `out` to score again: those whose result under `model_version` gave up on an
    infrastructure fault, and (local datasets) those that only have a dead letter saved by an
    earlier run (`dead_letters-<run>.jsonl`, e.g. after a full disk); local files (and DICOM
    series folders) that are gone are left out."""
    import json

    from patchrank.pipeline.data.storage import is_s3
    from patchrank.pipeline.service.results import ResultStore

    try:
        uris = ResultStore(out, endpoint=endpoint).gave_up(model_version)
    except FileNotFoundError:
        return []
    if not is_s3(out):
        for saved in sorted(Path(out).glob("dead_letters-*.jsonl")):
            for line in saved.read_text().splitlines():
                try:
                    uris.append(json.loads(line)["uri"])
                except (ValueError, KeyError, TypeError):
                    continue
    return [u for u in dict.fromkeys(uris) if u and (is_s3(u) or Path(u).exists())]  # a DICOM series: its folder


def _save_dead_letters(out: str | Path, rid: str, dead: list[tuple[str, str, str]]) -> Path | None:
    """The dead letters of this run as JSON lines next to the results (they vanish with a
    private Redis); None when that cannot be written either (e.g. the disk is full)."""
    import json

    if str(out).startswith("s3://"):
        return None  # listed on stdout instead
    path = Path(out) / f"dead_letters-{rid}.jsonl"
    try:
        with open(path, "w") as f:
            for sid, uri, why in dead:
                f.write(json.dumps({"scan_id": sid, "uri": uri, "reason": why}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return path
    except OSError:
        Path(path).unlink(missing_ok=True)
        return None


def _drop_run_keys(cfg, *, keep_dead: bool) -> None:
    """Delete the run's own keys on an existing Redis (its dead-letter stream stays when not empty)."""
    import contextlib

    from patchrank.pipeline.service.streams import StreamClient

    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        with contextlib.suppress(Exception):
            keys = [cfg.keys.stream, cfg.keys.errors, *client.r.scan_iter(match=f"{cfg.namespace}:done:*", count=1000)]
            if not keep_dead:
                keys.append(cfg.keys.dead_letter)
            client.r.delete(*keys)
    finally:
        client.close()

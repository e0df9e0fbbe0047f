"""`patchrank bench serve`: end-to-end scoring throughput through Redis -> Serve -> Parquet
versus the bare batched model forward, in the same run on the same machine.

The real thing: --checkpoint (a trained model, e.g. the one behind the quality table) and --data (real
volumes) are what the figures should be measured with. Without them: phantom NIfTI volumes
(pipeline.data.phantom) and a freshly initialised model of the default architecture and default image
size (throughput does not depend on the weights), and the output says so.
Bare forward: SliceScorer.score_chunks (-> model.scoring.score_members over the networks of the fast
inference path, pipeline.inference, no pixel maps: exactly what a scorer replica runs) over the same
preprocessed slices in batches of B, in-process, best of 1 and all torch threads
(preprocessing and I/O excluded), measured right before and right after each service run (--rounds N:
bare, serve, bare, ... with each service run compared with its two neighbours). End to end: a private
redis-server + local Ray + the Serve app; clock from
the first XADD to the stream drained (every result in Parquet and acknowledged), after
one warm-up scan; per configuration (scorer replicas x max batch size).
Latency per scan: `latency_s` (dequeue -> result row) and `queue_s + latency_s`
(enqueue -> result row; all scans are enqueued at once, so this includes queueing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="scoring service throughput vs bare model forward", description=__doc__)
    p.add_argument("--checkpoint", help="trained model to serve (default: a fresh untrained default model)")
    p.add_argument("--data", nargs="*", help="real scan files/folders (default: generated phantoms)")
    p.add_argument("--scans", type=int, default=12, help="phantom volumes to generate (default 12)")
    p.add_argument("--image-size", type=int, default=0, help="input size of the fresh model (default: training's)")
    p.add_argument("--replicas", default="1", help="scorer replica counts, comma-separated (default 1)")
    p.add_argument("--batch-sizes", default="32", help="@serve.batch max_batch_size values (default 32)")
    p.add_argument("--chunk", type=int, help="slices per scorer request (default: the max batch size)")
    p.add_argument("--inflight", type=int, default=4, help="scans in flight per ingest replica (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per scorer replica (default: CPUs / replicas)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="service runs per configuration, each between two bare-forward runs (bare, serve, bare, serve, ..., "
        "bare; each ratio against its two neighbours); the summary gives the median ratio (default 1)",
    )
    p.add_argument("--json", dest="json_out", help="also write the results here")
    p.set_defaults(func=run)


def fresh_checkpoint(path: Path, image_size: int) -> Path:
    import torch

    from patchrank.model.scoring import ScoreStats
    from patchrank.pipeline.settings import TrainConfig
    from patchrank.pipeline.training.loop import build_models
    from patchrank.pipeline.training.state import save_trained

    cfg = TrainConfig(preprocess={"image_size": image_size} if image_size else {})
    image_size = cfg.preprocess.image_size
    torch.manual_seed(0)
    recon, disc = build_models(cfg)
    save_trained(
        path, recon, disc, cfg, ScoreStats.identity(image_size, image_size), {"note": "untrained, benchmark only"}, None
    )
    return path


def bare_forward(checkpoint: str, files: list[Path], batch: int) -> tuple[float, int, float]:
    """-> (slices/s of the batched forward alone, slices, CPU seconds per slice of that best run): the best
    over 1 and all torch threads (on a loaded machine one thread can beat two), so the ratio is conservative."""
    import numpy as np
    import torch

    from patchrank.pipeline.data.preprocess import load_prepared
    from patchrank.pipeline.service.slice_scorer import SliceChunk, SliceScorer

    preps = None
    best, cpu, saved = 0.0, float("nan"), torch.get_num_threads()
    try:
        for threads in sorted({1, os.cpu_count() or 1}):
            scorer = SliceScorer(checkpoint, torch_threads=threads)  # ONNX Runtime sessions take it at creation
            if preps is None:
                preps = [load_prepared(f.resolve(), scorer.preprocess) for f in files]
                images = np.concatenate([p.images for p in preps])
                fg = np.concatenate([p.foreground for p in preps])
                pos = np.concatenate([p.position for p in preps])
            scorer.score_chunks([SliceChunk(images[:batch], fg[:batch], pos[:batch])])  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(0, len(images), batch):
                scorer.score_chunks([SliceChunk(images[s : s + batch], fg[s : s + batch], pos[s : s + batch])])
            rate = len(images) / (time.perf_counter() - t0)
            if rate > best:
                best, cpu = rate, (time.process_time() - c0) / len(images)
    finally:
        torch.set_num_threads(saved)
    return best, len(images), cpu


def bare_in_scoring_process(checkpoint: str, files: list[Path], batch: int) -> tuple[float, int, float]:
    """bare_forward in a fresh process with a Serve replica's environment (pipeline.inference.SCORING_ENV)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from patchrank.pipeline.inference import SCORING_ENV

    saved = {k: os.environ.get(k) for k in SCORING_ENV}
    os.environ.update(SCORING_ENV)  # the spawned interpreter starts with it, before torch loads
    try:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(bare_forward, checkpoint, files, batch).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _report_round(res: dict, r: int, b: int, i: int, rounds: int) -> None:
    tag = f" round {i + 1}/{rounds}" if rounds > 1 else ""
    print(
        f"  replicas {r} batch {b}{tag}: {res['slices_per_s']:.1f} slices/s ({res['scans_per_s']:.2f} scans/s) "
        f"vs bare {res['bare_slices_per_s']:.1f} ({res['bare_before']:.1f} before, {res['bare_after']:.1f} after) "
        f"-> ratio {res['ratio']:.2f}; latency p50 {res['latency_p50']:.2f}s p95 {res['latency_p95']:.2f}s; scorer "
        f"busy {100 * res['scorer_busy']:.0f}% at {res['scorer_busy_slices_per_s']:.1f} slices/s, peak RSS "
        f"{res['scorer_peak_rss_mib']:.0f} MiB; load {res['load']}",
        flush=True,
    )
    print(
        f"    CPU in the timed window ({res['seconds']:.1f} s, {100 * res['cpu_share']:.0f}% of all CPUs; "
        f"the bare forward takes {res['bare_cpu_s_per_slice'] * res['slices']:.1f} s for these slices, the "
        f"scorer {res['scorer_busy_cpu_s']:.1f} s in its forwards, mean batch "
        f"{res['scorer_mean_batch']:.1f}): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in res["cpu_s"].items() if v >= 0.05),
        flush=True,
    )


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _delta(before: list[dict], after: list[dict], key: str) -> float:
    """Sum over replicas of after[key] - before[key] (a replica first seen after counts from 0)."""
    start = {m["pid"]: m[key] for m in before}
    return sum(m[key] - start.get(m["pid"], 0) for m in after)


def _cpu_times(roles: dict[int, str]) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) of this process and every descendant (Ray, Serve replicas, Redis)."""
    import psutil

    from patchrank.pipeline.bench.load import _label

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = ("this process" if proc.pid == me.pid else _label(proc, roles), t.user + t.system)
        except Exception:  # noqa: BLE001 - process gone
            continue
    return out


def _cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two `_cpu_times` snapshots, per role, largest first."""
    roles: dict[str, float] = {}
    for pid, (role, t) in after.items():
        roles[role] = roles.get(role, 0.0) + t - before.get(pid, (role, 0.0))[1]
    return dict(sorted(((k, round(v, 2)) for k, v in roles.items()), key=lambda kv: -kv[1]))


def _settle(max_s: float = 30.0) -> None:
    """Wait (up to max_s) until this process's descendants (Serve tearing replicas down, Ray) use under 10 % of
    one CPU over a second, so the bare forward after a service run is not timed beside that work."""
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        before = _cpu_times({})
        time.sleep(1.0)
        if sum(_cpu_by_role(before, _cpu_times({})).values()) < 0.1:
            return


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def serve_run(
    url: str, checkpoint: str, files: list[Path], out: Path, roots: list[str], replicas: int, batch: int, args
) -> dict:
    from patchrank.pipeline.commands.enqueue import enqueue_paths
    from patchrank.pipeline.service.results import ResultStore
    from patchrank.pipeline.service.screening import deploy, scorer_usage, undeploy, wait_drained
    from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig
    from patchrank.pipeline.service.streams import StreamClient

    ns = f"bench-{replicas}-{batch}-{int(time.time())}"
    cfg = ServiceConfig(
        redis_url=url,
        namespace=ns,
        checkpoint=checkpoint,
        output_dir=str(out),
        allowed_roots=roots,
        max_batch_size=batch,
        chunk_slices=min(args.chunk, batch) if args.chunk else None,
        max_inflight_scans=args.inflight,
        torch_threads=args.threads or max(1, (os.cpu_count() or 1) // replicas),
        flush_interval_s=0.2,
    )
    deploy(
        AppArgs(
            service=cfg,
            scorer=Placement(num_cpus=0.5, min_replicas=replicas, max_replicas=replicas),
            ingest=Placement(num_cpus=0.1),
        )
    )
    client = StreamClient.from_url(url, cfg.keys)
    try:
        enqueue_paths(client, files[:1], show=False)  # warm-up: one scan through every stage
        wait_drained(client, timeout_s=600, show=False)
        before, roles = scorer_usage(replicas=replicas), {}
        cpu_before = _cpu_times(roles)
        t0 = time.perf_counter()
        enqueue_paths(client, files[1:], show=False)
        wait_drained(client, timeout_s=3600, show=False)
        seconds = time.perf_counter() - t0
        cpu = _cpu_by_role(cpu_before, _cpu_times(roles))
        after = scorer_usage(replicas=replicas)
    finally:
        client.close()
        undeploy()
    store = ResultStore(out)
    rows = store.sql("SELECT n_slices, latency_s, queue_s FROM scans WHERE status = 'ok' ORDER BY scored_at OFFSET 1")[
        1
    ]
    slices = sum(r[0] for r in rows)
    proc = [r[1] for r in rows]
    e2e = [r[1] + r[2] for r in rows]
    return {
        "replicas": replicas,
        "max_batch_size": batch,
        "scans": len(rows),
        "slices": slices,
        "seconds": seconds,
        "slices_per_s": slices / seconds,
        "scans_per_s": len(rows) / seconds,
        "latency_p50": _pct(proc, 50),
        "latency_p95": _pct(proc, 95),
        "e2e_p50": _pct(e2e, 50),
        "e2e_p95": _pct(e2e, 95),
        "scorer_peak_rss_mib": max((m["peak_rss_mib"] or 0.0) for m in after),
        # Share of the timed window the scorer replicas spent in forwards, and their slices/s while in them.
        "scorer_busy": _delta(before, after, "busy_s") / (seconds * replicas),
        "scorer_busy_slices_per_s": _delta(before, after, "slices") / max(_delta(before, after, "busy_s"), 1e-9),
        "scorer_mean_batch": _delta(before, after, "slices") / max(_delta(before, after, "batches"), 1),
        "scorer_busy_cpu_s": _delta(before, after, "busy_cpu_s"),
        # CPU seconds per process role in the timed window, and their sum as a share of all CPUs' time.
        "cpu_s": cpu,
        "cpu_share": sum(cpu.values()) / (seconds * (os.cpu_count() or 1)),
    }


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.commands.enqueue import collect
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset
    from patchrank.pipeline.service.screening import services

    # Ray starts its worker processes (the replicas) at niceness 15; beside other jobs at niceness 0 that
    # alone would halve their share against the bare forward, which runs at 0 in its own process.
    os.environ.setdefault("RAY_worker_niceness", "0")
    work = Path(tempfile.mkdtemp(prefix="patchrank-bench-serve-"))
    if args.data:
        files, _ = collect(args.data)
        roots = sorted({str(Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent) for p in args.data})
    else:
        write_phantom_dataset(
            work / "data", PhantomSpec(n_normal=args.scans // 2, n_abnormal=args.scans - args.scans // 2, seed=7)
        )
        files, _ = collect([work / "data"])
        roots = [str((work / "data").resolve())]
    if len(files) < 2:
        raise ValueError("need at least 2 scans (one is the warm-up)")
    ckpt = (
        str(Path(args.checkpoint).resolve())
        if args.checkpoint
        else str(fresh_checkpoint(work / "model.pt", args.image_size))
    )
    replicas = [int(x) for x in args.replicas.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")]
    if not (args.checkpoint and args.data):
        print("bench serve: NOT the real thing: " + ("an untrained fresh model" if not args.checkpoint else "")
              + (" and " if not (args.checkpoint or args.data) else "") + ("phantom volumes" if not args.data else "")
              + "; pass --checkpoint (trained) and --data (real volumes) for figures a user gets")  # fmt: skip
    print(
        f"bench serve: {len(files)} scans, checkpoint {ckpt}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, load {_load()}"
    )
    results = []
    with services() as url:
        for r in replicas:
            for b in batches:
                # Each service run sits between two bare-forward runs: the machine may be shared, and its
                # speed drifts; a round's ratio is against the mean of its two neighbours.
                before, _, cpu0 = bare_in_scoring_process(ckpt, files[1:], b)
                ratios = []
                for i in range(args.rounds):
                    res = serve_run(url, ckpt, files, work / f"out-{r}-{b}-{i}", roots, r, b, args)
                    _settle()
                    after, _, cpu1 = bare_in_scoring_process(ckpt, files[1:], b)
                    bare = (before + after) / 2
                    res.update(round=i + 1, bare_slices_per_s=bare, bare_before=before, bare_after=after, load=_load())
                    res["bare_cpu_s_per_slice"] = (cpu0 + cpu1) / 2
                    res["ratio"] = res["slices_per_s"] / bare
                    results.append(res)
                    ratios.append(res["ratio"])
                    _report_round(res, r, b, i, args.rounds)
                    before, cpu0 = after, cpu1
                if args.rounds > 1:
                    print(
                        f"  replicas {r} batch {b}: median ratio {statistics.median(ratios):.2f} over {args.rounds} "
                        f"rounds ({', '.join(f'{x:.2f}' for x in ratios)})",
                        flush=True,
                    )
    print(
        "\n| scorer replicas | max batch | round | slices/s | scans/s | bare forward slices/s | ratio | latency p50 / "
        "p95 (s) | enqueue->result p50 / p95 (s) | scorer peak RSS (MiB) | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in results:
        print(
            f"| {x['replicas']} | {x['max_batch_size']} | {x['round']} | {x['slices_per_s']:.1f} | "
            f"{x['scans_per_s']:.2f} | {x['bare_slices_per_s']:.1f} | "
            f"{x['ratio']:.2f} | {x['latency_p50']:.2f} / {x['latency_p95']:.2f} | {x['e2e_p50']:.2f} / "
            f"{x['e2e_p95']:.2f} | {x['scorer_peak_rss_mib']:.0f} | {x['load']} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "files": len(files),
                    "checkpoint": ckpt,
                    "real": bool(args.checkpoint and args.data),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "cpus": os.cpu_count(),
                    "results": results,
                },
                indent=2,
            )
        )
    return 0

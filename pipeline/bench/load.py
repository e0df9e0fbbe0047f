"""`patchrank bench load`: N queued scans drained by the service while a producer is still
adding more, with bounded memory, and nothing lost.

Set-up: N small generated gray PNG images (one slice each; random smooth blobs) in a temp
folder; a private redis-server (or --redis-url); a local Ray with the Serve app
(ingest -> batched scorer -> Parquet); a checkpoint (--checkpoint, or a fresh untrained
model: throughput does not depend on the weights).
Run: a producer *process* enqueues the N scans in batches (optionally rate-limited)
while the service drains the stream. A monitor samples once per --sample-s: queue
depth (XLEN, lag, pending), results acknowledged, and the resident memory (RSS, psutil)
of every process involved (this driver, the producer, redis-server, each Ray process:
Serve replicas, controller, raylet, GCS, workers).
Checks at the end: every scan has exactly one logical result, lag = pending = 0, the
dead-letter stream is empty.
Output: OUT/load.json (summary + per-process peak RSS), OUT/load_timeseries.csv,
OUT/load.md (the table for docs/guarantees.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="N queued scans drained with bounded memory while a producer runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scans", type=int, default=10_000, help="scans to generate and enqueue (default 10000)")
    p.add_argument("--size", type=int, default=48, help="side of the generated PNG images in pixels (default 48)")
    p.add_argument("--image-size", type=int, default=32, help="model input side of the fresh model (default 32)")
    p.add_argument("--checkpoint", help="model to serve (default: a fresh model at --image-size)")
    p.add_argument("--rate", type=float, default=0.0, help="producer scans/s (default 0 = as fast as Redis takes them)")
    p.add_argument("--producer-batch", type=int, default=200, help="messages per pipelined XADD batch (default 200)")
    p.add_argument("--batch-size", type=int, default=32, help="@serve.batch max slices per forward (default 32)")
    p.add_argument("--inflight", type=int, default=32, help="scans in flight in the ingest replica (default 32)")
    p.add_argument("--replicas", type=int, default=1, help="scorer replicas (default 1)")
    p.add_argument("--redis-url", help="existing Redis (default: a private redis-server)")
    p.add_argument(
        "--redis-password-file",
        default=os.environ.get("PATCHRANK_REDIS_PASSWORD_FILE"),
        help="file holding the password of --redis-url (default $PATCHRANK_REDIS_PASSWORD_FILE / _PASSWORD)",
    )
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    p.add_argument("--sample-s", type=float, default=1.0, help="monitor sampling period (default 1 s)")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds (default 3600)")
    p.add_argument("--out", default="bench_load", help="output folder (default bench_load)")
    p.set_defaults(func=run)


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n distinct (size, size) uint8 gray PNGs: smooth background + 1-3 bright blobs."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in tqdm(range(n), desc="images", unit="img", mininterval=1.0):
        img = 0.35 + 0.15 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy + rng.uniform(0, 6))
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.12)
            img += 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        p = folder / f"img_{i:06d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(p, compress_level=1)
        paths.append(p)
    return paths


def _produce(
    url: str, namespace: str, folder: str, n: int, rate: float, batch: int, started: float, redis_kw: dict | None = None
) -> None:
    """Producer process: enqueue folder/img_*.png in pipelined batches, optionally at `rate`/s."""
    import psutil

    from patchrank.pipeline.service.keys import StreamKeys
    from patchrank.pipeline.service.messages import message_for
    from patchrank.pipeline.service.streams import StreamClient

    client = StreamClient.from_url(url, StreamKeys(namespace), **(redis_kw or {}))
    files = sorted(Path(folder).glob("img_*.png"))[:n]
    me, peak = psutil.Process(), 0.0
    t0 = time.monotonic()
    for s in range(0, len(files), batch):
        client.add_many([message_for(f) for f in files[s : s + batch]])
        peak = max(peak, me.memory_info().rss / 2**20)
        if rate > 0:
            ahead = (s + batch) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    client.close()
    Path(folder, "producer.json").write_text(json.dumps({"seconds": time.monotonic() - t0, "peak_rss_mib": peak}))


def _label(proc, roles: dict[int, str]) -> str:
    """A stable name per process: role, Ray actor class, or program (script) name."""
    if proc.pid in roles:
        return roles[proc.pid]
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - process gone
        return "?"
    head = cmd[0] if cmd else proc.name()
    if head.startswith("ray::"):
        label = head.split()[0].split(".")[0]  # drop the method-name suffix Ray appends while busy
    elif Path(head).name.startswith("python") and len(cmd) > 1:
        label = f"python {Path(cmd[1]).name}"
    else:
        label = Path(head).name or proc.name()
    if label != "ray::IDLE":
        roles[proc.pid] = label
    return label


class Monitor(threading.Thread):
    """Samples queue depth and per-process RSS every `period` seconds."""

    def __init__(self, client, roles: dict[int, str], period: float) -> None:
        super().__init__(daemon=True)
        self.client, self.roles, self.period = client, roles, period
        self.samples: list[dict] = []
        self.peak_rss: dict[str, float] = {}  # "label[pid]" -> MiB
        self.rss_at: dict[str, list[tuple[float, float]]] = {}  # key -> [(t, MiB)]
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def processes(self):
        import psutil

        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        return [p for p in procs if p.is_running()]

    def sample(self) -> dict:
        b = self.client.backlog()
        t = time.monotonic() - self.t0
        total_rss = 0.0
        roles = {"scorer": 0.0, "ingest": 0.0, "driver": 0.0, "producer": 0.0, "redis": 0.0}
        for p in self.processes():
            try:
                rss = p.memory_info().rss / 2**20
            except Exception:  # noqa: BLE001 - exited between listing and reading
                continue
            key = f"{_label(p, self.roles)}[{p.pid}]"
            self.peak_rss[key] = max(self.peak_rss.get(key, 0.0), rss)
            self.rss_at.setdefault(key, []).append((t, rss))
            total_rss += rss
            label = key.lower()
            for role in roles:
                if role in label or (role == "redis" and "redis-server" in label):
                    roles[role] += rss
        used = int(self.client.r.info("memory").get("used_memory", 0)) / 2**20
        s = {
            "t": round(t, 2),
            "xlen": b.length,
            "lag": b.lag,
            "pending": b.pending,
            "done": b.acked,
            "rss_total_mib": round(total_rss, 1),
            "redis_used_mib": round(used, 2),
            **{f"rss_{k}_mib": round(v, 1) for k, v in roles.items()},
        }
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - keep sampling through transient errors
                pass

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def steady_rate(samples: list[dict], n: int) -> tuple[float, float]:
    """Median and coefficient of variation of the per-interval drain rate (scans/s) between
    10% and 90% of the scans done (start-up and tail excluded)."""
    import numpy as np

    pts = [(s["t"], s["done"]) for s in samples if 0.1 * n <= s["done"] <= 0.9 * n]
    rates = [(d1 - d0) / (t1 - t0) for (t0, d0), (t1, d1) in zip(pts, pts[1:]) if t1 > t0]
    if len(rates) < 2:
        return float("nan"), float("nan")
    return float(np.median(rates)), float(np.std(rates) / max(np.mean(rates), 1e-9))


def run(args: argparse.Namespace) -> int:
    import multiprocessing as mp

    from tqdm.auto import tqdm

    from patchrank.pipeline.bench.serve import fresh_checkpoint
    from patchrank.pipeline.commands.screen import redis_password
    from patchrank.pipeline.service.results import ResultStore
    from patchrank.pipeline.service.screening import deploy, services, undeploy
    from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig
    from patchrank.pipeline.service.streams import StreamClient

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="patchrank-bench-load-"))
    files = write_images(work / "images", args.scans, args.size)
    ckpt = (
        str(Path(args.checkpoint).resolve())
        if args.checkpoint
        else str(fresh_checkpoint(work / "model.pt", args.image_size))
    )
    results = out / f"results-{int(time.time())}"
    print(
        f"bench load: {len(files)} scans ({args.size}x{args.size} PNG), {os.cpu_count()} CPUs, results in {results}",
        flush=True,
    )
    with services(args.redis_url, None, args.num_cpus) as url:
        ns = f"load-{int(time.time())}"
        threads = max(1, (os.cpu_count() or 1) // args.replicas)
        cfg = ServiceConfig(
            redis_url=url,
            redis_password=redis_password(args) if args.redis_url else None,
            namespace=ns,
            checkpoint=ckpt,
            output_dir=str(results),
            allowed_roots=[str(work / "images")],
            max_batch_size=args.batch_size,
            chunk_slices=1,
            max_inflight_scans=args.inflight,
            read_count=min(args.inflight, 64),
            flush_scans=256,
            flush_interval_s=0.5,
            torch_threads=threads,
        )
        client = StreamClient.from_url(url, cfg.keys, **cfg.redis_kwargs())
        client.ensure_group()
        deploy(
            AppArgs(
                service=cfg,
                scorer=Placement(num_cpus=0.5, min_replicas=args.replicas, max_replicas=args.replicas),
                ingest=Placement(num_cpus=0.1),
            )
        )
        roles = {os.getpid(): "driver"}
        producer = mp.get_context("spawn").Process(
            target=_produce,
            args=(
                url,
                ns,
                str(work / "images"),
                len(files),
                args.rate,
                args.producer_batch,
                time.time(),
                cfg.redis_kwargs(),  # pickled to the child, not on its command line
            ),
        )
        mon = Monitor(client, roles, args.sample_s)
        t0 = time.monotonic()
        producer.start()
        roles[producer.pid] = "producer"
        mon.t0 = t0
        mon.start()
        bar = tqdm(total=len(files), desc="drained", unit="scan")
        try:
            while True:
                b = client.backlog()
                bar.n = b.acked
                bar.refresh()
                if producer.exitcode == 0 and b.total == 0:  # all queued, all acknowledged (trimmed or not)
                    break
                if producer.exitcode not in (None, 0):
                    raise RuntimeError(f"producer failed with exit code {producer.exitcode}")
                if time.monotonic() - t0 > args.timeout:
                    raise TimeoutError(f"not drained after {args.timeout:.0f}s: {b}")
                time.sleep(0.25)
            seconds = time.monotonic() - t0
            mon.sample()
        finally:
            bar.close()
            mon.stop()
            producer.join(10)
            dead = client.dead_letters()
            client.close()
            undeploy()
            prod = (
                json.loads((work / "images" / "producer.json").read_text())
                if (work / "images" / "producer.json").exists()
                else {"seconds": float("nan"), "peak_rss_mib": float("nan")}
            )
            shutil.rmtree(work, ignore_errors=True)  # the generated images and model
    store = ResultStore(results)
    logical, distinct = store.sql("SELECT count(*), count(DISTINCT scan_id) FROM scans")[1][0]
    physical = store.sql("SELECT count(*) FROM scans_all")[1][0][0]
    counts = store.counts()
    rate_med, rate_cv = steady_rate(mon.samples, len(files))
    peak_depth = max(s["lag"] + s["pending"] for s in mon.samples)
    mon.peak_rss["producer (self-measured)"] = prod["peak_rss_mib"]
    growth = _rss_growth(mon, len(files))
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}",
        "scans": len(files),
        "image": f"{args.size}x{args.size} PNG",
        "model_input": args.image_size,
        "scorer_replicas": args.replicas,
        "max_batch_size": args.batch_size,
        "inflight": args.inflight,
        "producer_rate": args.rate or "unlimited",
        "seconds": round(seconds, 1),
        "scans_per_s": round(len(files) / seconds, 1),
        "steady_scans_per_s_median": round(rate_med, 1),
        "steady_rate_cv": round(rate_cv, 3),
        "peak_queue_depth": peak_depth,
        "results_logical": logical,
        "results_distinct": distinct,
        "results_physical": physical,
        "status_counts": counts,
        "dead_letters": len(dead),
        "lost": len(files) - distinct,
        "producer_seconds": round(prod["seconds"], 2),
        "redis_used_mib_peak": max(s["redis_used_mib"] for s in mon.samples),
        "peak_rss_mib": dict(sorted(((k, round(v, 1)) for k, v in mon.peak_rss.items()), key=lambda kv: -kv[1])),
        "rss_growth_mib_10pct_to_end": growth,
    }
    (out / "load.json").write_text(json.dumps(summary, indent=2))
    with open(out / "load_timeseries.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(mon.samples[0]))
        w.writeheader()
        w.writerows(mon.samples)
    md = _markdown(summary, mon.samples)
    (out / "load.md").write_text(md)
    print(md)
    return 0 if summary["lost"] == 0 and logical == len(files) and not dead else 1


def _rss_growth(mon: Monitor, n: int) -> dict[str, float]:
    """RSS at the end minus RSS when 10% of the scans were done, per process (MiB): bounded
    memory shows as ~0 growth while the remaining 90% stream through."""
    t10 = next((s["t"] for s in mon.samples if s["done"] >= 0.1 * n), None)
    out = {}
    for key, series in mon.rss_at.items():
        early = [r for t, r in series if t10 is not None and t >= t10]
        if len(early) >= 2 and series[-1][1] >= 20:
            out[key] = round(series[-1][1] - early[0], 1)
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1])))


def _markdown(s: dict, samples: list[dict]) -> str:
    lines = [
        f"Load: {s['scans']} scans ({s['image']}) on {s['machine']}, {s['date']}",
        "",
        "| scans | total s | scans/s overall | steady scans/s (median, CV) | peak queue depth | results "
        "(logical / physical) | lost | dead letters |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['scans']} | {s['seconds']} | {s['scans_per_s']} | {s['steady_scans_per_s_median']} "
        f"({s['steady_rate_cv']}) | {s['peak_queue_depth']} | "
        f"{s['results_logical']} / {s['results_physical']} | {s['lost']} | {s['dead_letters']} |",
        "",
        "Peak RSS per process (MiB):",
        "",
        "| process | peak RSS MiB |",
        "|---|---|",
    ]
    top = [(k, v) for k, v in s["peak_rss_mib"].items() if v >= 20 or "redis" in k or "producer" in k][:16]
    growth = s["rss_growth_mib_10pct_to_end"]
    lines[-1] = "|---|---|---|"
    lines[-2] = "| process | peak RSS MiB | growth from 10% done to end (MiB) |"
    lines += [f"| {k} | {v} | {growth.get(k, '')} |" for k, v in top]
    lines += [
        "",
        f"Redis used_memory peak: {s['redis_used_mib_peak']} MiB (the stream keeps acknowledged entries; see limits). "
        f"Producer enqueued all {s['scans']} in {s['producer_seconds']} s.",
    ]
    lines += [
        "",
        "Queue depth over time (lag + pending, every ~10% of the run):",
        "",
        "| t (s) | enqueued (XLEN) | waiting (lag) | in flight (pending) | done |",
        "|---|---|---|---|---|",
    ]
    step = max(1, len(samples) // 10)
    for x in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        lines.append(f"| {x['t']} | {x['xlen']} | {x['lag']} | {x['pending']} | {x['done']} |")
    return "\n".join(lines) + "\n"

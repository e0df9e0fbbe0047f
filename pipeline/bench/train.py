"""`patchrank bench train`: training throughput, plain in-process loop vs Ray Train.

Runs the real paths on the same synthetic in-memory slices: `fit_local` (what
`patchrank train --workers 0` runs) and `deploy.train_launcher.launch` with 1..N workers
(what `--workers N` runs). Throughput is images per second of the epoch loop itself
(`run_epoch`, summed over workers / slowest worker's time), read from the learning curve,
median over the epochs after the first: Ray's start-up (cluster, worker group, process
group) and the per-epoch validation and checkpointing are outside the measured window.
Every process / worker gets the same number of torch threads. Also reported: images per
CPU-second of the training processes, which stays meaningful on a machine shared with
other jobs (wall-clock images/s then mostly measures the neighbours). The plain loop runs
before and after the Ray runs, and ratios are against the mean of the two.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="training images/s: plain loop vs Ray Train with 1..N workers", description=__doc__
    )
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts to measure (default 1,2)")
    p.add_argument("--images", type=int, default=192, help="training slices per epoch (default 192)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up (default 3)")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's default (PreprocessConfig)")
    p.add_argument("--batch-size", type=int, default=16, help="per worker (default 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process / CPUs per Ray worker (default 1)")
    p.add_argument("--gpu", action="store_true", help="measure on GPUs (one per worker) with bf16 autocast")
    p.add_argument("--json", dest="json_out", help="also write the results here")
    p.set_defaults(func=run)


def synthetic_slices(n: int, size: int, channels: int, seed: int = 0):
    """Smooth random 'anatomy' in [-1, 1]; content does not affect throughput."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from patchrank.pipeline.data.datasets import SliceSet

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 8, size // 8, generator=g) * 2 - 1
    img = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).numpy().astype(np.float32)
    fg = np.ones((n, 1, size, size), dtype=bool)
    return SliceSet(
        img,
        fg,
        np.zeros(n, np.int64),
        np.array([f"s{i % 8}" for i in range(n)]),
        np.arange(n),
        np.full(n, -1),
        np.linspace(0, 1, n, dtype=np.float32),
    )


def _throughput(curve: Path) -> tuple[float, float]:
    """-> median over epochs 2.. of (images/s wall, images per CPU-second)."""
    rows = [r for r in csv.DictReader(curve.open()) if r.get("phase", "gan") == "gan"]  # adversarial epochs only
    rows = rows[1:] if len(rows) > 1 else rows
    return (
        statistics.median(float(r["images_per_s"]) for r in rows),
        statistics.median(float(r["images_per_cpu_s"]) for r in rows),
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> int:
    import ray
    import torch

    from patchrank.deploy.train_launcher import ROOT, launch
    from patchrank.pipeline.settings import TrainConfig
    from patchrank.pipeline.training.local import fit_local

    counts = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    if not counts or counts[0] < 1:
        raise ValueError("--workers needs worker counts >= 1, e.g. 1,2")
    if args.epochs < 2:
        raise ValueError("--epochs must be >= 2 (the first epoch is warm-up)")
    pre = {"image_size": args.image_size} if args.image_size else {}
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, preprocess=pre, max_val_slices=8)
    size, ch = cfg.preprocess.image_size, cfg.preprocess.channels
    train, val = synthetic_slices(args.images, size, ch), synthetic_slices(8, size, ch, seed=1)
    print(
        f"bench train: {args.images} slices {ch}x{size}x{size}, batch {args.batch_size}/worker, {args.epochs} epochs "
        f"(median img/s of epochs 2..), {args.threads} thread(s) per process, {'GPU' if args.gpu else 'CPU'}; "
        f"load avg {_load()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="patchrank-bench-train-") as tmp:
        torch.set_num_threads(args.threads)

        def plain_run(tag: str) -> None:
            t0 = time.perf_counter()
            fit_local(train, val, cfg, Path(tmp) / f"{tag}.pt", show=False, gpu=args.gpu)
            rate, per_cpu = _throughput(Path(tmp) / f"{tag}.curve.csv")
            rows.append(
                {
                    "mode": f"plain loop ({tag})",
                    "workers": 0,
                    "images_per_s": rate,
                    "images_per_cpu_s": per_cpu,
                    "wall_s": time.perf_counter() - t0,
                    "load": _load(),
                }
            )
            print(f"  plain loop ({tag})   {rate:8.1f} img/s  {per_cpu:8.1f} img/CPU-s   load {_load()}")

        plain_run("before")
        ray.init(
            num_cpus=max(counts) * args.threads,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        try:
            for w in counts:
                out = Path(tmp) / f"ray{w}.pt"
                t0 = time.perf_counter()
                launch(train, val, cfg, out, workers=w, gpu=args.gpu, cpus_per_worker=args.threads, progress_s=0)
                rate, per_cpu = _throughput(out.with_suffix(".curve.csv"))
                rows.append(
                    {
                        "mode": "Ray Train",
                        "workers": w,
                        "images_per_s": rate,
                        "images_per_cpu_s": per_cpu,
                        "wall_s": time.perf_counter() - t0,
                        "load": _load(),
                    }
                )
                print(f"  Ray Train x{w}        {rate:8.1f} img/s  {per_cpu:8.1f} img/CPU-s   load {_load()}")
        finally:
            ray.shutdown()
        plain_run("after")  # bracket the Ray runs: the machine's load may drift
    plain = statistics.mean(r["images_per_s"] for r in rows if r["workers"] == 0)
    plain_cpu = statistics.mean(r["images_per_cpu_s"] for r in rows if r["workers"] == 0)
    for r in rows:
        r["ratio_vs_plain"] = r["images_per_s"] / plain
        r["cpu_ratio_vs_plain"] = r["images_per_cpu_s"] / plain_cpu
    print(f"\n(ratios vs the mean of the two plain runs: {plain:.1f} img/s, {plain_cpu:.1f} img/CPU-s)")
    print(
        "| mode | workers | images/s (wall) | ratio | images per CPU-s | ratio | wall s incl. start-up | load "
        "avg 1/5/15 min |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['mode']} | {r['workers']} | {r['images_per_s']:.1f} | {r['ratio_vs_plain']:.2f} | "
            f"{r['images_per_cpu_s']:.1f} | "
            f"{r['cpu_ratio_vs_plain']:.2f} | {r['wall_s']:.0f} | {r['load']} |"
        )
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs ({_cpu_name()})",
        "load_avg_end": _load(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }
    print(f"{info['date_utc']} UTC, {info['machine']}, load avg at end {info['load_avg_end']}")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"args": vars(args) | {"func": None}, "info": info, "rows": rows}, indent=2)
        )
    return 0

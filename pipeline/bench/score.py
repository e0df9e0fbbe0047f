"""`patchrank bench score`: eager vs fast bare scoring throughput in the same run, and their score difference.

The same preprocessed slices (all kept slices of --data, preprocessing excluded from the clock) are scored
through `pipeline.scan_scoring.score_slices` (-> model.scoring.score_members) by:
  eager  the networks as loaded (NCHW), pixel maps computed: the scoring path before the fast path;
  fast   the networks prepared for inference (pipeline.inference: ONNX Runtime), no pixel maps: `patchrank score`, the
         service and the API without maps;
  fast_maps  the prepared networks with pixel maps: evaluation and the API with maps=True.
Variants are interleaved batch by batch (eager, fast, fast_maps on batch 1, then on batch 2, ...) so
that load from other processes on a shared machine affects all alike; each repetition covers every slice, each
variant reports the median of its repetitions, and the ratio fast / eager is the robust figure.
Score differences: the largest |eager - fast| over patch scores, slice
scores and scan scores (after the scan-level steps), in z units.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="eager vs fast bare scoring throughput and score difference", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (path)")
    p.add_argument("--data", nargs="+", required=True, help="scan files or folders")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per variant (default 3)")
    p.add_argument("--batch", type=int, default=32, help="slices per forward (default 32)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: every CPU of this process)")
    p.add_argument(
        "--max-slices", type=int, default=0, help="score only the middle N slices of each scan (default: all)"
    )
    p.add_argument("--json", dest="json_out", help="also write the results here")
    p.set_defaults(func=run)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _middle(prep, n: int):
    """The scan's middle n kept slices (all when n is 0), as its own scan."""
    if not n or n >= len(prep.images):
        return prep
    keep = slice((len(prep.images) - n) // 2, (len(prep.images) - n) // 2 + n)
    return replace(prep, images=prep.images[keep], foreground=prep.foreground[keep], slice_index=prep.slice_index[keep],
                   position=prep.position[keep], labels=None, lesion_voxels=None, area_fraction=None)  # fmt: skip


def _scan_scores(model, out, preps) -> list[float]:
    from patchrank.pipeline.scan_scoring import finish_scan

    scores, start = [], 0
    for p in preps:
        n = len(p.images)
        scores.append(finish_scan(out.image_scores[start : start + n], p, model.scoring).scan_score)
        start += n
    return scores


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from patchrank.pipeline.commands.enqueue import collect
    from patchrank.pipeline.data.preprocess import load_prepared
    from patchrank.pipeline.inference import load_for_inference, set_inference_threads
    from patchrank.pipeline.scan_scoring import score_slices

    threads = set_inference_threads(args.threads or None)
    files, _ = collect(args.data)
    if not files:
        raise ValueError("no scan files in --data")
    models = {"eager": load_for_inference(args.checkpoint, fast=False), "fast": load_for_inference(args.checkpoint)}
    models["fast_maps"] = models["fast"]
    maps = {"eager": True, "fast": False, "fast_maps": True}
    preps = [_middle(load_prepared(Path(f).resolve(), models["eager"].preprocess), args.max_slices) for f in files]
    images = np.concatenate([p.images for p in preps])
    fg = np.concatenate([p.foreground for p in preps])
    pos = np.concatenate([p.position for p in preps])
    n = len(images)
    print(
        f"bench score: {len(files)} scans, {n} slices of {images.shape[1:]}, batch {args.batch}, {threads} threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load {_load()}",
        flush=True,
    )
    outs, seconds = {}, {k: [] for k in models}
    for name, m in models.items():  # warm-up (first-call allocations), and the outputs compared below
        outs[name] = score_slices(m, images, fg, pos, args.batch, maps=maps[name])
    loads = [_load()]
    for rep in range(args.reps):  # interleaved batch by batch: every variant sees the same load
        took = dict.fromkeys(models, 0.0)
        for s in range(0, n, args.batch):
            b = slice(s, s + args.batch)
            for name, m in models.items():
                t0 = time.perf_counter()
                score_slices(m, images[b], fg[b], pos[b], args.batch, maps=maps[name])
                took[name] += time.perf_counter() - t0
        for name in models:
            seconds[name].append(took[name])
        loads.append(_load())
        rates = ", ".join(f"{k} {n / v[-1]:.1f}" for k, v in seconds.items())
        print(f"  rep {rep + 1}: {rates} slices/s; load {loads[-1]}", flush=True)
    rate = {k: n / statistics.median(v) for k, v in seconds.items()}
    eager = outs["eager"]
    scans = {k: _scan_scores(models[k], o, preps) for k, o in outs.items()}

    def diff(name: str) -> dict:
        o = outs[name]
        return {
            "patch": float((eager.patch_scores - o.patch_scores).abs().max()),
            "slice": float((eager.image_scores - o.image_scores).abs().max()),
            "scan": float(np.max(np.abs(np.subtract(scans["eager"], scans[name])))),
        }

    diffs = {k: diff(k) for k in outs if k != "eager"}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "model_version": models["eager"].model_version,
        "image_size": int(images.shape[-1]),
        "scans": len(files),
        "slices": n,
        "batch": args.batch,
        "threads": threads,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "reps": args.reps,
        "load_avg": loads,
        "eager_slices_per_s": rate["eager"],
        "fast_slices_per_s": rate["fast"],
        "fast_maps_slices_per_s": rate["fast_maps"],
        "speedup": rate["fast"] / rate["eager"],
        "max_abs_score_diff": max(diffs["fast"].values()),
        "score_diff": diffs,
        "seconds": seconds,
    }
    print(
        f"eager {rate['eager']:.1f} slices/s, fast {rate['fast']:.1f} ({result['speedup']:.2f}x), fast with maps "
        f"{rate['fast_maps']:.1f} slices/s; "
        f"max |eager - fast| score difference {result['max_abs_score_diff']:.2e} z; load {loads[0]} -> {loads[-1]}"
    )
    per_scan = n / len(files)
    print(f"fast: {rate['fast'] * 3600 / threads / per_scan:.0f} scans ({per_scan:.0f} slices each) per CPU-core-hour")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0

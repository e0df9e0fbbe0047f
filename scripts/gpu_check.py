"""GPU check: the CUDA paths against the CPU on the same machine, in one process.

    python scripts/gpu_check.py --out gpu_check.json [--threads 16] [--images 256]

1. Training: `fit_local` (what `patchrank train --workers 0 [--gpu]` runs) on the same
   synthetic slices on the CPU (float32, --threads torch threads) and on the GPU (bf16
   autocast), adversarial epochs then a critic epoch; images/s of the adversarial epochs
   (median of epochs 2..), and the GPU checkpoint must load on the CPU with its model_version.
2. Scoring: the GPU-trained checkpoint through `SliceScorer.score_chunks` (what the Serve
   scorer replica runs) on the CPU and on the GPU: slices/s per batch size, and how far the
   GPU's slice scores are from the CPU's (max |diff| relative to the score spread, Spearman).

Needs a CUDA device; exits 2 without one. Prints one JSON document and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time_scoring(scorer, chunk, repeats: int) -> float:
    """-> slices/s of scorer.score_chunks([chunk]) (one warm-up call, then the median of `repeats`)."""
    import statistics

    import torch

    scorer.score_chunks([chunk])
    times = []
    for _ in range(repeats):
        if scorer.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scorer.score_chunks([chunk])  # copies results back to host numpy, so the GPU work is finished
        times.append(time.perf_counter() - t0)
    return len(chunk) / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--threads", type=int, default=8, help="torch threads for the CPU side (default 8)")
    ap.add_argument("--images", type=int, default=256, help="synthetic training slices per epoch (default 256)")
    ap.add_argument(
        "--epochs", type=int, default=3, help="adversarial epochs per run; the first is warm-up (default 3)"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: run the 'cuda' side on the CPU too, tiny sizes (tests this script)",
    )
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.bench.train import _throughput, synthetic_slices
    from patchrank.pipeline.service.slice_scorer import SliceChunk, SliceScorer
    from patchrank.pipeline.settings import TrainConfig
    from patchrank.pipeline.training.local import fit_local

    gpu = "cpu" if args.smoke else "cuda"
    if gpu == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        epochs=args.epochs,
        critic_epochs=1,
        batch_size=16,
        max_val_slices=8,
        preprocess={"image_size": 32} if args.smoke else {},
    )
    size, ch = cfg.preprocess.image_size, cfg.preprocess.channels
    train, val = synthetic_slices(args.images, size, ch), synthetic_slices(64, size, ch, seed=1)
    res: dict = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpu == "cuda" else "none (--smoke)",
        "cpu_threads": args.threads,
        "image_size": size,
        "images_per_epoch": args.images,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="patchrank-gpu-check-") as tmp:
        ckpt = {}
        for dev in ("cpu", "cuda"):
            out = Path(tmp) / f"{dev}.pt"
            t0 = time.perf_counter()
            version = fit_local(train, val, cfg, out, show=False, gpu=dev == "cuda" and gpu == "cuda")
            rate, _ = _throughput(out.with_suffix(".curve.csv"))
            res[f"train_{dev}"] = {
                "images_per_s": round(rate, 1),
                "wall_s": round(time.perf_counter() - t0, 1),
                "model_version": version,
            }
            ckpt[dev] = out
            print(f"train {dev}: {rate:.1f} img/s", flush=True)
        res["train_speedup"] = round(res["train_cuda"]["images_per_s"] / res["train_cpu"]["images_per_s"], 2)
        on_cpu = load_checkpoint(ckpt["cuda"], map_location="cpu")
        res["gpu_checkpoint_loads_on_cpu"] = on_cpu.model_version == res["train_cuda"]["model_version"]

        scorers = {
            dev: SliceScorer(str(ckpt["cuda"]), device=gpu if dev == "cuda" else "cpu") for dev in ("cpu", "cuda")
        }
        test = synthetic_slices(256, size, ch, seed=2)
        rng = np.random.default_rng(0)
        imgs = test.images.copy()
        for i in range(0, len(imgs), 2):  # a bright blob in every other slice: scores with a real spread
            y, x = rng.integers(8, size - 8, 2)
            imgs[i, :, y - 6 : y + 6, x - 6 : x + 6] += 1.5
        full = SliceChunk(imgs, test.foreground, np.linspace(0.2, 0.8, len(imgs), dtype=np.float32))
        scores = {dev: np.concatenate([r.image_scores for r in s.score_chunks([full])]) for dev, s in scorers.items()}
        spread = float(np.ptp(scores["cpu"])) or 1.0
        res["score_agreement"] = {
            "max_abs_diff_over_spread": float(np.abs(scores["cuda"] - scores["cpu"]).max() / spread),
            "spearman": float(spearmanr(scores["cpu"], scores["cuda"]).statistic),
            "top10_overlap": len(set(np.argsort(-scores["cpu"])[:10]) & set(np.argsort(-scores["cuda"])[:10])),
        }
        rows = []
        for bs in (32, 128):
            chunk = SliceChunk(imgs[:bs], test.foreground[:bs], full.position[:bs])
            r = {dev: _time_scoring(s, chunk, repeats=5) for dev, s in scorers.items()}
            rows.append(
                {
                    "batch": bs,
                    "cpu_slices_per_s": round(r["cpu"], 1),
                    "cuda_slices_per_s": round(r["cuda"], 1),
                    "speedup": round(r["cuda"] / r["cpu"], 2),
                }
            )
            print(f"score batch {bs}: cpu {r['cpu']:.1f} cuda {r['cuda']:.1f} slices/s", flush=True)
        res["scoring"] = rows
    text = json.dumps(res, indent=2)
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

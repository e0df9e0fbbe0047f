"""Cost of the guided pixel map inside `model.scoring.score_images` (docs/service.md).

    .venv/bin/python scripts/bench_pixel_map.py --checkpoint CKPT [--data ../shared/data/brats2015]

Scores 32 slices of the first volume with the checkpoint's scoring configuration twice,
interleaved: the settings default map (box 7, closing 13, guided filter radius 6) and the
previous one (box 11, closing 13, no guided filter); prints best and median times and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a trained brain checkpoint (.pt)")
    ap.add_argument("--data", default="../shared/data/brats2015", help="a BraTS-style folder")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.model.scoring import score_images
    from patchrank.pipeline.data.datasets import load_record
    from patchrank.pipeline.data.discover import discover
    from patchrank.pipeline.settings import TrainConfig

    lm = load_checkpoint(args.checkpoint)
    prep = load_record(discover(args.data, modality="flair")[0], TrainConfig().preprocess)
    sel = np.linspace(20, len(prep.images) - 20, 32).astype(int)
    x, fg = torch.from_numpy(prep.images[sel]), torch.from_numpy(prep.foreground[sel])
    pos = torch.from_numpy(prep.position[sel]).float()
    maps = {
        "guided": replace(lm.scoring, pixel_smooth=7, pixel_close=13, pixel_guide=6, pixel_guide_eps=0.003),
        "previous": replace(lm.scoring, pixel_smooth=11, pixel_close=13, pixel_guide=0),
    }
    times: dict[str, list[float]] = {k: [] for k in maps}
    for rep in range(args.reps):
        for name in list(maps) if rep % 2 else list(maps)[::-1]:
            t0 = time.perf_counter()
            score_images(lm.recon, lm.disc, x, cfg=maps[name], stats=lm.stats, foreground=fg, position=pos)
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        print(f"{name:>9}: best {min(t):.3f} s, median {statistics.median(t):.3f} s")
    g, p = times["guided"], times["previous"]
    print(
        f"ratio guided / previous: best x{min(g) / min(p):.3f}, median "
        f"x{statistics.median(g) / statistics.median(p):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

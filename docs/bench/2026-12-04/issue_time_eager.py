"""Throwaway benchmark (2026-12-04): the eager path as issue 21 measured it (eager networks, one forward over all
B*M masked copies, pixel maps) vs the fast path (ONNX Runtime, per-mask forwards, no maps), batch by batch, in one
process. Run from the repository root: .venv/bin/python docs/bench/2026-12-04/issue_time_eager.py THREADS
(needs /work/ck/brain.pt and ../shared/data; edit the two paths for yours)."""

import statistics
import sys
import time

import torch

import patchrank.model.method as method
from patchrank.model.masks import complementary_masks
from patchrank.model.method import hideable
from patchrank.model.scoring import score_images
from patchrank.pipeline.data.preprocess import load_prepared
from patchrank.pipeline.inference import load_for_inference

NEW = method.masked_composite


def OLD(recon, x, cfg):
    b, c, h, w = x.shape
    masks = complementary_masks(h, w, cfg.cell(w), cfg.grid_period).to(x)
    m = masks.shape[0]
    hidden = masks[None] * hideable(x)[:, None]
    xr = x.repeat_interleave(m, 0)
    rec = recon(xr, hidden.reshape(b * m, 1, h, w)).float().view(b, m, c, h, w)
    return (rec * hidden).sum(1) + (1.0 - hidden.sum(1)) * x.float()


threads = int(sys.argv[1])
torch.set_num_threads(threads)
ck = "/work/ck/brain.pt"
eager = load_for_inference(ck, fast=False, threads=threads)
fast = load_for_inference(ck, fast=True, threads=threads)
prep = load_prepared("/work/shared/data/brats2015/BraTS15_pat0004/BraTS15_pat0004_flair.nii.gz", eager.preprocess)
x = torch.from_numpy(prep.images[:64])
fg = torch.from_numpy(prep.foreground[:64])
pos = torch.from_numpy(prep.position[:64])


def run(m, maps, comp, sl):
    method.masked_composite = comp
    return score_images(
        m.recon, m.disc, x[sl], cfg=m.scoring, stats=m.stats, foreground=fg[sl], position=pos[sl], maps=maps
    )


res = {"old_eager": [], "fast": []}
run(eager, True, OLD, slice(0, 32))
run(fast, False, NEW, slice(0, 32))
for rep in range(3):
    tt = {"old_eager": 0.0, "fast": 0.0}
    for s in (slice(0, 32), slice(32, 64)):
        t = time.perf_counter()
        a = run(eager, True, OLD, s)
        tt["old_eager"] += time.perf_counter() - t
        t = time.perf_counter()
        b = run(fast, False, NEW, s)
        tt["fast"] += time.perf_counter() - t
        d = float((a.image_scores - b.image_scores).abs().max())
    for k in tt:
        res[k].append(64 / tt[k])
    print(
        f"rep {rep + 1}: old eager {res['old_eager'][-1]:.1f}, fast {res['fast'][-1]:.1f} slices/s; "
        f"slice score diff {d:.2e}",
        flush=True,
    )
e, f = statistics.median(res["old_eager"]), statistics.median(res["fast"])
print(f"{threads} threads: issue-time eager path {e:.1f}, fast {f:.1f} slices/s: {f / e:.2f}x")

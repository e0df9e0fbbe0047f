"""Probe (pass 24): does averaging PatchRank's dermoscopy image score over the 8 flips / quarter turns of the test image
(test-time views) steady it across training seeds? Outer folds of the benchmark (fold seed 0), one training per seed,
the preset; writes OUT/views_s<seed>_f<fold>.json (test names, labels, the 8 views' scores: identity, 3 quarter turns,
then the same after a left-right flip) and prints AUROC of the identity, of 2 views (identity + left-right flip), 4
(the flips) and 8. Run from the repository root, e.g. two processes at once (~50 s a fold on one core):
  OMP_NUM_THREADS=1 .venv/bin/python docs/quality/skin/tta/probe.py 0,1,2 OUT
  OMP_NUM_THREADS=1 .venv/bin/python docs/quality/skin/tta/probe.py 3,4 OUT
Trained models are kept in OUT/models_s<seed> (as docs/quality/skin/ensemble/probe.py does: pass its OUT to reuse).
Then `probe.py summary OUT`: each subset's mean AUROC over every (seed, fold) and its paired difference to 1 view."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from patchrank.pipeline.data.discover import config_for, discover
from patchrank.pipeline.evaluation.folds import build_fold, fit_method, make_folds
from patchrank.pipeline.evaluation.metrics import auroc

SUBSETS = {"1 view": [0], "2 views (lr flip)": [0, 4], "4 views (flips)": [0, 2, 4, 6], "8 views": list(range(8))}


def view(a: np.ndarray, v: int) -> np.ndarray:
    """(N, C, H, W) -> dihedral view v: v % 4 quarter turns, then a left-right flip when v >= 4."""
    a = np.rot90(a, v % 4, axes=(-2, -1))
    return np.ascontiguousarray(a[..., ::-1] if v >= 4 else a)


def summary(out: Path) -> None:
    runs = [json.loads(f.read_text()) for f in sorted(out.glob("views_s*_f*.json"))]
    base = None
    for name, views in SUBSETS.items():
        a = np.array([auroc(np.array(r["labels"]), np.array(r["scores"])[:, views].mean(1)) for r in runs])
        base = a if base is None else base
        d = a - base
        print(
            f"{name:>18}: mean AUROC {a.mean():.4f} over {a.size} folds; minus 1 view {d.mean():+.4f} "
            f"± {d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else 0:.4f} (up {(d > 0).sum()} / down {(d < 0).sum()})"
        )


def main() -> None:
    if sys.argv[1] == "summary":
        return summary(Path(sys.argv[2]))
    torch.set_num_threads(1)
    seeds = [int(s) for s in sys.argv[1].split(",")]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    records = discover("../shared/data/isic2016_train")
    split = make_folds(records, 3, 0)
    for s in seeds:
        cfg, _ = config_for(records, None, {"seed": s})
        for i, test in enumerate(split):
            f = out / f"views_s{s}_f{i}.json"
            if f.exists():
                continue
            t0 = time.time()
            fold = build_fold(records, test, cfg, i)
            (out / f"models_s{s}").mkdir(exist_ok=True)
            scorer = fit_method("patchrank", fold, cfg, out / f"models_s{s}", reuse=True)
            names, labels, scores = [], [], []
            for t in fold.test:
                p = t.prep
                names.append(t.record.subject)
                labels.append(int(t.labels[0]))
                one = [scorer.score(view(p.images, v), view(p.foreground, v), p.position) for v in range(8)]
                scores.append([float(scorer.finish_scan(r, p).scores[0]) for r in one])
            f.write_text(json.dumps({"names": names, "labels": labels, "scores": scores}))
            sc, y = np.array(scores), np.array(labels)
            print(
                f"seed {s} fold {i}: "
                + ", ".join(f"{k} {auroc(y, sc[:, v].mean(1)):.4f}" for k, v in SUBSETS.items())
                + f" ({time.time() - t0:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Probe (2026-12-04): PatchRank's dermoscopy image scores on the benchmark's 3 folds (fold seed 0), one training per
training seed, with the preset or the preset under a JSON override; writes OUT/scores_s<seed>_f<fold>.json (the fold's
test image names, scores, labels). Run from the repository root, e.g. two processes at once:
  OMP_NUM_THREADS=1 .venv/bin/python docs/quality/skin/ensemble/probe.py 0,1,2 OUT [OVERRIDE_JSON]
  OMP_NUM_THREADS=1 .venv/bin/python docs/quality/skin/ensemble/probe.py 3,4 OUT [OVERRIDE_JSON]
(~33 s a training on one core) and then docs/quality/skin/ensemble/ensemble.py OUT.
Pass 18 ran before hair removal joined the preset: its scores come back with '{"preprocess": {"image_hair": false}}'."""

import json
import sys
import time
from pathlib import Path

import torch

from patchrank.pipeline.data.discover import config_for, discover
from patchrank.pipeline.evaluation.folds import build_fold, fit_method, make_folds
from patchrank.pipeline.evaluation.harness import evaluate_scorer
from patchrank.pipeline.evaluation.metrics import auroc
from patchrank.pipeline.settings import merge

torch.set_num_threads(1)
seeds = [int(s) for s in sys.argv[1].split(",")]
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
records = discover("../shared/data/isic2016_train")
split = make_folds(records, 3, 0)
for s in seeds:
    cfg, preset = config_for(records, None, merge(over, {"seed": s}))
    for i, test in enumerate(split):
        f = out / f"scores_s{s}_f{i}.json"
        if f.exists():
            continue
        t0 = time.time()
        fold = build_fold(records, test, cfg, i)
        (out / f"models_s{s}").mkdir(exist_ok=True)
        scorer = fit_method("patchrank", fold, cfg, out / f"models_s{s}", reuse=True)
        d = evaluate_scorer(scorer, fold.test, seed=0)
        f.write_text(
            json.dumps(
                {"names": list(d.names), "scores": [float(x) for x in d.scores], "labels": [int(x) for x in d.labels]}
            )
        )
        print(f"seed {s} fold {i}: AUROC {auroc(d.labels, d.scores):.4f} ({time.time() - t0:.0f}s)", flush=True)

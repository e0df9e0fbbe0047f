"""An ensemble's `bench quality` rows against its first member alone (the training `--seed S` gives by itself),
paired on the same folds: the ensemble's numbers are read from quality.json, the member is scored here by the
same harness on the same test scans.

usage, from the repository root, after `bench quality ... --models MODELS --out RUN` runs:
  .venv/bin/python docs/quality/ensemble_pairs.py --data DATA --out FILE.json RUN:MODELS [RUN:MODELS ...]
Prints each fold's pair and, per metric, the mean difference ± its standard error over all folds."""

import argparse
import json
from pathlib import Path

import numpy as np

from patchrank.model.checkpoint import load_checkpoint
from patchrank.pipeline.data.discover import discover
from patchrank.pipeline.data.pose import with_target
from patchrank.pipeline.evaluation.folds import METRICS, build_fold
from patchrank.pipeline.evaluation.harness import PatchRankScorer, evaluate_scorer, report
from patchrank.pipeline.settings import TrainConfig

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("runs", nargs="+", help="RUN:MODELS, RUN the folder of quality.json, MODELS its --models folder")
args = ap.parse_args()
records = discover(args.data)
pairs = []
for spec in args.runs:
    run, models = (Path(p) for p in spec.split(":"))
    res = json.loads((run / "quality.json").read_text())
    cfg = TrainConfig(**res["config"])
    ens = {r["fold"]: r for r in res["runs"] if r["method"] == "patchrank"}
    for i, test in enumerate(res["folds"]):
        if i not in ens:
            continue
        fcfg = with_target(cfg, [r for r in records if r.subject not in test and r.label in (None, 0)])  # as bench does
        fold = build_fold(records, test, fcfg, i)
        member = load_checkpoint(models / f"patchrank_fold{i}.pt.members" / "member0.pt")
        one = report(evaluate_scorer(PatchRankScorer(member), fold.test, seed=res["fold_seed"]))
        pair = {"run": str(run), "fold": i, **{m: [one[m], ens[i][m]] for m in METRICS if one.get(m) is not None}}
        pairs.append(pair)
        print(f"{run} fold {i + 1}: " + "  ".join(f"{m} {a:.4f} -> {b:.4f}" for m, (a, b) in list(pair.items())[2:]))
summary = {}
for m in METRICS:
    got = [p[m] for p in pairs if m in p]
    if not got:
        continue
    a, b = np.array(got).T
    d = b - a
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    up, down = int((d > 0).sum()), int((d < 0).sum())
    summary[m] = f"{a.mean():.4f} -> {b.mean():.4f}: {d.mean():+.4f} ± {se:.4f}, {up} up / {down} down"
    print(f"{len(d)} folds, {m}: one training {summary[m]}")
Path(args.out).write_text(json.dumps({"pairs": pairs, "summary": summary}, indent=1))

"""The skin table's PatchRank row (an ensemble of 3 trainings since pass 27) against one training, paired on the
same folds: each fold's ensemble is scored as `bench quality` scored it (quality.json), its first member (the
training `--seed S` alone gives) is scored here by the same harness, on the same test images.

usage, from the repository root, after the table's runs with `--models MODELS/models_sS` for every fold seed S:
  .venv/bin/python docs/quality/skin/ensemble3/single.py MODELS [SEEDS, default 0,1,2,3,4]
Writes docs/quality/skin/ensemble3/single.json and prints the per-fold pairs and their mean difference."""

import json
import sys
from pathlib import Path

import numpy as np

from patchrank.model.checkpoint import load_checkpoint
from patchrank.pipeline.data.discover import discover
from patchrank.pipeline.evaluation.folds import build_fold
from patchrank.pipeline.evaluation.harness import PatchRankScorer, evaluate_scorer, report
from patchrank.pipeline.settings import TrainConfig

HERE = Path("docs/quality/skin/ensemble3")
models, seeds = Path(sys.argv[1]), [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3,4").split(",")]
records = discover("../shared/data/isic2016_train")
pairs = []
for s in seeds:
    res = json.loads((HERE / f"seed{s}" / "quality.json").read_text())
    cfg = TrainConfig(**res["config"])
    ens = {r["fold"]: r["image_auroc"] for r in res["runs"] if r["method"] == "patchrank"}
    for i, test in enumerate(res["folds"]):
        fold = build_fold(records, test, cfg, i)
        member = load_checkpoint(models / f"models_s{s}" / f"patchrank_fold{i}.pt.members" / "member0.pt")
        one = report(evaluate_scorer(PatchRankScorer(member), fold.test, seed=res["fold_seed"]))["image_auroc"]
        pairs.append({"fold_seed": s, "fold": i, "one_training": one, "ensemble": ens[i]})
        print(f"fold seed {s} fold {i + 1}: one training {one:.4f}  ensemble of 3 {ens[i]:.4f}  ({ens[i] - one:+.4f})")
d = np.array([p["ensemble"] - p["one_training"] for p in pairs])
line = (
    f"{len(d)} folds: one training {np.mean([p['one_training'] for p in pairs]):.4f}, ensemble "
    f"{np.mean([p['ensemble'] for p in pairs]):.4f}, difference {d.mean():+.4f} ± "
    f"{d.std(ddof=1) / np.sqrt(len(d)):.4f} (standard error), {int((d > 0).sum())} up / {int((d < 0).sum())} down"
)
print(line)
(HERE / "single.json").write_text(json.dumps({"pairs": pairs, "summary": line}, indent=1))

"""Pass 22 (2026-12-04): the dermoscopy preset without ranking vs the same preset ranked as before (ranked.json: loss
k 16 / decay 0.95 / floor 1, score top 16 equal-weight), paired on the outer folds, same machine:
- over fold seeds 0-4 (training seed = fold seed): docs/quality/skin/quality.json, docs/quality/skin/seeds/seed1-4 and
  docs/quality/skin/pass22/ranked/seed0-4 (`patchrank bench quality ... --config docs/quality/skin/pass22/ranked.json
  --methods patchrank`);
- over training seeds 0-4 at fold seed 0: docs/quality/skin/pass22/scores/{preset,ranked}
  (`docs/quality/skin/ensemble/probe.py 0,1,2,3,4 OUT [ranked.json's text]`);
- both, each (fold seed, training seed, fold) once (fold seed 0 / training seed 0 is in both).
From the repository root: .venv/bin/python docs/quality/skin/pass22/compare.py"""

import json
from pathlib import Path

import numpy as np

from patchrank.pipeline.evaluation.metrics import auroc

P22 = Path("docs/quality/skin/pass22")


def table(path: str, s: int) -> dict[tuple, float]:
    runs = json.load(open(path))["runs"]
    return {(s, s, r["fold"]): r["image_auroc"] for r in runs if r["method"] == "patchrank"}


def probes(folder: Path) -> dict[tuple, float]:
    out = {}
    for t in range(5):
        for f in range(3):
            d = json.loads((folder / f"scores_s{t}_f{f}.json").read_text())
            out[(0, t, f)] = auroc(np.array(d["labels"]), np.array(d["scores"]))
    return out


SKIN = "docs/quality/skin"
preset_paths = [f"{SKIN}/quality.json"] + [f"{SKIN}/seeds/seed{s}/quality.json" for s in range(1, 5)]
fold_seeds = [
    {k: v for s, p in enumerate(preset_paths) for k, v in table(p, s).items()},
    {k: v for s in range(5) for k, v in table(str(P22 / f"ranked/seed{s}/quality.json"), s).items()},
]
train_seeds = [probes(P22 / "scores/preset"), probes(P22 / "scores/ranked")]
both = [{**fold_seeds[i], **train_seeds[i]} for i in range(2)]
for name, (a, b) in {"fold seeds 0-4": fold_seeds, "training seeds 0-4": train_seeds, "both": both}.items():
    keys = sorted(a)
    d = np.array([a[k] - b[k] for k in keys])
    print(
        f"{name}: preset (no ranking) {np.mean([a[k] for k in keys]):.4f}, ranked {np.mean([b[k] for k in keys]):.4f}; "
        f"paired {d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f} (se), up {int((d > 0).sum())} / down "
        f"{int((d < 0).sum())} of {len(d)}"
    )

"""Mean AUROC / AUPRC per method over the skin table's five fold seeds, each the mean of its 3 folds.
From the repository root:
  .venv/bin/python docs/quality/skin/seeds/mean.py      one training (seed 0 in docs/quality/skin, 1-4 here)
  .venv/bin/python docs/quality/skin/seeds/mean.py DIR  DIR/seed0 .. DIR/seed4 (docs/quality/skin/ensemble3)"""

import json
import sys

import numpy as np

if len(sys.argv) > 1:
    runs = [json.load(open(f"{sys.argv[1]}/seed{s}/quality.json")) for s in range(5)]
else:
    runs = [json.load(open("docs/quality/skin/quality.json"))]
    runs += [json.load(open(f"docs/quality/skin/seeds/seed{s}/quality.json")) for s in range(1, 5)]
for method in runs[0]["summary"]:
    auroc = [r["summary"][method]["image_auroc"][0] for r in runs]
    auprc = [r["summary"][method]["image_auprc"][0] for r in runs]
    per_seed = " ".join(f"{a:.3f}" for a in auroc)
    print(f"{method:>16}: AUROC {np.mean(auroc):.4f} (per seed {per_seed}), AUPRC {np.mean(auprc):.4f}")

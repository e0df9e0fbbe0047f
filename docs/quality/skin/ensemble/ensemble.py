"""Single trainings vs averaged image scores over 2, 3 and 5 training seeds (every combination), per fold AUROC;
with fewer than 5 seeds in the folder, the single trainings and their mean only."""

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from patchrank.pipeline.evaluation.metrics import auroc

d = sys.argv[1] if len(sys.argv) > 1 else "docs/quality/skin/ensemble/scores"
seeds = [s for s in range(5) if all(Path(f"{d}/scores_s{s}_f{f}.json").exists() for f in range(3))]
S = {}
for s in seeds:
    for f in range(3):
        S[s, f] = json.load(open(f"{d}/scores_s{s}_f{f}.json"))


def fold_auc(members, f):
    names = S[members[0], f]["names"]
    y = np.array(S[members[0], f]["labels"])
    z = np.mean([np.array(S[m, f]["scores"]) for m in members], 0)
    for m in members:
        assert S[m, f]["names"] == names
    return auroc(y, z)


for s in seeds:
    a = [fold_auc([s], f) for f in range(3)]
    print("seed", s, np.round(a, 4), round(np.mean(a), 4))
single = np.mean([fold_auc([s], f) for s in seeds for f in range(3)])
print(f"{len(seeds)} seeds: mean of single trainings {single:.4f}")
for k in (2, 3, 5) if len(seeds) == 5 else ():
    means = []
    for c in itertools.combinations(seeds, k):
        a = [fold_auc(list(c), f) for f in range(3)]
        means.append(np.mean(a))
        if k == 5 or c == (0, 1, 2):
            print("ens", c, np.round(a, 4), round(np.mean(a), 4))
    print(f"k={k}: mean over {len(means)} combos {np.mean(means):.4f} (min {min(means):.4f}, max {max(means):.4f})")

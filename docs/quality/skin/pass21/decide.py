"""Pass 21: paired inner-fold AUROC differences over training seeds 0-2 (seed 0 from the nested run, 1-2 from
inner_seeds.py, in docs/quality/skin/pass21/inner/): hair removal vs none, and the hair preset vs one term fewer;
then the ranking (inner_seeds.py SEED OUT ranking, seeds 0-2: inner/s<seed>_ranking.json).
Rule, set before the seed 1-2 runs (but after the outer-fold probes of pass 21, docs/experiments.md): the simpler
setting wins unless it is worse by more than one standard error."""

import json

import numpy as np

P = "docs/quality/skin/pass21"
nested = {o["fold"]: o["inner_auroc"] for o in json.load(open(f"{P}/nested.json"))["outer"]}
runs = {0: nested}
for s in (1, 2):
    runs[s] = {int(k): v for k, v in json.load(open(f"{P}/inner/s{s}_hair.json")).items()}
    for k, v in json.load(open(f"{P}/inner/s{s}_preset.json")).items():
        runs[s][int(k)].update(v)


def paired(a: str, b: str) -> None:
    d = np.concatenate([np.subtract(runs[s][f][a], runs[s][f][b]) for s in runs for f in range(3)])
    se = d.std(ddof=1) / np.sqrt(len(d))
    up, down = (d > 0).sum(), (d < 0).sum()
    print(f"{a} - {b}: {len(d)} inner folds x seeds, mean {d.mean():+.4f}, se {se:.4f}, up {up}, down {down}")


paired("hair+preset", "preset")
paired("hair+no_appearance", "hair+preset")
paired("hair+no_discriminator+preset", "hair+preset")
for s in runs:
    means = {n: [round(float(np.mean(runs[s][f][n])), 4) for f in range(3)] for n in
             ("preset", "hair+preset", "hair+no_appearance", "hair+no_discriminator+preset")}  # fmt: skip
    print(f"seed {s} inner means per outer fold: {means}")


rank = {s: {int(k): v for k, v in json.load(open(f"{P}/inner/s{s}_ranking.json")).items()} for s in (0, 1, 2)}
for alt in ("hair+no_ranking", "hair+score_no_ranking"):
    d = np.concatenate([np.subtract(rank[s][f][alt], rank[s][f]["hair+preset"]) for s in rank for f in range(3)])
    se = d.std(ddof=1) / np.sqrt(len(d))
    up, down = (d > 0).sum(), (d < 0).sum()
    print(f"{alt} - hair+preset: {len(d)} inner folds x seeds, mean {d.mean():+.4f}, se {se:.4f}, up {up}, down {down}")

"""Inner-fold test (pass 26): is the average of 3 trainings' image scores better than one training, inside the nested
folds? For each outer fold of the benchmark (fold seed 0), its inner folds (`nested.inner_splits`, the split
`bench quality --nested 3` uses) are trained with training seeds 0-4 (the preset), and every test image's score is
kept: OUT/inner_o<outer>_i<inner>_s<seed>.json. Then `inner.py summary OUT` pairs, for k = 0, 1, 2, one training (seed
k) with the mean of seeds k, k+1, k+2 on each inner fold (27 pairs) and applies `nested.choose`'s rule: the single
training (fewer components) wins unless it is more than one standard error below. Outer-fold numbers are pass 22's.
  OMP_NUM_THREADS=1 .venv/bin/python docs/quality/skin/ensemble/inner.py 0,1,2 OUT    (and 3,4 OUT, side by side)
`inner.py outer DIR` makes the same pairs on the outer folds from pass 24's scores (DIR: docs/quality/skin/tta/scores,
the identity view), a check after the decision.
"""

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from patchrank.pipeline.data.discover import config_for, discover
from patchrank.pipeline.evaluation.folds import build_fold, fit_method, make_folds
from patchrank.pipeline.evaluation.harness import evaluate_scorer
from patchrank.pipeline.evaluation.metrics import auroc
from patchrank.pipeline.evaluation.nested import choose, inner_seed, inner_splits


def run(seeds: list[int], out: Path) -> None:
    torch.set_num_threads(1)
    records = discover("../shared/data/isic2016_train")
    for o, outer_test in enumerate(make_folds(records, 3, 0)):
        outer_train = [r for r in records if r.subject not in set(outer_test)]
        splits = inner_splits(records, outer_test, 3, inner_seed(0, o))
        for s in seeds:
            cfg, _ = config_for(records, None, {"seed": s})
            for j, test in enumerate(splits):
                f = out / f"inner_o{o}_i{j}_s{s}.json"
                if f.exists():
                    continue
                t0 = time.time()
                fold = build_fold(outer_train, test, cfg, j)
                models = out / f"models_o{o}_s{s}"
                models.mkdir(parents=True, exist_ok=True)
                d = evaluate_scorer(fit_method("patchrank", fold, cfg, models, reuse=True), fold.test, seed=0)
                f.write_text(
                    json.dumps({"names": list(d.names), "scores": d.scores.tolist(), "labels": d.labels.tolist()})
                )
                print(f"outer {o} inner {j} seed {s}: AUROC {auroc(d.labels, d.scores):.4f} ({time.time() - t0:.0f}s)")


def summary(out: Path) -> None:
    def load(o, j, s):
        return json.loads((out / f"inner_o{o}_i{j}_s{s}.json").read_text())

    single, ens = [], []
    for k in range(3):
        for o in range(3):
            for j in range(3):
                runs = [load(o, j, s) for s in (k, k + 1, k + 2)]
                assert all(r["names"] == runs[0]["names"] for r in runs)
                y = np.array(runs[0]["labels"])
                single.append(auroc(y, np.array(runs[0]["scores"])))
                ens.append(auroc(y, np.mean([r["scores"] for r in runs], 0)))
    d = np.array(ens) - np.array(single)
    print(
        f"inner AUROC over {d.size} pairs (3 outer x 3 inner folds x first seed 0-2): "
        f"one training {np.mean(single):.4f}, "
        f"mean of 3 {np.mean(ens):.4f}; difference {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(d.size):.4f} "
        f"(up {(d > 0).sum()} / down {(d < 0).sum()})"
    )
    for o in range(3):
        part = d.reshape(3, 3, 3)[:, o].ravel()
        print(f"  outer fold {o + 1}: {part.mean():+.4f} over its 9 pairs")
    print(
        "nested.choose picks:",
        choose({"one training": single, "mean of 3 trainings": ens}, {"one training": 0, "mean of 3 trainings": 1}),
    )


def outer(views: Path) -> None:
    runs = {(s, f): json.loads((views / f"views_s{s}_f{f}.json").read_text()) for s in range(5) for f in range(3)}
    single, ens = [], []
    for k in range(3):
        for f in range(3):
            y = np.array(runs[k, f]["labels"])
            scores = [np.array(runs[s, f]["scores"])[:, 0] for s in (k, k + 1, k + 2)]
            single.append(auroc(y, scores[0]))
            ens.append(auroc(y, np.mean(scores, 0)))
    d = np.array(ens) - np.array(single)
    print(
        f"outer AUROC over {d.size} pairs (3 folds x first seed 0-2): one training {np.mean(single):.4f}, mean of 3 "
        f"{np.mean(ens):.4f}; difference {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(d.size):.4f} "
        f"(up {(d > 0).sum()} / down {(d < 0).sum()}); per ensemble (seeds k..k+2): "
        + " / ".join(f"{np.mean(ens[3 * k : 3 * k + 3]):.4f}" for k in range(3))
    )
    every = []
    for trio in itertools.combinations(range(5), 3):
        per_fold = []
        for f in range(3):
            y = np.array(runs[trio[0], f]["labels"])
            per_fold.append(auroc(y, np.mean([np.array(runs[s, f]["scores"])[:, 0] for s in trio], 0)))
        every.append(float(np.mean(per_fold)))
    print(
        f"every 3 of seeds 0-4 ({len(every)}): mean {np.mean(every):.4f}, {min(every):.4f}-{max(every):.4f}, "
        f"{sum(e >= 0.78 for e in every)} at or above 0.78"
    )


if __name__ == "__main__":
    if sys.argv[1] == "summary":
        summary(Path(sys.argv[2]))
    elif sys.argv[1] == "outer":
        outer(Path(sys.argv[2]))
    else:
        run([int(s) for s in sys.argv[1].split(",")], Path(sys.argv[2]))

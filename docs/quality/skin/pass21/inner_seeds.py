"""Pass 21 (2026-12-04): inner folds only (the outer test images never seen) at one training seed: the dermoscopy
preset (hair removal on) with and without appearance evidence / discriminator training; with `nohair` the preset
without hair removal; with `ranking` the preset, the no-ranking ablation and the preset scored without ranking.
Writes OUT/inner.json (outer fold -> candidate -> AUROC per inner fold). From the repository root:
  OMP_NUM_THREADS=1 .venv/bin/python docs/quality/skin/pass21/inner_seeds.py SEED OUT [nohair|ranking]
(~5 min a seed and candidate set on one core), then docs/quality/skin/pass21/decide.py."""

import json
import sys
from pathlib import Path

import torch

from patchrank.pipeline.data.discover import config_for, discover
from patchrank.pipeline.evaluation.folds import ABLATIONS, NO_RANK, make_folds
from patchrank.pipeline.evaluation.nested import Candidate, select

torch.set_num_threads(1)
seed, out = int(sys.argv[1]), Path(sys.argv[2])
(out / "models").mkdir(parents=True, exist_ok=True)
records = discover("../shared/data/isic2016_train")
base, _ = config_for(records, None, {"seed": seed})
if sys.argv[3:] == ["nohair"]:
    cands = [Candidate("preset", {"preprocess": {"image_hair": False}})]
elif sys.argv[3:] == ["ranking"]:
    cands = [
        Candidate("hair+preset", {}),
        Candidate("hair+no_ranking", ABLATIONS["no_ranking"]),
        Candidate("hair+score_no_ranking", {"scoring": {"rank": NO_RANK}}),
    ]
else:
    cands = [
        Candidate("hair+preset", {}),
        Candidate("hair+no_appearance", {"scoring": {"appearance_weight": 0.0}}),
        Candidate("hair+no_discriminator+preset", {"loss": {"use_discriminator": False}}),
    ]
res = {}
for i, test in enumerate(make_folds(records, 3, 0)):
    kw = dict(index=i, inner_k=3, fold_seed=0, tolerance=0.01, workdir=out / "models", gpu=False)
    _, res[i], _ = select(records, test, base, cands, **kw, log=lambda s: print(s, flush=True))
    (out / "inner.json").write_text(json.dumps(res, indent=1))

"""Nested cross-validation: inner folds choose PatchRank's settings, outer folds report.

Outer folds are `folds.make_folds` of all records (the plain benchmark's folds, same seed). For outer
fold i, its training subjects (every label) are dealt into inner folds (`inner_splits`, stratified,
seed derived from the fold seed and i); each inner fold trains on the normal images of its other
inner folds and is tested on its own subjects, so the outer test subjects never reach selection.
On each inner fold every distinct training of the candidates is trained once; a candidate that
differs only in scoring settings refits its statistics on that model (`folds._rescored`) instead of
training again. With several training seeds every inner fold is trained once per seed. `choose`
picks the candidate by mean inner AUROC, preferring fewer components where they are level with the
best (paired over inner folds x seeds, within one standard error); the choice is trained on the
whole outer training set and scored on the outer test fold. The report holds only outer-fold
numbers, with each fold's choice and inner table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchrank.model.losses import UNIFORM_RANK
from patchrank.pipeline.data.datasets import DatasetError, Record
from patchrank.pipeline.evaluation.folds import (
    ABLATIONS,
    _rescored,
    _training_key,
    build_fold,
    fit_method,
    make_folds,
    summarise,
    train_fold,
)
from patchrank.pipeline.evaluation.harness import evaluate_scorer, report
from patchrank.pipeline.settings import TrainConfig, merge


@dataclass(frozen=True)
class Candidate:
    name: str
    over: dict  # TrainConfig overrides layered over the run's configuration (preset + --config)


def _product(trainings: dict[str, dict], scorings: dict[str, dict]) -> list[Candidate]:
    out = []
    for tname, t in trainings.items():
        for sname, s in scorings.items():
            name = sname if tname == "preset" else f"{tname}+{sname}"
            out.append(Candidate(name, merge(t, {"scoring": s}) if s else t))
    return out


_FEWER_TERMS = {
    "no_appearance": {"appearance_weight": 0.0},
    "no_shape": {"shape_weight": 0.0},
    "features_only": {"appearance_weight": 0.0, "shape_weight": 0.0},
}
# Dermoscopy: three trainings (the preset's; no discriminator, whose evidence the preset's score leaves out; ranked:
# the training loss and the image score rank-weighted as before pass 22) x the preset's scoring and the preset with
# fewer evidence terms. Preprocessing stays the preset's (64 px, hairs painted out, dark lesion). Dropped after
# measuring (docs/experiments.md, passes 11-12): the plain ScoringConfig defaults and the residual averaged over 4
# mirrored views (within 0.002 of the preset inside 5 inner folds at 4x the reconstruction cost).
_SCORINGS = {"preset": {}, **_FEWER_TERMS}
_RANKED = {"loss": {"rank": {"k": 16, "decay": 0.95, "floor": 1.0}}, "scoring": {"rank": {"k": 16, "decay": 1.0}}}
DERMOSCOPY = _product(
    {"preset": {}, "no_discriminator": {"loss": {"use_discriminator": False}}, "ranked": _RANKED}, _SCORINGS
)
CANDIDATES = {"dermoscopy": DERMOSCOPY}


def complexity(cfg: TrainConfig) -> int:
    """Components switched on: each weighted evidence term and through-plane context of the score, plus one
    each for a ranked (non-uniform) image score, a ranked training loss and a trained discriminator."""
    s = cfg.scoring
    weights = (s.disc_weight, s.intensity_weight, s.symmetry_weight, s.appearance_weight, s.feature_weight,
               s.shape_weight, s.context_radius)  # fmt: skip
    ranked = int(s.rank != UNIFORM_RANK) + int(cfg.loss.rank != UNIFORM_RANK)
    return sum(w > 0 for w in weights) + ranked + int(cfg.loss.use_discriminator)


def choose(inner: dict[str, list[float]], simple: dict[str, int]) -> str:
    """inner: candidate -> its inner AUROCs, paired across candidates (same inner folds and training
    seeds, same order); simple: candidate -> complexity. The best mean wins unless candidates level
    with it have fewer components: then the best of the fewest. Level: the mean paired difference to
    the best is no more than one standard error below zero (with a single pair, only an equal one). Pairs
    of different seeds on one inner fold share its test images, so the standard error is a lower bound:
    the rule leans towards the best candidate, not the simpler one."""
    if len({len(v) for v in inner.values()}) != 1:
        raise ValueError("choose needs the same number of paired inner results for every candidate")
    means = {n: float(np.mean(v)) for n, v in inner.items()}
    order = {n: (means[n], -i) for i, n in enumerate(inner)}  # best mean first; ties: the earlier candidate
    best = np.array(inner[max(inner, key=order.get)])

    def level(n: str) -> bool:
        d = np.array(inner[n]) - best
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        return bool(d.mean() >= -se)

    near = [n for n in means if level(n)]
    fewest = min(simple[n] for n in near)
    return max((n for n in near if simple[n] == fewest), key=order.get)


def inner_splits(records: list[Record], outer_test: list[str], k: int, seed: int) -> list[list[str]]:
    """The outer fold's training subjects (every label) dealt into k stratified inner test folds."""
    test = set(outer_test)
    return make_folds([r for r in records if r.subject not in test], k, seed)


def inner_seed(fold_seed: int, outer: int) -> int:
    return 1000 * (fold_seed + 1) + outer


def _trained(path: Path, fold, cfg: TrainConfig, gpu: bool) -> Path:
    """Train `cfg` on the fold into `path` unless a checkpoint of the same training is kept there."""
    key = _training_key(cfg, fold.test_subjects, gpu)
    side = path.with_suffix(".json")
    if path.exists() and side.exists() and json.loads(side.read_text()) == key:
        return path
    side.unlink(missing_ok=True)
    train_fold(fold, cfg, path, gpu=gpu)
    side.write_text(json.dumps(key, indent=1))
    return path


def _groups(cands: dict[str, TrainConfig]) -> dict[str, list[str]]:
    """Candidates by training (everything but scoring): training name (its first candidate) -> names."""
    by_key: dict[str, list[str]] = {}
    for name, cfg in cands.items():
        by_key.setdefault(json.dumps(_training_key(cfg, [])), []).append(name)
    return {names[0]: names for names in by_key.values()}


def _auroc(path: Path, fold, cfg: TrainConfig, name: str, device: str, seed: int) -> float:
    return float(report(evaluate_scorer(_rescored(path, fold, cfg, name, device), fold.test, seed=seed))["image_auroc"])


def select(records, outer_test, base: TrainConfig, cands, *, index, inner_k, fold_seed, seeds, workdir, gpu, log):
    """Inner folds of one outer fold, each trained with `seeds` training seeds (base.seed, base.seed + 1,
    ...) -> (chosen name, {candidate: inner AUROCs, seed-major}, inner splits)."""
    if seeds < 1:
        raise ValueError(f"nested selection needs at least 1 training seed, got {seeds}")
    outer_train = [r for r in records if r.subject not in set(outer_test)]
    splits = inner_splits(records, outer_test, inner_k, inner_seed(fold_seed, index))
    inner: dict[str, list[float]] = {c.name: [] for c in cands}
    device = "cuda" if gpu else "cpu"
    for k in range(seeds):
        sbase = TrainConfig(**merge(base.model_dump(), {"seed": base.seed + k}))
        cfgs = {c.name: TrainConfig(**merge(sbase.model_dump(), c.over)) for c in cands}
        for j, test in enumerate(splits):
            fold = build_fold(outer_train, test, sbase, j)
            for tname, names in _groups(cfgs).items():
                name = f"inner{index}_{j}_{tname.replace('+', '_')}" + (f"_s{k}" if k else "")
                path = _trained(workdir / f"{name}.pt", fold, cfgs[tname], gpu)
                for n in names:
                    inner[n].append(_auroc(path, fold, cfgs[n], n, device, fold_seed))
            where = f"inner {j + 1}/{inner_k}" + (f", training seed {sbase.seed}" if seeds > 1 else "")
            log(f"  {where}: " + "  ".join(f"{n} {v[-1]:.3f}" for n, v in inner.items()))
    return choose(inner, {n: complexity(c) for n, c in cfgs.items()}), inner, splits


def _method_training(cfg: TrainConfig, base: TrainConfig, test: list[str], gpu: bool) -> str:
    """The benchmark method (`patchrank` or an ablation) that trains exactly as `cfg` does, so the outer
    fold's training is shared with its row (`folds.fit_method` names checkpoints so); else "nested"."""
    key = _training_key(cfg, test, gpu)
    for name, over in {"patchrank": {}, **ABLATIONS}.items():
        if _training_key(TrainConfig(**merge(base.model_dump(), over)), test, gpu) == key:
            return name
    return "nested"


def run_nested(
    records: list[Record],
    base: TrainConfig,
    cands: tuple[Candidate, ...],
    *,
    folds: int,
    inner_folds: int,
    methods: list[str],
    out: Path,
    workdir: Path,
    fold_seed: int,
    seeds: int,
    gpu: bool = False,
    only: list[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Every outer fold (or the 0-based ones in `only`, e.g. one process per fold; `merge_nested` joins
    them): select on inner folds, train the choice on the outer training set, score it on the outer test
    fold (row `patchrank_nested`); `methods` (the preset as `patchrank`, ablations, baselines) run plainly
    on the same outer folds. Saves out/nested.json after every outer fold."""
    if not cands or cands[0].over:
        raise DatasetError("the first candidate must be the run's own configuration (no overrides)")
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    split = make_folds(records, folds, fold_seed)
    res: dict = {
        "config": json.loads(base.model_dump_json()),
        "fold_seed": fold_seed,
        "folds": split,
        "inner_folds": inner_folds,
        "train_seeds": seeds,
        "candidates": {c.name: c.over for c in cands},
        "outer": [],
        "runs": [],
    }
    device = "cuda" if gpu else "cpu"
    t_all = time.perf_counter()
    for i, test in enumerate(split):
        if only is not None and i not in only:
            continue
        t0 = time.perf_counter()
        kw = dict(index=i, inner_k=inner_folds, fold_seed=fold_seed, seeds=seeds, workdir=workdir)
        chosen, inner, splits = select(records, test, base, cands, **kw, gpu=gpu, log=log)
        fold = build_fold(records, test, base, i)
        cfg = TrainConfig(**merge(base.model_dump(), next(c.over for c in cands if c.name == chosen)))
        path = _trained(workdir / f"{_method_training(cfg, base, test, gpu)}_fold{i}.pt", fold, cfg, gpu)
        rep = report(evaluate_scorer(_rescored(path, fold, cfg, chosen, device), fold.test, seed=fold_seed))
        rep.update(method="patchrank_nested", fold=i, chosen=chosen, fit_seconds=round(time.perf_counter() - t0, 1))
        res["runs"].append(rep)
        res["outer"].append({"fold": i, "chosen": chosen, "inner_splits": splits, "inner_auroc": inner})
        log(
            f"fold {i + 1}/{folds}: chose {chosen}; outer AUROC {rep['image_auroc']:.3f} AUPRC {rep['image_auprc']:.3f}"
        )
        for m in methods:
            t1 = time.perf_counter()
            scorer = fit_method(m, fold, base, workdir, reuse=True, gpu=gpu)
            t_fit = time.perf_counter() - t1
            rep = report(evaluate_scorer(scorer, fold.test, seed=fold_seed))
            rep.update(method=m, fold=i, fit_seconds=round(t_fit, 1))
            res["runs"].append(rep)
            log(f"  {m:>16}: AUROC {rep['image_auroc']:.3f} AUPRC {rep['image_auprc']:.3f}")
        (out / "nested.json").write_text(json.dumps(res, indent=2))
    res["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    res["summary"] = summarise(res["runs"], ["patchrank_nested", *methods])
    (out / "nested.json").write_text(json.dumps(res, indent=2))
    return res


def merge_nested(parts: list[dict]) -> dict:
    """nested.json results of the same folds, configuration and candidates (e.g. one process per outer
    fold) -> one result over all their outer folds."""
    same = ("folds", "config", "fold_seed", "inner_folds", "train_seeds", "tolerance", "candidates")
    base = parts[0]
    if any(tuple(p.get(k) for k in same) != tuple(base.get(k) for k in same) for p in parts[1:]):
        raise DatasetError("cannot merge nested runs with different folds, configuration, seeds, rule or candidates")
    outer = {o["fold"]: o for p in parts for o in p["outer"]}
    runs = {(r["method"], r["fold"]): r for p in parts for r in p["runs"]}
    res = {k: base[k] for k in same if k in base}  # "tolerance": runs before pass 22
    res["outer"] = [outer[i] for i in sorted(outer)]
    res["runs"] = sorted(runs.values(), key=lambda r: (r["fold"], r["method"]))
    methods = list(dict.fromkeys(r["method"] for p in parts for r in p["runs"]))
    res["summary"] = summarise(res["runs"], methods)
    res["wall_seconds"] = sum(p.get("wall_seconds", 0.0) for p in parts)
    return res


def choices_table(res: dict) -> str:
    """Markdown: per outer fold, the chosen candidate and the inner mean AUROC of each candidate."""
    names = list(res["candidates"])
    head = "| candidate | " + " | ".join(f"fold {o['fold'] + 1} inner" for o in res["outer"]) + " |\n"
    head += "|---|" + "---|" * len(res["outer"]) + "\n"
    rows = []
    for n in names:
        cells = []
        for o in res["outer"]:
            v = f"{np.mean(o['inner_auroc'][n]):.3f}"
            cells.append(f"**{v}** (chosen)" if o["chosen"] == n else v)
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"

"""The quality benchmark: PatchRank, ablations and baselines on the same subject-level folds.

Folds: subjects are shuffled with the seed and dealt into K folds (stratified by
image label when records carry one, so every ISIC fold has malignant images). For
fold i the test set is fold i's subjects; every other subject is training data, of
which only normal slices / benign images are used; `split_by_subject` holds out
`val_fraction` of the training subjects for the score statistics. Every method sees
exactly the same training, validation and test slices.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from patchrank.model.losses import UNIFORM_RANK
from patchrank.pipeline.data.datasets import DatasetError, Record, build_slices, split_by_subject
from patchrank.pipeline.data.pose import with_target
from patchrank.pipeline.evaluation.harness import PatchRankScorer, evaluate_scorer, load_test_scans, report
from patchrank.pipeline.settings import TrainConfig, merge

METRICS = ["image_auroc", "image_auprc", "small_lesion_auroc", "pixel_auroc", "best_dice"]

# Ablations of PatchRank: (name, TrainConfig overrides merged into the run's config).
NO_RANK = asdict(UNIFORM_RANK)
ABLATIONS: dict[str, dict] = {
    "no_ranking": {"loss": {"rank": NO_RANK}, "scoring": {"rank": NO_RANK}},
    "no_masking": {"loss": {"use_masking": False}, "scoring": {"grid_period": 0}},
    "no_discriminator": {"loss": {"use_discriminator": False}, "scoring": {"disc_weight": 0.0}},
    "no_anatomy": {"scoring": {"intensity_weight": 0.0, "symmetry_weight": 0.0}},
    "no_context": {"scoring": {"context_radius": 0}},
    "no_appearance": {"scoring": {"appearance_weight": 0.0}},
    "no_shape": {"scoring": {"shape_weight": 0.0}},
    "no_features": {"scoring": {"feature_weight": 0.0}},
}
BASELINE_NAMES = ["cae", "ocsvm", "alocc", "percentile"]
ALL_METHODS = ["patchrank", *ABLATIONS, *BASELINE_NAMES]


def make_folds(records: list[Record], k: int, seed: int) -> list[list[str]]:
    """-> k lists of test subjects; stratified by the records' image label when present."""
    subj_label: dict[str, int] = {}
    for r in records:
        subj_label[r.subject] = max(subj_label.get(r.subject, 0), int(r.label or 0))
    subjects = sorted(subj_label)
    if k < 2 or k > len(subjects):
        raise DatasetError(f"need 2 <= folds <= number of subjects ({len(subjects)}), got {k}")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    i = 0
    for lab in sorted(set(subj_label.values())):
        group = [s for s in subjects if subj_label[s] == lab]
        rng.shuffle(group)
        for s in group:
            folds[i % k].append(s)
            i += 1
    return [sorted(f) for f in folds]


@dataclass
class Fold:
    index: int
    train: object  # SliceSet, normal only
    val: object
    test: list  # EvalScan
    test_subjects: list[str]
    normal: list  # the training subjects' normal records, which `split_by_subject` divides into train / val
    seed: int  # the seed of that division


def _train_val(normal: list[Record], cfg: TrainConfig) -> tuple:
    """The training subjects divided with cfg.seed -> (train, val) normal slices (val = train without a val part)."""
    tr, va = split_by_subject(normal, cfg.val_fraction, cfg.seed)
    train = build_slices(tr, cfg.preprocess, normal_only=True)
    return train, build_slices(va, cfg.preprocess, normal_only=True) if va else train


def fold_sets(fold: Fold, cfg: TrainConfig) -> tuple:
    """(train, val) slices as a training with cfg.seed divides the fold's training subjects (an ensemble's
    members divide them as `train --seed` does: each with its own seed)."""
    return (fold.train, fold.val) if cfg.seed == fold.seed else _train_val(fold.normal, cfg)


def build_fold(
    records: list[Record],
    test_subjects: list[str],
    cfg: TrainConfig,
    index: int,
    test_records: list[Record] | None = None,
) -> Fold:
    """test_records: where the test subjects' scans are read from instead (e.g. moved copies, --perturb)."""
    test_set = set(test_subjects)
    train_recs = [r for r in records if r.subject not in test_set and r.label in (None, 0)]
    if not train_recs:
        raise DatasetError(f"fold {index}: no normal training records")
    train, val = _train_val(train_recs, cfg)
    test = load_test_scans([r for r in test_records or records if r.subject in test_set], cfg.preprocess)
    return Fold(index, train, val, test, sorted(test_set), train_recs, cfg.seed)


def train_fold(fold: Fold, cfg: TrainConfig, path: Path, *, resume: bool = False, gpu: bool = False) -> str:
    """Train cfg on the fold's normal data into path (one training, or an ensemble whose members divide the
    training subjects with their own seeds, as `train` does); resume: continue the files found. -> model_version."""
    from patchrank.pipeline.training.ensemble import fit_members
    from patchrank.pipeline.training.local import fit_local

    def train_one(scfg: TrainConfig, p: Path) -> str:
        train, val = fold_sets(fold, scfg)
        return fit_local(train, val, scfg, p, resume=resume and p.exists(), show=False, gpu=gpu)

    return fit_members(cfg, path, train_one, resume=resume)


def _training_key(cfg: TrainConfig, test_subjects: list[str], gpu: bool = False) -> dict:
    """What decides a fold model's weights: the training configuration (scoring excluded,
    its statistics are refit), the fold's held-out subjects, and whether it trained on a GPU
    (bf16 autocast gives other weights than the CPU's float32)."""
    from patchrank.pipeline.training.state import critic_epochs

    d = json.loads(cfg.model_dump_json())
    d.pop("scoring", None)
    if d.get("ensemble") == 1:  # one training: keys as written before ensembles existed
        d.pop("ensemble")
    d["preprocess"] = cfg.preprocess.saved()  # pose off: no pose settings, as in keys written before they existed
    if not critic_epochs(cfg):  # no critic phase: its settings do not matter
        d.pop("critic_epochs", None)
        d.pop("lr_critic", None)
    key = {"train_config": d, "test_subjects": sorted(test_subjects)}
    return {**key, "gpu": True} if gpu else key


def _only_critic_added(old: dict, new: dict) -> bool:
    """A kept checkpoint trained without the critic phase, where the new training differs only
    by adding it: continuing it (resume) gives the same model as training from scratch."""

    def strip(k):
        return {
            **k,
            "train_config": {n: v for n, v in k["train_config"].items() if n not in ("critic_epochs", "lr_critic")},
        }  # noqa: E731

    return (
        "critic_epochs" not in old["train_config"]
        and "critic_epochs" in new["train_config"]
        and strip(old) == strip(new)
    )


def _rescored(path: Path, fold: Fold, mcfg: TrainConfig, name: str, device: str = "cpu"):
    import torch

    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.model.scoring import Member
    from patchrank.pipeline.training.ensemble import member_config
    from patchrank.pipeline.training.loop import score_stats

    lm = load_checkpoint(path, map_location=device)
    if len(lm.members) != mcfg.ensemble:
        raise DatasetError(f"{path} holds {len(lm.members)} trainings, the settings {mcfg.ensemble}: remove it")
    members = []
    for i, m in enumerate(lm.members):  # each member's statistics on its own held-out subjects
        scfg = member_config(mcfg, i)
        train, val = fold_sets(fold, scfg)
        members.append(
            Member(m.recon, m.disc, score_stats(m.recon, m.disc, val, scfg, torch.device(device), train=train))
        )
    lm = replace(lm, scoring=mcfg.saved_scoring(), stats=members[0].stats, extra=tuple(members[1:]))
    return PatchRankScorer(lm, name, device)


def fit_method(name: str, fold: Fold, cfg: TrainConfig, workdir: Path, reuse: bool = False, gpu: bool = False):
    """Train one method on the fold's normal data -> Scorer.

    Ablations that train exactly as PatchRank does (those that change only scoring: no_anatomy,
    no_context, no_appearance, no_shape, no_features; and no_ranking while the training loss is
    uniform) reuse the fold's PatchRank weights when PatchRank ran first, with the statistics
    refit under their own scoring settings: the row then differs from PatchRank's by that
    component alone, not by a second training run's noise. With `reuse`, a checkpoint already in `workdir` from the
    same training configuration and fold (its `.json` sidecar says so) is scored again under
    the current scoring settings instead of being trained again, and one trained without the
    critic phase is continued with it when that is the only difference. With `gpu`, PatchRank
    and its ablations train (bf16 autocast) and score on the CUDA device; baselines stay on the CPU."""
    if name in BASELINE_NAMES:
        from patchrank.pipeline.evaluation.baselines import BASELINES

        return BASELINES[name](fold.train, fold.val, cfg)
    from patchrank.model.checkpoint import load_checkpoint

    over = {} if name == "patchrank" else ABLATIONS[name]
    mcfg = TrainConfig(**merge(cfg.model_dump(), over))
    key = _training_key(mcfg, fold.test_subjects, gpu)
    device = "cuda" if gpu else "cpu"

    def kept(p: Path) -> dict | None:  # the training key of a checkpoint kept at p, if any
        side = p.with_suffix(".json")
        return json.loads(side.read_text()) if p.exists() and side.exists() else None

    shared = workdir / f"patchrank_fold{fold.index}.pt"
    if name != "patchrank" and kept(shared) == key:  # trains exactly as PatchRank did (e.g. scoring-only ablations)
        return _rescored(shared, fold, mcfg, name, device)
    path = workdir / f"{name}_fold{fold.index}.pt"
    sidecar = path.with_suffix(".json")
    old = kept(path) if reuse else None
    if old == key:
        return _rescored(path, fold, mcfg, name, device)
    resume = old is not None and _only_critic_added(old, key)
    sidecar.unlink(missing_ok=True)
    train_fold(fold, mcfg, path, resume=resume, gpu=gpu)
    sidecar.write_text(json.dumps(key, indent=1))
    return PatchRankScorer(load_checkpoint(path, map_location=device), name, device)


def run_quality(
    records: list[Record],
    cfg: TrainConfig,
    *,
    folds: int,
    methods: list[str],
    out: Path,
    only: list[int] | None = None,
    log: Callable[[str], None] = print,
    fold_seed: int | None = None,
    models: Path | None = None,
    gpu: bool = False,
    test_records: list[Record] | None = None,
) -> dict:
    """Run every method on every fold (or the 0-based folds in `only`); save results
    incrementally to out/quality.json (folds run in separate processes merge with `merge_runs`).
    The folds (and the pixel subsample) come from `fold_seed` (default cfg.seed); everything
    else from cfg.seed, so one split can be trained again with other seeds. With `models`, the
    fold checkpoints are kept there and reused by a later run with the same training
    configuration (only the scoring is redone), otherwise they live in a temporary folder.
    `gpu`: PatchRank and its ablations train and score on the CUDA device. `test_records`: the test
    subjects' scans are read from these (e.g. moved copies) while training reads `records`."""
    out.mkdir(parents=True, exist_ok=True)
    fold_seed = cfg.seed if fold_seed is None else fold_seed
    split = make_folds(records, folds, fold_seed)
    results: dict = {"config": json.loads(cfg.model_dump_json()), "fold_seed": fold_seed, "folds": split, "runs": []}
    if gpu:
        results["gpu"] = True
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="patchrank-bench-") as tmp:
        workdir = Path(tmp) if models is None else Path(models)
        workdir.mkdir(parents=True, exist_ok=True)
        for i, test_subjects in enumerate(split):
            if only is not None and i not in only:
                continue
            fcfg = with_target(cfg, [r for r in records if r.subject not in test_subjects and r.label in (None, 0)])
            fold = build_fold(records, test_subjects, fcfg, i, test_records)
            log(
                f"fold {i + 1}/{folds}: train {len(fold.train)} normal slices, val {len(fold.val)}, "
                f"test subjects {len(test_subjects)}"
            )
            for name in methods:
                t0 = time.perf_counter()
                scorer = fit_method(name, fold, fcfg, workdir, reuse=models is not None, gpu=gpu)
                t_fit = time.perf_counter() - t0
                rep = report(evaluate_scorer(scorer, fold.test, seed=fold_seed))
                rep.update(method=name, fold=i, fit_seconds=round(t_fit, 1), seconds=round(time.perf_counter() - t0, 1))
                results["runs"].append(rep)
                log(
                    f"  {name:>16}: "
                    + "  ".join(f"{m} {rep[m]:.3f}" for m in METRICS if rep.get(m) is not None)
                    + f"  ({rep['seconds']:.0f}s)"
                )
                (out / "quality.json").write_text(json.dumps(results, indent=2))
    results["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    results["summary"] = summarise(results["runs"], methods)
    (out / "quality.json").write_text(json.dumps(results, indent=2))
    return results


def merge_runs(paths: list[Path]) -> dict:
    """Merge quality.json files of the same folds/config (e.g. one process per fold)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    base = parts[0]
    for p in parts[1:]:
        if (p["folds"], p["config"], p.get("fold_seed"), p.get("gpu", False)) != (
            base["folds"],
            base["config"],
            base.get("fold_seed"),
            base.get("gpu", False),
        ):
            raise DatasetError("cannot merge results with different folds, configuration or device (CPU vs --gpu)")
    runs = {(r["method"], r["fold"]): r for p in parts for r in p["runs"]}
    merged = {
        "config": base["config"],
        "fold_seed": base.get("fold_seed"),
        "folds": base["folds"],
        "runs": sorted(runs.values(), key=lambda r: (r["fold"], r["method"])),
    }
    if base.get("gpu"):
        merged["gpu"] = True
    methods = list(dict.fromkeys(r["method"] for p in parts for r in p["runs"]))
    merged["summary"] = summarise(merged["runs"], methods)
    return merged


def summarise(runs: list[dict], methods: list[str]) -> dict:
    """-> {method: {metric: [mean, std, n_folds] or None}}."""
    out = {}
    for name in methods:
        rows = [r for r in runs if r["method"] == name]
        out[name] = {}
        for m in METRICS + ["fit_seconds"]:
            vals = [r[m] for r in rows if r.get(m) is not None]
            out[name][m] = [float(np.mean(vals)), float(np.std(vals)), len(vals)] if vals else None
    return out


def markdown_table(summary: dict) -> str:
    present = [m for m in METRICS if any(summary[n].get(m) for n in summary)]
    head = "| method | " + " | ".join(present) + " | fit s/fold |\n|---|" + "---|" * (len(present) + 1) + "\n"
    rows = []
    for name, ms in summary.items():
        cells = [f"{ms[m][0]:.3f} ± {ms[m][1]:.3f}" if ms.get(m) else "n/a" for m in present]
        fit = f"{ms['fit_seconds'][0]:.0f}" if ms.get("fit_seconds") else "n/a"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {fit} |")
    return head + "\n".join(rows) + "\n"

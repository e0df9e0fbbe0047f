"""`patchrank bench quality`: PatchRank vs ablations vs baselines on the same subject-level folds."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

QUICK = {"epochs": 2, "preprocess": {"image_size": 64}}


def cpu_line() -> str:
    """The CPU as results depend on it: model name and torch's CPU kernel level (AVX2 and AVX-512 kernels round
    differently, so the same code and seed train other weights on machines that differ in it)."""
    import torch

    from patchrank.pipeline.bench.train import _cpu_name

    return f"{platform.machine()} CPU ({_cpu_name()}, torch kernels {torch.backends.cpu.get_cpu_capability()})"


def register(sub: argparse._SubParsersAction) -> None:
    from patchrank.pipeline.evaluation.folds import ALL_METHODS
    from patchrank.pipeline.settings import PRESETS

    p = sub.add_parser(
        "quality",
        help="PatchRank vs ablations and baselines on leave-subjects-out folds",
        description="Train and evaluate PatchRank, its ablations (no ranking, no masking, no discriminator) "
        "and the baselines (conv autoencoder, one-class SVM, ALOCC-style, intensity percentile) on the same "
        "subject-level folds and seed; print and save one table (mean ± std over folds) as "
        "OUT/quality.md and OUT/quality.json.",
    )
    p.add_argument("--data", help="BraTS-style folder, ISIC-style folder or manifest CSV (required unless --merge)")
    p.add_argument("--folds", type=int, default=3, help="leave-subjects-out folds (default 3)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the folds, and of training unless --train-seed is given"
    )
    p.add_argument(
        "--train-seed",
        type=int,
        help="seed of everything but the folds (validation split, weights, masks, "
        "batch order): the same folds trained again, to measure training noise (docs/experiments.md)",
    )
    p.add_argument("--quick", action="store_true", help=f"development mode: {json.dumps(QUICK)}, 2 folds")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset (default: all)")
    p.add_argument(
        "--preset", choices=PRESETS, help="settings preset for PatchRank (default: chosen from the data, as `train`)"
    )
    p.add_argument("--config", help="JSON TrainConfig settings layered over the preset (ablations derive from it)")
    p.add_argument("--epochs", type=int, help="override epochs for every trained method")
    p.add_argument("--modality", default="flair", help="MRI modality of BraTS-style folders (default flair)")
    p.add_argument("--out", default="bench_quality", help="output folder (default bench_quality)")
    p.add_argument(
        "--models",
        metavar="DIR",
        help="keep the fold checkpoints in DIR (default: a temporary folder); a later "
        "run with the same DIR, folds and training configuration re-scores them under the current scoring "
        "settings instead of training again",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="train (bf16 autocast) and score PatchRank and its ablations on the "
        "CUDA device; the baselines stay on the CPU. GPU-trained weights differ from CPU-trained ones, so "
        "--models keeps them apart and --merge refuses to mix the two",
    )
    p.add_argument("--only-folds", help="comma-separated 1-based folds to run (e.g. one process per fold)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="QUALITY_JSON",
        help="instead of running: merge quality.json files "
        "of runs with the same folds and config into OUT/quality.md + quality.json (nested.json files of --nested "
        "runs, e.g. one per outer fold with --only-folds, into OUT/nested.md + nested.json)",
    )
    from patchrank.pipeline.bench import quality_nested

    quality_nested.add_arguments(p)
    add_perturb_args(p)
    p.set_defaults(func=run)


def add_perturb_args(p: argparse.ArgumentParser) -> None:
    """--perturb: the same fold models evaluated on moved copies of the test scans (pipeline.evaluation.perturb)."""
    p.add_argument(
        "--perturb",
        choices=["rigid"],
        help="evaluate on copies of the test volumes moved by a seeded random rigid transform (rotation up to "
        "+-15 deg about the axial axis and +-6 deg about the others, shifts up to +-12 mm), written to "
        "OUT/perturbed/; training still reads the original volumes",
    )
    p.add_argument("--perturb-seed", type=int, default=0, help="seed of the --perturb transforms (default 0)")


def run(args: argparse.Namespace) -> int:
    import torch

    from patchrank.pipeline.data.datasets import DatasetError
    from patchrank.pipeline.data.discover import config_for, discover
    from patchrank.pipeline.evaluation.folds import ALL_METHODS, markdown_table, run_quality
    from patchrank.pipeline.settings import merge, read_config_file
    from patchrank.pipeline.training.local import pick_device

    if args.merge:
        return merge_command(args)
    if not args.data:
        raise DatasetError("--data is required (or --merge QUALITY_JSON ...)")
    if args.nested and args.nested_seeds < 1:
        raise DatasetError(f"--nested-seeds needs at least 1 training seed, got {args.nested_seeds}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise DatasetError(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    base = read_config_file(args.config) if args.config else {}
    folds = args.folds
    if args.quick:
        base = merge(base, QUICK)
        folds = min(folds, 2)
    base["seed"] = args.seed if args.train_seed is None else args.train_seed
    if args.epochs:
        base["epochs"] = args.epochs
    pick_device(args.gpu)  # a clear error for --gpu without CUDA, before any data is read
    records = discover(args.data, modality=args.modality)
    cfg, preset = config_for(records, args.preset, base)
    print(f"preset {preset}")
    t0 = time.perf_counter()
    if args.nested:
        from patchrank.pipeline.bench import quality_nested

        if args.perturb or (cfg.preprocess.pose and records and records[0].path.lower().endswith((".nii", ".nii.gz"))):
            raise DatasetError("--nested runs neither --perturb nor pose canonicalisation (brain-mri) yet")

        return quality_nested.run(args, records, cfg, preset, folds, methods)
    only = [int(f) - 1 for f in args.only_folds.split(",")] if args.only_folds else None
    test_records = None
    if args.perturb:  # rigid: moved copies of every scan, read by the test side of each fold only
        from patchrank.pipeline.evaluation.perturb import perturb_records

        test_records = perturb_records(records, Path(args.out) / "perturbed", args.perturb_seed)
    res = run_quality(
        records,
        cfg,
        folds=folds,
        methods=methods,
        out=Path(args.out),
        only=only,
        fold_seed=args.seed,
        models=Path(args.models) if args.models else None,
        gpu=args.gpu,
        test_records=test_records,
    )
    wall = time.perf_counter() - t0
    flags = [
        ("data", args.data),
        ("folds", args.folds),
        ("seed", args.seed),
        ("train-seed", args.train_seed),
        ("config", args.config),
        ("epochs", args.epochs),
        ("only-folds", args.only_folds),
        ("models", args.models),
        ("out", args.out),
        ("perturb", args.perturb),
        ("perturb-seed", args.perturb_seed if args.perturb else None),
    ]
    if args.methods != ",".join(ALL_METHODS):
        flags.append(("methods", args.methods))
    cmd = (
        "patchrank bench quality "
        + " ".join(f"--{k} {v}" for k, v in flags if v is not None)
        + (" --gpu" if args.gpu else "")
    )
    header = (
        f"command: `{cmd}{' --quick' if args.quick else ''}`  \n"
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  \n"
        f"machine: {cpu_line()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
        f"{', GPU ' + torch.cuda.get_device_name(0) if args.gpu else ''}  \n"
        f"folds: {folds} (subject-level), seed {args.seed}, training seed {cfg.seed}, epochs {cfg.epochs}, "
        f"image size {cfg.preprocess.image_size}  \n"
        f"wall time: {wall / 60:.1f} min\n\n"
    )
    table = header + markdown_table(res["summary"])
    Path(args.out, "quality.md").write_text(table)
    print(table)
    print(f"wrote {Path(args.out) / 'quality.md'} and {Path(args.out) / 'quality.json'}")
    return 0


def merge_command(args: argparse.Namespace) -> int:
    from patchrank.pipeline.evaluation.folds import markdown_table, merge_runs

    if all(Path(p).name == "nested.json" for p in args.merge):
        from patchrank.pipeline.bench import quality_nested

        return quality_nested.merge_command(args.merge, Path(args.out))
    res = merge_runs([Path(p) for p in args.merge])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(res, indent=2))
    done = sorted({r["fold"] + 1 for r in res["runs"]})
    table = (
        f"merged from {', '.join(args.merge)}; folds with results: {done} of {len(res['folds'])}\n\n"
        + markdown_table(res["summary"])
    )
    (out / "quality.md").write_text(table)
    print(table)
    return 0

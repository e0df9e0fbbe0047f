"""`patchrank bench quality --nested K`: inner folds choose PatchRank's settings, outer folds report."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nested",
        type=int,
        metavar="INNER_FOLDS",
        help="nested cross-validation: inside each outer fold's training subjects, INNER_FOLDS folds choose "
        "PatchRank's settings among the preset's candidate set (pipeline/evaluation/nested.py); the choice is "
        "trained on the outer training set and only outer-fold numbers are reported (OUT/nested.md, nested.json); "
        "--methods then run plainly on the same outer folds",
    )
    p.add_argument(
        "--nested-seeds",
        type=int,
        default=3,
        metavar="N",
        help="with --nested: train every inner fold with N training seeds (default 3; cost grows N-fold); a "
        "candidate with fewer components is chosen unless its mean paired difference to the best candidate "
        "(over inner folds and seeds) is more than one standard error below zero",
    )


def run(args: argparse.Namespace, records, cfg, preset: str, folds: int, methods: list[str]) -> int:
    import torch

    from patchrank.pipeline.bench.quality import cpu_line
    from patchrank.pipeline.data.datasets import DatasetError
    from patchrank.pipeline.evaluation.nested import CANDIDATES, run_nested

    if preset not in CANDIDATES:
        raise DatasetError(f"--nested has candidate settings for {', '.join(CANDIDATES)}, not {preset}")
    only = [int(f) - 1 for f in args.only_folds.split(",")] if args.only_folds else None
    out = Path(args.out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="patchrank-nested-") as tmp:
        res = run_nested(
            records,
            cfg,
            CANDIDATES[preset],
            folds=folds,
            inner_folds=args.nested,
            methods=[m for m in methods if m != "patchrank_nested"],
            out=out,
            workdir=Path(args.models) if args.models else Path(tmp),
            fold_seed=args.seed,
            seeds=args.nested_seeds,
            gpu=args.gpu,
            only=only,
        )
    wall = time.perf_counter() - t0
    flags = [("data", args.data), ("folds", args.folds), ("nested", args.nested), ("nested-seeds", args.nested_seeds),
             ("seed", args.seed), ("train-seed", args.train_seed), ("config", args.config), ("epochs", args.epochs),
             ("methods", args.methods), ("only-folds", args.only_folds), ("models", args.models),
             ("out", args.out)]  # fmt: skip
    cmd = "patchrank bench quality " + " ".join(f"--{k} {v}" for k, v in flags if v is not None)
    header = (
        f"command: `{cmd}{' --quick' if args.quick else ''}{' --gpu' if args.gpu else ''}`  \n"
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  \n"
        f"machine: {cpu_line()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}  \n"
        f"preset {preset}; outer folds: {folds} (subject-level), seed {args.seed}; inner folds: {args.nested}; "
        f"training seed {cfg.seed} (inner folds: {args.nested_seeds} seeds from it), epochs {cfg.epochs}, "
        f"image size {cfg.preprocess.image_size}  \n"
        f"wall time: {wall / 60:.1f} min\n\n"
    )
    res["header"] = header
    (out / "nested.json").write_text(json.dumps(res, indent=2))
    text = header + tables(res)
    (out / "nested.md").write_text(text)
    print(text)
    print(f"wrote {out / 'nested.md'} and {out / 'nested.json'}")
    return 0


def tables(res: dict) -> str:
    """nested.md's tables: outer-fold numbers, then each outer fold's choice and inner means."""
    from patchrank.pipeline.evaluation.folds import markdown_table
    from patchrank.pipeline.evaluation.nested import choices_table

    chosen = ", ".join(f"fold {o['fold'] + 1}: {o['chosen']}" for o in res["outer"])
    rule = f"tolerance {res['tolerance']}" if "tolerance" in res else f"paired, {res['train_seeds']} training seeds"
    return (
        "Outer-fold numbers only (`patchrank_nested`: chosen on inner folds; `patchrank`: the preset, fixed):\n\n"
        + markdown_table(res["summary"])
        + f"\nChosen: {chosen}. Mean inner-fold AUROC of each candidate ({rule}):\n\n"
        + choices_table(res)
    )


def merge_command(paths: list[str], out: Path) -> int:
    """`--merge` of nested.json files (one process per outer fold) -> OUT/nested.md + nested.json."""
    from patchrank.pipeline.evaluation.nested import merge_nested

    parts = [json.loads(Path(p).read_text()) for p in paths]
    res = merge_nested(parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nested.json").write_text(json.dumps(res, indent=2))
    done = [o["fold"] + 1 for o in res["outer"]]
    runs = "".join(f"- {p}:  \n" + "".join(f"  {line}\n" for line in q.get("header", "").strip().splitlines())
                   for p, q in zip(paths, parts))  # fmt: skip
    text = f"merged from:\n\n{runs}\nouter folds with results: {done} of {len(res['folds'])}\n\n" + tables(res)
    (out / "nested.md").write_text(text)
    print(text)
    return 0

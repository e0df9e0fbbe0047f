"""Compare configurations over training seeds: `bench quality` jobs in a process pool.

    python scripts/seed_sweep.py --data ../shared/data/brats2015 --seeds 0,1,2 \
        --methods patchrank,no_discriminator,no_ranking --variant default= \
        --variant floor4=cfg_floor4.json --rescore dw1=default:cfg_dw1.json --jobs 16 --gpu --out sweep

One `patchrank bench quality --only-folds F --train-seed S --methods M` process per
(variant, seed, fold, method), `--jobs` at a time, on the same folds (`--fold-seed`). A
`--variant NAME=CONFIG` trains (CONFIG empty: the default configuration); a `--rescore
NAME=BASE:CONFIG` re-scores BASE's kept checkpoints (its methods) under CONFIG's scoring, after
the training wave, and is refused unless CONFIG trains exactly as BASE does. Writes
OUT/summary.md (per variant and method: each seed's mean over folds, and the mean over
seeds) and OUT/summary.json; each job's log and quality.json stay under OUT/runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, val = it.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} wants NAME=VALUE, got {it!r}")
        out[name] = val
    return out


def _config(path: str) -> dict:
    return json.loads(Path(path).read_text()) if path else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    ap.add_argument("--fold-seed", type=int, default=0, help="seed of the folds (default 0)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--methods", default="patchrank", help="methods trained per variant (default patchrank)")
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME=CONFIG", help="a trained variant (CONFIG may be empty)"
    )
    ap.add_argument(
        "--extra", action="append", default=[], metavar="NAME=CONFIG", help="a trained variant, PatchRank alone"
    )
    ap.add_argument(
        "--rescore",
        action="append",
        default=[],
        metavar="NAME=BASE:CONFIG",
        help="BASE's models re-scored under CONFIG",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP/torch threads per job (default 1)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per job (default 1800)")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument(
        "--summary-only", action="store_true", help="run nothing: summarise the jobs already under OUT/runs"
    )
    args = ap.parse_args(argv)

    from patchrank.pipeline.evaluation.folds import _training_key, merge_runs, summarise
    from patchrank.pipeline.settings import TrainConfig, merge

    variants, extras = _pairs(args.variant, "--variant"), _pairs(args.extra, "--extra")
    rescores = _pairs(args.rescore, "--rescore")
    variants.update(extras)
    if not variants:
        raise SystemExit("give at least one --variant NAME=CONFIG")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, spec in rescores.items():
        base, _, cfg = spec.partition(":")
        if base not in variants:
            raise SystemExit(f"--rescore {name}: unknown base variant {base!r}")
        a, b = (TrainConfig(**merge(_config(c), {"seed": 0})) for c in (variants[base], cfg))
        if _training_key(a, []) != _training_key(b, []):
            raise SystemExit(f"--rescore {name}: {cfg} trains differently from {base}; make it a --variant")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}

    def job(name: str, cfg: str, models: str, seed: int, fold: int, method: str) -> tuple[str, int, float]:
        tag = f"{name}_s{seed}_f{fold}_{method}"
        run = out / "runs" / tag
        run.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "patchrank.pipeline.cli",
            "bench",
            "quality",
            "--data",
            args.data,
            "--folds",
            str(args.folds),
            "--seed",
            str(args.fold_seed),
            "--train-seed",
            str(seed),
            "--only-folds",
            str(fold),
            "--methods",
            method,
            "--models",
            str(out / "models" / f"{models}_s{seed}"),
            "--out",
            str(run),
        ]
        cmd += (["--config", str(Path(cfg).resolve())] if cfg else []) + (["--gpu"] if args.gpu else [])
        t0 = time.perf_counter()
        with (run / "log.txt").open("w") as log:
            try:
                rc = subprocess.run(
                    cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout, env={**os.environ, **env}
                ).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        dt = time.perf_counter() - t0
        print(f"[sweep] {tag} rc={rc} {dt:.0f}s", flush=True)
        return tag, rc, dt

    def wave(specs: list[tuple]) -> None:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda s: job(*s), specs))

    folds = range(1, args.folds + 1)
    base_methods = lambda v: ["patchrank"] if v in extras else methods  # noqa: E731 - a re-scored variant re-scores its base's methods
    if not args.summary_only:
        wave(
            [
                (n, c, n, s, f, m)
                for n, c in variants.items()
                for s in seeds
                for f in folds
                for m in (["patchrank"] if n in extras else methods)
            ]
        )
        wave(
            [
                (n, spec.partition(":")[2], spec.partition(":")[0], s, f, m)
                for n, spec in rescores.items()
                for s in seeds
                for f in folds
                for m in base_methods(spec.partition(":")[0])
            ]
        )

    summary: dict = {}
    lines = [
        f"seeds {seeds}, folds {args.folds} (fold seed {args.fold_seed}), {'GPU' if args.gpu else 'CPU'}; "
        "each cell: mean over folds; last row of each block: mean over seeds (n fold runs)\n"
    ]
    names = list(variants) + list(rescores)
    for name in names:
        for method in base_methods(name if name in variants else rescores[name].partition(":")[0]):
            per_seed = {}
            for s in seeds:
                parts = [
                    p for f in folds if (p := out / "runs" / f"{name}_s{s}_f{f}_{method}" / "quality.json").exists()
                ]
                if parts:
                    per_seed[s] = merge_runs(parts)["runs"]
            if not per_seed:
                continue
            key = f"{name}/{method}"
            summary[key] = {
                "per_seed": {s: summarise(r, [method])[method] for s, r in per_seed.items()},
                "all": summarise([r for rs in per_seed.values() for r in rs], [method])[method],
            }
            lines.append(
                f"\n**{key}**\n\n| seed | slice AUROC | AUPRC | small-lesion | pixel AUROC | Dice | fold runs "
                f"|\n|---|---|---|---|---|---|---|"
            )
            for s, st in [*summary[key]["per_seed"].items(), ("all", summary[key]["all"])]:
                cells = [
                    f"{st[m][0]:.4f}" if st.get(m) else "n/a"
                    for m in ("image_auroc", "image_auprc", "small_lesion_auroc", "pixel_auroc", "best_dice")
                ]
                lines.append(
                    f"| {s} | " + " | ".join(cells) + f" | {st['image_auroc'][2] if st.get('image_auroc') else 0} |"
                )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

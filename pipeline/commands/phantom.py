"""`patchrank phantom OUT`: write the built-in brain-like phantom dataset as NIfTI."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchrank.pipeline.commands.options import number
from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write built-in phantom brain volumes (NIfTI, BraTS layout)")
    p.add_argument("out", help="output folder")
    p.add_argument("--normal", type=number(int, 0), default=6, help="subjects without lesions (default 6)")
    p.add_argument("--abnormal", type=number(int, 0), default=6, help="subjects with 1-3 lesions (default 6)")
    p.add_argument(
        "--shape", type=int, nargs=3, default=(96, 96, 40), metavar=("X", "Y", "Z"), help="voxels (default 96 96 40)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of anatomy and lesions (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"{args.out} is a file: give a folder to write the phantoms into")
    spec = PhantomSpec(shape=tuple(args.shape), n_normal=args.normal, n_abnormal=args.abnormal, seed=args.seed)
    cases = write_phantom_dataset(args.out, spec)
    print(f"wrote {len(cases)} phantom subjects to {args.out}")
    return 0

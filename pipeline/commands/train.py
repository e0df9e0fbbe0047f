"""`patchrank train`: fit the Patch-GAN on normal slices and write a checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.settings import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train on normal scans and write a checkpoint")
    p.add_argument("--data", required=True, help="dataset folder (BraTS-style) ")
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. model.pt)")
    p.add_argument("--config", help="JSON file with a TrainConfig (flags below override it)")
    p.add_argument("--modality", default="flair", help="MRI modality for BraTS-style folders (default flair)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int, help="model input side, multiple of 16 (default 128)")
    p.add_argument("--batch-size", type=int, help="per-worker batch size (default 16)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from --out's saved epoch and optimizer state")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.batch_size is not None:
        base["batch_size"] = args.batch_size
    if args.seed is not None:
        base["seed"] = args.seed
    if args.image_size is not None:
        base.setdefault("preprocess", {})["image_size"] = args.image_size
    return TrainConfig(**base)


def run(args: argparse.Namespace) -> int:
    from pipeline.train_local import fit_local, prepare_data

    cfg = config_from_args(args)
    train, val = prepare_data(args.data, cfg, args.modality, show=not args.quiet)
    print(f"training on {len(train)} normal slices ({len(set(train.subjects))} subjects); "
          f"score statistics from {len(val)} normal slices ({len(set(val.subjects))} subjects)")
    version = fit_local(train, val, cfg, args.out, resume=args.resume, show=not args.quiet)
    print(f"checkpoint {args.out} (model_version {version}); learning curve {Path(args.out).with_suffix('.curve.csv')}")
    return 0

"""`patchrank demo`: the main job end to end on built-in phantom data.

phantom data -> train (normal subjects only) -> score a held-out archive of normal and
abnormal phantoms -> print the ranking with the ground truth beside it.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on built-in phantom data (train, score, rank)")
    p.add_argument("--workdir", help="keep data, checkpoint and results here (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.train import config_from_args
    from pipeline.phantom import PhantomSpec, write_phantom_dataset
    from pipeline.train_local import fit_local, prepare_data

    work = Path(args.workdir or tempfile.mkdtemp(prefix="patchrank-demo-"))
    train_dir, archive = work / "train", work / "archive"
    print(f"[1/3] writing phantom data under {work}")
    write_phantom_dataset(train_dir, PhantomSpec(n_normal=8, n_abnormal=0, seed=args.seed))
    cases = write_phantom_dataset(archive, PhantomSpec(n_normal=4, n_abnormal=4, seed=args.seed + 1000))
    truth = {c.name: _has_lesion(c) for c in cases}
    print(f"[2/3] training {args.epochs} epochs at {args.image_size}px on normal phantoms")
    ns = argparse.Namespace(config=None, epochs=args.epochs, batch_size=16, seed=args.seed, image_size=args.image_size)
    cfg = config_from_args(ns)
    train, val = prepare_data(train_dir, cfg)
    ckpt = work / "model.pt"
    version = fit_local(train, val, cfg, ckpt)
    print(f"      checkpoint {ckpt} (model_version {version})")
    print("[3/3] scoring the archive")
    return _score_and_report(ckpt, archive, truth)


def _has_lesion(case: Path) -> bool:
    import nibabel as nib
    import numpy as np

    return bool(np.asarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj).any())


def _score_and_report(ckpt: Path, archive: Path, truth: dict[str, bool]) -> int:
    from model.checkpoint import load_checkpoint
    from pipeline.files import walk_scans
    from pipeline.loaders import load_scan
    from pipeline.preprocess import as_config, preprocess_scan
    from pipeline.scan_scoring import score_prepared

    model = load_checkpoint(ckpt)
    pre = as_config(model.preprocess)
    files, _ = walk_scans([archive])
    rows = []
    for f in files:
        s = score_prepared(model, preprocess_scan(load_scan(f, channels=pre.channels), pre), top_n=1)
        rows.append((s.scan_score, f.parent.name, s.patches[0] if s.patches else None))
    rows.sort(key=lambda r: -r[0])
    print(f"{'rank':>4}  {'score':>8}  {'scan':<14} truth     top patch")
    for i, (score, name, hit) in enumerate(rows, 1):
        where = f"slice {hit.slice_index} rows {hit.y0}:{hit.y1} cols {hit.x0}:{hit.x1}" if hit else "-"
        print(f"{i:>4}  {score:8.3f}  {name:<14} {'LESION' if truth[name] else 'normal':<9} {where}")
    n_abn = sum(truth.values())
    top = sum(truth[name] for _, name, _ in rows[:n_abn])
    print(f"{top}/{n_abn} abnormal scans rank in the top {n_abn}")
    return 0

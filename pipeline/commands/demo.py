"""`patchrank demo`: the main job end to end on built-in phantom data.

phantom data -> train (normal subjects only) -> screen a held-out archive of normal and
abnormal phantoms through the embedded service (private redis-server + local Ray +
Ray Serve -> Parquet) -> query the ranking, with the ground truth beside it, and write a
heatmap PNG of the top scan.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from patchrank.pipeline.commands.options import number, output_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo on built-in phantom data: train -> screen (Redis + Ray Serve) -> query"
    )
    p.add_argument("--workdir", help="keep data, checkpoint and results here (default: a temp dir)")
    p.add_argument(
        "--epochs", type=number(), default=12, help="adversarial epochs, then the critic epochs (default 12)"
    )
    p.add_argument(
        "--image-size", type=number(int, 16), default=96, help="model input side, multiple of 16 (default 96)"
    )
    p.add_argument("--train-subjects", type=number(), default=8, help="normal phantoms to train on (default 8)")
    p.add_argument(
        "--min-area",
        type=float,
        default=0.5,
        help="keep slices whose brain area is >= this x the largest (default 0.5: the small polar slices are "
        "poorly calibrated after a short training and would outrank lesions)",
    )
    p.add_argument(
        "--lesion-radius",
        type=float,
        nargs=2,
        default=(6.0, 12.0),
        metavar=("MIN", "MAX"),
        help="lesion radius range in voxels of the 96x96x40 phantoms (default 6 12; smaller lesions need a longer "
        "training)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the phantoms and the training (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset
    from patchrank.pipeline.settings import TrainConfig
    from patchrank.pipeline.training.local import fit_local, prepare_data
    from patchrank.pipeline.training.state import critic_epochs

    cfg = TrainConfig(  # settings checked before anything is written
        epochs=args.epochs,
        batch_size=16,
        seed=args.seed,
        preprocess={"image_size": args.image_size, "min_area_fraction": args.min_area},
    )
    lo, hi = args.lesion_radius
    normals = PhantomSpec(n_normal=args.train_subjects, n_abnormal=0, seed=args.seed)
    mixed = PhantomSpec(n_normal=4, n_abnormal=4, min_radius=lo, max_radius=hi, seed=args.seed + 1000)
    if args.workdir:
        output_folder(args.workdir, "--workdir")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="patchrank-demo-")).resolve()
    train_dir, archive = work / "train", work / "archive"
    print(f"[1/4] writing phantom data under {work}")
    write_phantom_dataset(train_dir, normals)
    cases = write_phantom_dataset(archive, mixed)
    truth = {str((c / f"{c.name}_flair.nii.gz").resolve()): _has_lesion(c) for c in cases}
    print(f"      archive: 4 normal + 4 abnormal phantoms (lesion radius {lo:g}-{hi:g} voxels), never seen in training")
    print(
        f"[2/4] training {args.epochs} epochs + {critic_epochs(cfg)} critic epochs at {args.image_size}px on "
        f"{args.train_subjects} normal phantoms (slices with >= {args.min_area:g} x the largest brain area; "
        "1 torch thread: reproducible on this machine)"
    )
    train, val = prepare_data(train_dir, cfg)
    ckpt = work / "model.pt"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights (and ranking) on every machine
    try:
        version = fit_local(train, val, cfg, ckpt)
    finally:
        torch.set_num_threads(threads)
    print(f"      checkpoint {ckpt} (model_version {version})")
    print("[3/4] screening the archive: private redis-server + local Ray + Ray Serve -> Parquet")
    results = work / "results"
    _screen(archive, ckpt, results)
    print(f"[4/4] querying {results}")
    return _report(results, version, truth, work)


def _has_lesion(case: Path) -> bool:
    import nibabel as nib
    import numpy as np

    return bool(np.asarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj).any())


def _screen(archive: Path, ckpt: Path, results: Path) -> None:
    from patchrank.pipeline.commands.screen import add_service_args, app_args
    from patchrank.pipeline.service.screening import screen, services

    p = argparse.ArgumentParser()
    add_service_args(p)
    sargs = p.parse_args(["--chunk", "8"])
    with services() as url:
        app = app_args(sargs, redis_url=url, checkpoint=str(ckpt), out=str(results), roots=[str(archive)])
        res = screen([archive], app, timeout_s=1800)
    print(f"      scored {res.queued} scans in {res.seconds:.1f}s (deploy + enqueue + score + write)")
    print(f"      {res.accounting.summary()}")
    if not res.accounting.complete:
        raise RuntimeError("screening left scans without a result row (see above)")


def _cli() -> str:
    """How to call this command line from any folder: `patchrank` when that is the one on PATH, else the
    absolute path of the `patchrank` next to this Python (e.g. .../.venv/bin/patchrank; scripts/demo.sh runs
    the demo from the repository root, not from the user's folder), quoted for a shell."""
    exe = Path(sys.executable).with_name("patchrank")
    if not exe.exists() or shutil.which("patchrank") == str(exe):
        return "patchrank"
    return shlex.quote(str(exe.absolute()))


def _report(results: Path, version: str, truth: dict[str, bool], work: Path) -> int:
    from patchrank.pipeline.service.heatmap import render_scan_png
    from patchrank.pipeline.service.results import ResultStore, format_ranking

    store = ResultStore(results)
    rows = store.top_scans(len(truth), model_version=version, patches=2)
    print(format_ranking(rows, truth=truth))
    n_abn = sum(truth.values())
    top = sum(truth.get(r["uri"], False) for r in rows[:n_abn])
    print(f"{top}/{n_abn} abnormal scans rank in the top {n_abn} by scan score")
    # The scan score ranks slices of rank-weighted patches, so one small lesion is diluted; the
    # single most suspicious patch of each scan (what a reader looks at first) is shown too.
    best = sorted(rows, key=lambda r: max((p["score"] for p in r["patches"]), default=float("-inf")), reverse=True)
    by_patch = sum(truth.get(r["uri"], False) for r in best[:n_abn])
    print(f"{by_patch}/{n_abn} abnormal scans rank in the top {n_abn} by their most suspicious patch")
    if rows:
        png = render_scan_png(store, rows[0]["scan_id"], work / "top_scan.png", model_version=version)
        print(f"heatmap of the top scan: {png}")
    sql = '--sql "SELECT status, count(*) FROM scans GROUP BY 1"'
    print(f"more: {_cli()} query {shlex.quote(str(results))} --top 8   |   {sql}")
    return 0

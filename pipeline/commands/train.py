"""`patchrank train`: fit the Patch-GAN on normal slices and write a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchrank.pipeline.commands.options import number, output_file
from patchrank.pipeline.settings import PRESETS, TrainConfig, read_config_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train on normal scans and write a checkpoint",
        description="Fit the Patch-GAN on normal slices. --workers 0 (default) trains in this process; "
        "--workers N runs Ray Train (TorchTrainer, DDP) with N CPU or --gpu workers, on a local Ray or --address. "
        "Both write the same checkpoint (every epoch) and <out>.curve.csv. See docs/training.md.",
    )
    p.add_argument("--data", required=True, help="dataset: BraTS-style, ISIC-style or plain folder, or manifest CSV")
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. model.pt)")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="settings preset (configs/NAME.json); default: chosen from the data "
        "(RGB 2D images -> dermoscopy, volumes -> brain-mri)",
    )
    p.add_argument("--config", help="JSON file with TrainConfig settings layered over the preset (flags override it)")
    p.add_argument("--modality", default="flair", help="MRI modality for BraTS-style folders (default flair)")
    p.add_argument(
        "--epochs", type=int, help="adversarial epochs (default 12); with --resume, the epoch to train up to"
    )
    p.add_argument("--image-size", type=int, help="model input side, multiple of 16 (default 128)")
    p.add_argument("--batch-size", type=int, help="per-worker batch size (default 16)")
    p.add_argument("--seed", type=int, help="seeds weights, data order, flips and masks (default 0)")
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="K trainings (seeds seed..seed+K-1) in one checkpoint that scores with their mean; K times the "
        "training and scoring time (default: the preset's, dermoscopy 3, brain-mri 1; docs/training.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest saved state (--out, or a killed Ray run's last epoch under --storage): "
        "weights, optimizer state, mask RNG and epoch; raise --epochs to train further",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Ray Train workers (DDP); 0 = train in this process without Ray or torch.distributed (default 0)",
    )
    p.add_argument(
        "--gpu", action="store_true", help="one GPU per worker (or this process with --workers 0), bf16 autocast"
    )
    p.add_argument(
        "--address", help="Ray cluster to train on: 'auto' (ray start'ed here) or ray://HEAD:10001; default a local Ray"
    )
    p.add_argument(
        "--storage",
        help="Ray Train storage_path for per-epoch checkpoints (default <out>.ray next to --out; "
        "on a multi-node cluster a shared path: NFS or s3://...)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="restart a failed worker group this many times from its latest checkpoint (default 2)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=number(float, 0, open_low=True),
        default=1.0,
        help="CPUs reserved per Ray worker = torch threads (default 1)",
    )
    p.add_argument("--val-data", help="labelled dataset (normal + abnormal subjects) for a validation AUROC per epoch")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars (and with --workers 0 no per-epoch lines either)"
    )
    p.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace) -> dict:
    """The --config file, then the flags that set TrainConfig fields, as one partial config."""
    over = read_config_file(args.config) if args.config else {}
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("seed", "seed"), ("ensemble", "ensemble")):
        if getattr(args, flag) is not None:
            over[key] = getattr(args, flag)
    if args.image_size is not None:
        over.setdefault("preprocess", {})["image_size"] = args.image_size
    return over


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """-> (the training configuration, the preset it starts from)."""
    from patchrank.pipeline.data.discover import choose_preset, config_for, discover

    over = flag_overrides(args)  # a bad --config file fails before the data is walked
    records = discover(args.data, modality=args.modality)
    if args.preset and args.preset != (fits := choose_preset(records)):
        print(f"WARNING: --preset {args.preset}, but this kind of data gets the {fits} preset when none is given")
    return config_for(records, args.preset, over)


def run(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.address and args.workers == 0:
        raise ValueError("--address trains on a Ray cluster: give --workers N (N >= 1) too")
    if args.storage and args.workers == 0:
        raise ValueError("--storage keeps Ray Train's runs: give --workers N (N >= 1) too")
    if args.workers == 0:  # Ray Train's GPUs may be on other nodes
        from patchrank.pipeline.training.local import pick_device

        pick_device(args.gpu)
    output_file(args.out, "--out")
    cfg, preset = config_from_args(args)
    print(f"preset {preset}" + ("" if args.preset else " (chosen from the data; --preset overrides)"))
    options = {k: getattr(args, k) for k in ("resume", "gpu", "address", "storage", "max_failures", "cpus_per_worker")}
    fit(args.data, Path(args.out), cfg, modality=args.modality, workers=args.workers, show=not args.quiet,
        val_data=args.val_data, **options)  # fmt: skip
    return 0


def fit(
    data,
    out: Path,
    cfg: TrainConfig,
    *,
    modality: str = "flair",
    workers: int = 0,
    show: bool = True,
    val_data=None,
    resume: bool = False,
    gpu: bool = False,
    address: str | None = None,
    storage: str | None = None,
    max_failures: int = 2,
    cpus_per_worker: float = 1.0,
) -> str:
    """Train on the normal slices of `data` (in-process, or Ray Train with `workers` > 0) -> model_version.
    With cfg.ensemble k > 1, k trainings (pipeline.training.ensemble) joined into one checkpoint."""
    from patchrank.pipeline.training.ensemble import fit_members
    from patchrank.pipeline.training.local import fit_local, prepare_data, prepare_labelled

    if cfg.modality is None:  # recorded in the checkpoint: score/screen keep only scans of this modality
        cfg = cfg.model_copy(update={"modality": "rgb" if cfg.preprocess.channels == 3 else modality})
    if cfg.preprocess.pose:  # the training volumes' mean head pose, stored with the preprocessing settings
        from patchrank.pipeline.data.discover import discover
        from patchrank.pipeline.data.pose import with_target

        cfg = with_target(cfg, discover(data, modality=modality))
    labelled = prepare_labelled(val_data, cfg, modality, show=show) if val_data else None

    def train_one(mcfg: TrainConfig, path: Path) -> str:
        if cfg.ensemble > 1:
            print(f"ensemble member {mcfg.seed - cfg.seed + 1}/{cfg.ensemble} (seed {mcfg.seed}) -> {path}")
        train, val = prepare_data(data, mcfg, modality, show=show)
        print(training_line(train, val, labelled, mcfg))
        if workers == 0:
            version = fit_local(train, val, mcfg, path, resume=resume, show=show, gpu=gpu, labelled=labelled)
            where = "in-process"
        else:
            from patchrank.deploy.train_launcher import launch

            res = launch(
                train,
                val,
                mcfg,
                path,
                workers=workers,
                gpu=gpu,
                address=address,
                resume=resume,
                storage=storage if storage is None or cfg.ensemble == 1 else f"{storage.rstrip('/')}/{path.stem}",
                max_failures=max_failures,
                cpus_per_worker=cpus_per_worker,
                labelled=labelled,
                progress_s=10.0 if show else 0.0,
            )
            version, where = res.model_version, f"Ray Train x{workers}, run {res.run_path}"
        curve = path.with_suffix(".curve.csv")
        print(f"done: checkpoint {path} (model_version {version}, {where}); learning curve {curve}")
        return version

    version = fit_members(cfg, out, train_one, resume=resume)
    if cfg.ensemble > 1:
        print(f"done: ensemble of {cfg.ensemble} trainings {out} (model_version {version}); members kept for --resume")
    return version


def training_line(train, val, labelled, cfg) -> str:
    """What the run trains on and for how many epochs, in one line (2D images are counted as images)."""
    import numpy as np

    from patchrank.pipeline.training.state import critic_epochs

    flat = bool(np.isnan(train.position).all())  # 2D images: one "slice" per image and subject

    def count(s, what: str) -> str:
        n = len(set(s.subjects))
        return f"{len(s)} {what} images" if flat else f"{len(s)} {what} slices ({n} subject{'s' * (n != 1)})"

    critic = critic_epochs(cfg)
    return (
        f"training on {count(train, 'normal')}; score statistics from "
        + (f"{count(val, 'held-out normal')} + the training ones" if val is not train else "the training ones")
        + (f"; val AUROC on {len(labelled)} labelled {'images' if flat else 'slices'}" if labelled is not None else "")
        + f"; {cfg.epochs} adversarial"
        + (f" + {critic} critic epochs ({cfg.epochs + critic} in all)" if critic else " epochs")
    )

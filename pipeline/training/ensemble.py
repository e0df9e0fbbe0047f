"""An ensemble (`ensemble: k` in the training settings): k trainings whose scores are averaged.

Member i is exactly the training `seed + i` would give on its own (weights, data order, masks, the
held-out subjects of its statistics). Each is written to `<out>.members/member<i>.pt` with its training
state, so `--resume` continues each member; then `model.checkpoint.save_ensemble` joins them into `out`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from patchrank.model.checkpoint import load_checkpoint, save_ensemble
from patchrank.pipeline.settings import TrainConfig


def member_config(cfg: TrainConfig, i: int) -> TrainConfig:
    """The settings member i trains with: the ensemble's, one training, seed + i."""
    return cfg.model_copy(update={"seed": cfg.seed + i, "ensemble": 1})


def member_paths(out: str | Path, k: int) -> list[Path]:
    out = Path(out)
    return [out.with_name(f"{out.name}.members") / f"member{i}.pt" for i in range(k)]


def fit_members(
    cfg: TrainConfig, out: str | Path, train_one: Callable[[TrainConfig, Path], str], *, resume: bool = False
) -> str:
    """train_one(settings, path) trains one model into path -> its model_version. With cfg.ensemble 1 that is
    `out` itself; otherwise each member into its own file, then the ensemble into `out`. resume: the member
    files found must be this ensemble's (checked before anything trains). -> model_version."""
    if cfg.ensemble == 1:
        return train_one(cfg, Path(out))
    paths = member_paths(out, cfg.ensemble)
    if resume:
        check_resumable(cfg, Path(out), paths)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        train_one(member_config(cfg, i), path)
    return save_ensemble(out, paths, meta={"train_config": json.loads(cfg.model_dump_json())})


def check_resumable(cfg: TrainConfig, out: Path, paths: list[Path]) -> None:
    """Refuse to resume an ensemble from files that are not its members (ValueError, one line)."""
    if out.exists() and not any(p.exists() for p in paths):
        raise ValueError(
            f"{out} has no ensemble members under {paths[0].parent} to resume; continue a single training with "
            f"--ensemble 1 --resume, or train the {cfg.ensemble} members without --resume"
        )
    for i, path in enumerate(paths):
        if path.exists():
            seed = load_checkpoint(path, validate=False).meta.get("train_config", {}).get("seed")
            if seed != cfg.seed + i:
                raise ValueError(
                    f"{path} was trained with seed {seed}; member {i} of this ensemble needs seed {cfg.seed + i} "
                    f"(--seed {cfg.seed}): remove {paths[0].parent} or give the seed it was trained with"
                )

"""Training state and checkpoints: the epoch plan (adversarial, then critic epochs), the optimizer /
mask-RNG state saved with every checkpoint, and restoring it on --resume or a Ray Train restart."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from patchrank.model.checkpoint import save_checkpoint
from patchrank.model.masks import BoxMaskGenerator
from patchrank.model.scoring import ScoreStats
from patchrank.pipeline.settings import TrainConfig

if TYPE_CHECKING:
    from patchrank.pipeline.training.loop import Place


def critic_epochs(cfg: TrainConfig) -> int:
    """Discriminator-only epochs after the adversarial ones (none without a discriminator)."""
    return cfg.critic_epochs if cfg.loss.use_discriminator else 0


def total_epochs(cfg: TrainConfig) -> int:
    return cfg.epochs + critic_epochs(cfg)


def save_trained(path, recon, disc, cfg: TrainConfig, stats: ScoreStats, meta: dict, train_state: dict | None) -> str:
    return save_checkpoint(
        path,
        recon,
        disc,
        preprocess=cfg.preprocess.saved(),
        scoring=cfg.saved_scoring(),
        stats=stats,
        meta={"train_config": json.loads(cfg.model_dump_json()), **meta},
        train_state=train_state,
    )


def train_state(opt_g, opt_d, masks: BoxMaskGenerator, epoch: int, gan_epochs: int, critic_done: int) -> dict:
    """epoch: the last finished epoch (0-based); gan_epochs / critic_done: how many of the
    epochs so far were adversarial, and critic epochs since the last adversarial one."""
    return {
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "masks": masks.state_dict(),
        "epoch": epoch,
        "gan_epochs": gan_epochs,
        "critic_epochs": critic_done,
    }


def phases_done(ts: dict | None) -> tuple[int, int]:
    """-> (adversarial epochs, critic epochs since the last adversarial one) of a saved training
    state; checkpoints from before the critic phase count every epoch as adversarial."""
    if ts is None:
        return 0, 0
    return int(ts.get("gan_epochs", int(ts["epoch"]) + 1)), int(ts.get("critic_epochs", 0))


def epoch_plan(cfg: TrainConfig, ts: dict | None) -> list[str]:
    """The phases still to run: adversarial epochs up to `cfg.epochs`, then the critic epochs.
    Resuming with more --epochs after a finished run trains more adversarial epochs and then a
    full critic phase again (the discriminator moved); a run stopped inside its critic phase
    finishes it."""
    gan_done, critic_done = phases_done(ts)
    if gan_done < cfg.epochs:
        critic_done = 0
    return ["gan"] * max(0, cfg.epochs - gan_done) + ["critic"] * max(0, critic_epochs(cfg) - critic_done)


def restore_train_state(ts: dict | None, opt_g, opt_d, masks: BoxMaskGenerator, place: Place) -> int:
    """Load optimizer and mask-RNG state saved by `fit_loop`; returns the epoch to start at."""
    if not ts:
        raise ValueError("checkpoint has no training state (optimizer, epoch) to resume from")
    opt_g.load_state_dict(ts["opt_g"])
    opt_d.load_state_dict(ts["opt_d"])
    per_rank = ts.get("masks_by_rank")
    if per_rank and len(per_rank) == place.world:
        masks.load_state_dict(per_rank[place.rank])
    elif place.rank == 0:
        masks.load_state_dict(ts["masks"])
    return int(ts["epoch"]) + 1

"""Training loop pieces shared by local training and every Ray Train worker.

`run_epoch` is the only loop over batches; it calls model.train_step.gan_step, the
only GAN step. Local training (`fit_local`) and the Ray Train worker loop
(actors/train_worker.py) both drive it, so the training logic exists once.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from model.checkpoint import save_checkpoint
from model.discriminator import PatchDiscriminator
from model.masks import BoxMaskGenerator
from model.reconstructor import MaskedReconstructor
from model.scoring import ScoreStats, fit_score_stats
from model.train_step import gan_step
from pipeline.datasets import SliceSet
from pipeline.settings import TrainConfig


def build_models(cfg: TrainConfig) -> tuple[MaskedReconstructor, PatchDiscriminator]:
    torch.manual_seed(cfg.seed)
    c = cfg.preprocess.channels
    recon = MaskedReconstructor(c, cfg.arch.base_channels, cfg.arch.depth)
    disc = PatchDiscriminator(c, cfg.arch.disc_channels, cfg.arch.disc_layers)
    return recon, disc


def build_optimizers(recon, disc, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    opt_g = torch.optim.Adam(recon.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))
    return opt_g, opt_d


def build_mask_generator(cfg: TrainConfig, seed_offset: int = 0) -> BoxMaskGenerator:
    m = cfg.masks
    scoring = cfg.scoring.to_model(cfg.preprocess.image_size)
    return BoxMaskGenerator(
        min_boxes=m.min_boxes,
        max_boxes=m.max_boxes,
        min_size=m.min_size,
        max_size=m.max_size,
        grid_prob=m.grid_prob,
        grid_cell=scoring.grid_cell,
        grid_period=max(1, scoring.grid_period),
        seed=cfg.seed + seed_offset,
    )


def batches(images: np.ndarray, batch_size: int, seed: int, epoch: int, flip: bool = True) -> Iterable[torch.Tensor]:
    """Seeded shuffle + random left-right flip. images: (N, C, H, W) -> (B, C, H, W) batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = images[idx].copy()
        if flip:
            f = rng.random(len(idx)) < 0.5
            x[f] = x[f][..., ::-1]
        yield torch.from_numpy(np.ascontiguousarray(x))


def run_epoch(
    recon,
    disc,
    opt_g,
    opt_d,
    data: Iterable[torch.Tensor],
    masks: BoxMaskGenerator,
    cfg: TrainConfig,
    *,
    device: torch.device = torch.device("cpu"),
    amp: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """One pass over `data`; returns mean metrics plus images/s."""
    recon.train()
    disc.train()
    step_cfg = cfg.loss.to_model()
    sums: dict[str, float] = {}
    n_img, n_steps, t0 = 0, 0, time.perf_counter()
    for x in data:
        b, _, h, w = x.shape
        mask = masks(b, h, w) if cfg.loss.use_masking else torch.zeros(b, 1, h, w)
        m = gan_step(recon, disc, opt_g, opt_d, x.to(device), mask.to(device), step_cfg, amp=amp)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
        n_img += b
        n_steps += 1
        if on_step is not None:
            on_step(m)
    secs = time.perf_counter() - t0
    out = {k: v / max(n_steps, 1) for k, v in sums.items()}
    out.update(images=n_img, seconds=secs, images_per_s=n_img / max(secs, 1e-9))
    return out


def score_stats(recon, disc, val: SliceSet, cfg: TrainConfig, device=torch.device("cpu"), batch_size: int = 32) -> ScoreStats:
    """Fit the checkpoint's normalisation statistics on normal validation slices."""
    recon.eval()
    disc.eval()
    keep = np.flatnonzero(val.labels == 0)[: cfg.max_val_slices]
    if keep.size == 0:
        raise ValueError("no normal validation slices to fit score statistics on")
    scoring = cfg.scoring.to_model(cfg.preprocess.image_size)

    def gen():
        for s in range(0, len(keep), batch_size):
            idx = keep[s : s + batch_size]
            yield torch.from_numpy(val.images[idx]).to(device), torch.from_numpy(val.foreground[idx]).to(device)

    return fit_score_stats(recon, disc, gen(), scoring)


def save_trained(path, recon, disc, cfg: TrainConfig, stats: ScoreStats, meta: dict, train_state: dict | None) -> str:
    return save_checkpoint(
        path,
        recon,
        disc,
        preprocess=cfg.preprocess.model_dump(),
        scoring=cfg.scoring.to_model(cfg.preprocess.image_size),
        stats=stats,
        meta={"train_config": json.loads(cfg.model_dump_json()), **meta},
        train_state=train_state,
    )


def train_state(opt_g, opt_d, masks: BoxMaskGenerator, epoch: int) -> dict:
    return {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "masks": masks.state_dict(), "epoch": epoch}


@dataclass
class CurveLog:
    """Learning curve as CSV next to the checkpoint: one row per epoch."""

    path: Path

    def write(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

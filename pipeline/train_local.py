"""Single-process training (`patchrank train --workers 0`): same epoch loop as Ray Train."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from model.checkpoint import load_checkpoint
from pipeline.datasets import SliceSet, build_slices, split_by_subject
from pipeline.discover import discover
from pipeline.settings import TrainConfig
from pipeline.training import (
    CurveLog,
    batches,
    build_mask_generator,
    build_models,
    build_optimizers,
    run_epoch,
    save_trained,
    score_stats,
    train_state,
)

log = logging.getLogger("patchrank.train")


def prepare_data(data: str | Path, cfg: TrainConfig, modality: str = "flair", show: bool = True) -> tuple[SliceSet, SliceSet]:
    """Normal slices only, split by subject -> (train, val)."""
    records = discover(data, modality=modality)
    train_recs, val_recs = split_by_subject(records, cfg.val_fraction, cfg.seed)
    bar = (lambda it: tqdm(it, desc="loading scans", unit="scan", leave=False)) if show else None
    train = build_slices(train_recs, cfg.preprocess, normal_only=True, progress=bar)
    val = build_slices(val_recs, cfg.preprocess, normal_only=True, progress=bar) if val_recs else train
    if len(train) == 0:
        raise ValueError(f"no normal training slices found in {data}")
    return train, val


def fit_local(train: SliceSet, val: SliceSet, cfg: TrainConfig, out: str | Path, *, resume: bool = False, show: bool = True) -> str:
    """Train in-process; checkpoint every epoch (atomic); returns the model_version."""
    out = Path(out)
    recon, disc = build_models(cfg)
    opt_g, opt_d = build_optimizers(recon, disc, cfg)
    masks = build_mask_generator(cfg)
    start = 0
    if resume and out.exists():
        ck = load_checkpoint(out)
        if not ck.train_state:
            raise ValueError(f"{out} has no training state to resume from")
        recon.load_state_dict(ck.recon.state_dict())
        disc.load_state_dict(ck.disc.state_dict())
        opt_g.load_state_dict(ck.train_state["opt_g"])
        opt_d.load_state_dict(ck.train_state["opt_d"])
        masks.load_state_dict(ck.train_state["masks"])
        start = int(ck.train_state["epoch"]) + 1
        log.info("resuming from %s at epoch %d", out, start)
    curve = CurveLog(out.with_suffix(".curve.csv"))
    n_batches = -(-len(train) // cfg.batch_size)
    version = ""
    for epoch in range(start, cfg.epochs):
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not show, leave=False)

        def on_step(m: dict) -> None:
            bar.update(1)
            bar.set_postfix(rec=f"{m['loss_rec']:.4f}", d=f"{m.get('loss_d', 0):.3f}")

        t0 = time.perf_counter()
        metrics = run_epoch(recon, disc, opt_g, opt_d, batches(train.images, cfg.batch_size, cfg.seed, epoch), masks, cfg, on_step=on_step)
        bar.close()
        stats = score_stats(recon, disc, val, cfg)
        row = {"epoch": epoch + 1, **{k: round(v, 6) for k, v in metrics.items()}, "val_image_mean": stats.image_mean, "val_image_std": stats.image_std, "epoch_seconds": round(time.perf_counter() - t0, 2)}
        curve.write(row)
        meta = {"epochs_done": epoch + 1, "n_train_slices": len(train), "n_val_slices": int((val.labels == 0).sum())}
        version = save_trained(out, recon, disc, cfg, stats, meta, train_state(opt_g, opt_d, masks, epoch))
        if show:
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}  loss_rec {metrics['loss_rec']:.4f}  loss_adv {metrics['loss_adv']:.4f}  "
                f"loss_d {metrics.get('loss_d', 0):.4f}  {metrics['images_per_s']:.1f} img/s"
            )
    if not version:
        version = load_checkpoint(out).model_version
    return version

"""Training loop pieces shared by local training and every Ray Train worker.

`fit_loop` is the only epoch loop; `run_epoch` loops over batches calling
model.train_step.gan_step, the only GAN step, and in the critic epochs that follow
`run_critic_epoch` calls model.train_step.critic_step. In-process training
(pipeline.training.local.fit_local) and every Ray Train worker
(actors.train_worker.train_loop_per_worker) run `fit_loop`; they differ only in the
`Place` (rank, world, device, DDP wrapping, metric reduction) and the `Reporter`
(progress, checkpoint file vs ray.train.report), so the training logic exists once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from patchrank.model.discriminator import PatchDiscriminator
from patchrank.model.masks import BoxMaskGenerator
from patchrank.model.reconstructor import MaskedReconstructor
from patchrank.model.scoring import ScoreStats, fit_score_stats
from patchrank.model.train_step import critic_step, gan_step
from patchrank.pipeline.data.datasets import SliceSet, slice_digests
from patchrank.pipeline.settings import TrainConfig
from patchrank.pipeline.training.report import Reporter
from patchrank.pipeline.training.state import (
    epoch_plan,
    phases_done,
    restore_train_state,
    save_trained,
    train_state,
)


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
    scoring = cfg.saved_scoring()
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


def n_batches(n_images: int, batch_size: int, world: int = 1) -> int:
    """Steps per epoch on every rank (the same on all ranks, see `batches`)."""
    shard = -(-n_images // world)  # ceil
    return -(-shard // batch_size)


def batches(
    images: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    flip: bool = True,
    *,
    rank: int = 0,
    world: int = 1,
) -> Iterable[torch.Tensor]:
    """Seeded shuffle + random left-right flip, sharded like torch's DistributedSampler.

    images: (N, C, H, W) -> batches (B, C, H, W). Every rank draws the same epoch
    permutation and flip decisions from (seed, epoch), wraps the order around to a
    multiple of `world` and takes positions rank, rank + world, ... So all ranks run the
    same number of steps (DDP needs that) and together see every image once per epoch.
    world=1 is plain seeded shuffling (the in-process path).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(images))
    flips = rng.random(len(order)) < 0.5 if flip else np.zeros(len(order), dtype=bool)
    total = -(-len(order) // world) * world
    order, flips = np.resize(order, total)[rank::world], np.resize(flips, total)[rank::world]
    for start in range(0, len(order), batch_size):
        sl = slice(start, start + batch_size)
        idx, f = order[sl], flips[sl]
        x = images[idx].copy()
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
    """One pass over `data`; returns mean metrics plus images, seconds, images/s (wall) and
    images per CPU-second of this process."""
    recon.train()
    disc.train()
    step_cfg = cfg.loss

    def step(x: torch.Tensor) -> dict:
        b, _, h, w = x.shape
        mask = masks(b, h, w) if cfg.loss.use_masking else torch.zeros(b, 1, h, w)
        return gan_step(recon, disc, opt_g, opt_d, x.to(device), mask.to(device), step_cfg, amp=amp)

    return _timed_loop(data, step, on_step)


def run_critic_epoch(
    recon,
    disc,
    opt_d,
    data: Iterable[torch.Tensor],
    cfg: TrainConfig,
    *,
    device: torch.device = torch.device("cpu"),
    amp: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """One pass of `critic_step` over `data` (the reconstructor frozen); metrics as `run_epoch`."""
    recon.eval()
    disc.train()
    step_cfg, scoring = cfg.loss, cfg.saved_scoring()
    return _timed_loop(
        data, lambda x: critic_step(recon, disc, opt_d, x.to(device), scoring, step_cfg, amp=amp), on_step
    )


def _timed_loop(data: Iterable[torch.Tensor], step: Callable[[torch.Tensor], dict], on_step) -> dict[str, float]:
    """step(batch) over `data` -> mean metrics plus images, seconds, images/s (wall) and images per
    CPU-second of this process (robust to a busy machine)."""
    sums: dict[str, float] = {}
    n_img, n_steps, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    for x in data:
        m = step(x)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
        n_img += len(x)
        n_steps += 1
        if on_step is not None:
            on_step(m)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {k: v / max(n_steps, 1) for k, v in sums.items()}
    out.update(
        images=n_img,
        seconds=secs,
        images_per_s=n_img / max(secs, 1e-9),
        cpu_seconds=cpu,
        images_per_cpu_s=n_img / max(cpu, 1e-9),
    )
    return out


def sample_indices(selected: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices where `selected` is True; a seeded sample of at most `cap` of them, in order."""
    keep = np.flatnonzero(selected)
    if keep.size > cap:
        keep = np.sort(np.random.default_rng(seed).choice(keep, cap, replace=False))
    return keep


def score_stats(
    recon,
    disc,
    val: SliceSet,
    cfg: TrainConfig,
    device=torch.device("cpu"),
    batch_size: int = 32,
    train: SliceSet | None = None,
) -> ScoreStats:
    """Fit the checkpoint's normalisation statistics on normal slices of the held-out validation
    subjects and of the training subjects (each capped at `max_val_slices`)."""
    recon.eval()
    disc.eval()
    sets = [val] + ([train] if train is not None and train is not val else [])
    parts = [(ss, sample_indices(ss.labels == 0, cfg.max_val_slices, cfg.seed)) for ss in sets]
    if not parts[0][1].size:
        raise ValueError("no normal validation slices to fit score statistics on")
    scoring = cfg.saved_scoring()

    def gen():
        for ss, keep in parts:
            for s in range(0, len(keep), batch_size):
                idx = keep[s : s + batch_size]
                yield (
                    torch.from_numpy(ss.images[idx]).to(device),
                    torch.from_numpy(ss.foreground[idx]).to(device),
                    torch.from_numpy(np.asarray(ss.position[idx], dtype=np.float32)),
                )

    return fit_score_stats(recon, disc, gen(), scoring)


def _identity(x):
    return x


@dataclass
class Place:
    """Where one training process runs. The defaults are the in-process path (no
    torch.distributed); a Ray Train worker sets rank/world, wraps the networks with
    `ray.train.torch.prepare_model` (DDP) and reduces metrics across ranks."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    amp: bool = False  # bf16 autocast in gan_step (CUDA only)
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = _identity  # moves to device (+ DDP)
    reduce: Callable[[dict], dict] = _identity  # epoch metrics -> metrics over all ranks
    gather: Callable[[dict], list] = lambda state: [state]  # a dict of tensors -> one per rank, in rank order


def val_auroc(
    recon, disc, stats: ScoreStats, labelled: SliceSet | None, cfg: TrainConfig, device, batch_size: int = 32
) -> float | None:
    """Slice-level AUROC of the image score on labelled validation slices (None if one class is missing)."""
    from patchrank.model.scoring import score_images
    from patchrank.pipeline.evaluation.metrics import auroc

    if labelled is None:
        return None
    keep = sample_indices(labelled.labels >= 0, cfg.max_val_slices, cfg.seed)
    y = labelled.labels[keep]
    if not (0 < y.sum() < len(y)):
        return None
    recon.eval()
    disc.eval()
    scoring = cfg.saved_scoring()
    out = []
    for s in range(0, len(keep), batch_size):
        idx = keep[s : s + batch_size]
        x, fg = torch.from_numpy(labelled.images[idx]).to(device), torch.from_numpy(labelled.foreground[idx]).to(device)
        pos = torch.from_numpy(np.asarray(labelled.position[idx], dtype=np.float32))
        out.append(
            score_images(recon, disc, x, cfg=scoring, stats=stats, foreground=fg, position=pos)
            .image_scores.float()
            .cpu()
        )
    return auroc(y, torch.cat(out).numpy())


def fit_loop(
    train: SliceSet,
    val: SliceSet,
    cfg: TrainConfig,
    reporter: Reporter,
    *,
    place: Place = Place(),
    state=None,
    labelled: SliceSet | None = None,
) -> None:
    """THE training loop of every path: epochs of `run_epoch` (on this rank's shard), then on
    rank 0 score statistics, optional validation AUROC and a checkpoint via `save_trained`.

    state: a LoadedModel to continue from (weights, optimizers, mask RNG, epoch) or None.
    """
    recon, disc = build_models(cfg)
    if state is not None:
        recon.load_state_dict(state.recon.state_dict())
        disc.load_state_dict(state.disc.state_dict())
    recon, disc = place.wrap(recon), place.wrap(disc)
    plain_r, plain_d = getattr(recon, "module", recon), getattr(disc, "module", disc)
    opt_g, opt_d = build_optimizers(recon, disc, cfg)
    masks = build_mask_generator(cfg, seed_offset=place.rank)
    start = restore_train_state(state.train_state, opt_g, opt_d, masks, place) if state is not None else 0
    steps = n_batches(len(train), cfg.batch_size, place.world)
    stats = state.stats if state is not None else None
    ts0 = state.train_state if state is not None else None
    plan = epoch_plan(cfg, ts0)
    gan_done, critic_done = phases_done(ts0)
    last = start + len(plan) - 1
    reporter.total = last + 1
    seen: list[str] = []
    if place.rank == 0:  # with the slices of the checkpoint continued from (fine-tuning on other data)
        earlier = set(state.meta.get("seen_slices", ())) if state is not None else set()
        seen = sorted(earlier | set(slice_digests(train.images)) | set(slice_digests(val.images)))
    for epoch, phase in zip(range(start, last + 1), plan):
        reporter.start_epoch(epoch, steps)
        t0 = time.perf_counter()
        critic = phase == "critic"
        for group in opt_d.param_groups:  # (a saved optimizer state carries the other phase's rate)
            group["lr"] = cfg.lr_critic if critic else cfg.lr_d
        if critic and critic_done == 0:  # the critic phase starts with fresh Adam moments
            opt_d.state.clear()
        gan_done, critic_done = (gan_done, critic_done + 1) if critic else (gan_done + 1, 0)
        if critic:  # the critic epochs see clean images: what scoring sees
            data = batches(train.images, cfg.batch_size, cfg.seed, epoch, rank=place.rank, world=place.world)
            m = run_critic_epoch(
                recon, disc, opt_d, data, cfg, device=place.device, amp=place.amp, on_step=reporter.step
            )
        else:
            data = batches(train.images, cfg.batch_size, cfg.seed, epoch, rank=place.rank, world=place.world)
            m = run_epoch(
                recon, disc, opt_g, opt_d, data, masks, cfg, device=place.device, amp=place.amp, on_step=reporter.step
            )
        m = place.reduce(m)
        mask_states = place.gather(masks.state_dict())
        row = {"epoch": epoch + 1, "phase": phase, **{k: round(float(v), 6) for k, v in m.items()}}
        save = None
        if place.rank == 0:
            # Statistics cost a masked forward over up to 2 x max_val_slices slices: fitted on the
            # first and last epoch and every `stats_every`; other checkpoints carry the latest ones.
            if stats is None or epoch == last or (epoch + 1) % cfg.stats_every == 0:
                stats = score_stats(plain_r, plain_d, val, cfg, place.device, train=train)
                auc = val_auroc(plain_r, plain_d, stats, labelled, cfg, place.device)
                if auc is not None:
                    row["val_auroc"] = round(auc, 6)
            row.update(val_image_mean=stats.image_mean, val_image_std=stats.image_std)
            row["epoch_seconds"] = round(time.perf_counter() - t0, 2)
            ts = train_state(opt_g, opt_d, masks, epoch, gan_done, critic_done)
            if place.world > 1:
                ts["masks_by_rank"] = mask_states
            meta = {
                "epochs_done": epoch + 1,
                "n_train_slices": len(train),
                "n_val_slices": int((val.labels == 0).sum()),
                "workers": place.world,
                "seen_slices": seen,
            }

            def save(path, stats=stats, meta=meta, ts=ts) -> str:
                return save_trained(path, plain_r, plain_d, cfg, stats, meta, ts)

        reporter.end_epoch(epoch, row, save)

"""Single-process training (`patchrank train --workers 0`): same epoch loop as Ray Train."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from patchrank.model.checkpoint import load_checkpoint
from patchrank.pipeline.data.datasets import SliceSet, build_slices, split_by_subject
from patchrank.pipeline.data.discover import discover
from patchrank.pipeline.settings import TrainConfig
from patchrank.pipeline.training.loop import Place, fit_loop
from patchrank.pipeline.training.report import CurveLog, Reporter, epoch_line
from patchrank.pipeline.training.state import epoch_plan

log = logging.getLogger("patchrank.train")


def prepare_data(
    data: str | Path, cfg: TrainConfig, modality: str = "flair", show: bool = True
) -> tuple[SliceSet, SliceSet]:
    """Normal slices only, split by subject -> (train, val)."""
    records = discover(data, modality=modality)
    train_recs, val_recs = split_by_subject(records, cfg.val_fraction, cfg.seed)
    bar = (lambda it: tqdm(it, desc="loading scans", unit="scan", leave=False, disable=None)) if show else None
    train = build_slices(train_recs, cfg.preprocess, normal_only=True, progress=bar)
    val = build_slices(val_recs, cfg.preprocess, normal_only=True, progress=bar) if val_recs else train
    if len(train) == 0:
        raise ValueError(f"no normal training slices found in {data}")
    return train, val


def prepare_labelled(data: str | Path, cfg: TrainConfig, modality: str = "flair", show: bool = True) -> SliceSet:
    """Every slice (normal and abnormal, labels 0/1, -1 = unknown) of a labelled validation set, for val AUROC."""
    bar = (
        (lambda it: tqdm(it, desc="loading labelled val scans", unit="scan", leave=False, disable=None))
        if show
        else None
    )
    return build_slices(discover(data, modality=modality), cfg.preprocess, normal_only=False, progress=bar)


class LocalReporter(Reporter):
    """In-process progress bar, learning-curve CSV and checkpoint file after every epoch."""

    def __init__(self, out: Path, cfg: TrainConfig, show: bool) -> None:
        self.out, self.cfg, self.show = out, cfg, show
        self.curve = CurveLog(out.with_suffix(".curve.csv"))
        self.version = ""
        self.bar = None

    def start_epoch(self, epoch: int, n_steps: int) -> None:
        self.bar = tqdm(
            total=n_steps,
            desc=f"epoch {epoch + 1}/{self.total}",
            unit="batch",
            leave=False,
            disable=None if self.show else True,
        )  # None: no per-batch bar when stderr is not a terminal (logs); epoch lines still print

    def step(self, m: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(rec=f"{m.get('loss_rec', float('nan')):.4f}", d=f"{m.get('loss_d', 0):.3f}")

    def end_epoch(self, epoch: int, row: dict, save) -> None:
        self.bar.close()
        self.curve.write(row)
        self.version = save(self.out)
        if self.show:
            tqdm.write(epoch_line(row, self.total))


def pick_device(gpu: bool) -> torch.device:
    if not gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--gpu given but torch sees no CUDA device")
    return torch.device("cuda")


def fit_local(
    train: SliceSet,
    val: SliceSet,
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    show: bool = True,
    gpu: bool = False,
    labelled: SliceSet | None = None,
) -> str:
    """Train in-process (no torch.distributed); checkpoint every epoch (atomic); returns the model_version.

    resume: continue from `out`'s weights, optimizer state, mask RNG and epoch.
    gpu: one CUDA device with bf16 autocast. labelled: slices with 0/1 labels for val AUROC.
    """
    out = Path(out)
    state = None
    if resume and out.exists():
        state = load_checkpoint(out)
        if state.extra:
            k = len(state.members)
            raise ValueError(f"{out} is an ensemble of {k} trainings: resume it with --ensemble {k}")
        if not state.train_state:
            raise ValueError(f"{out} has no training state to resume from")
        done = int(state.train_state["epoch"]) + 1
        if not epoch_plan(cfg, state.train_state):
            (print if show else log.info)(
                f"{out} has already trained {done} epoch(s): nothing to train (raise --epochs to train more)"
            )
            return state.model_version
        log.info("resuming from %s after epoch %d", out, done)
    elif resume:
        log.info("nothing to resume at %s; starting from scratch", out)
    device = pick_device(gpu)
    place = Place(device=device, amp=device.type == "cuda", wrap=lambda m: m.to(device))
    reporter = LocalReporter(out, cfg, show)
    if state is None:
        reporter.curve.path.unlink(missing_ok=True)  # a fresh run starts a fresh learning curve
    fit_loop(train, val, cfg, reporter, place=place, state=state, labelled=labelled)
    return reporter.version or load_checkpoint(out).model_version

"""What a training run tells the outside world: the Reporter interface `fit_loop` calls (progress,
checkpoint writing), the per-epoch progress line and the learning curve CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CurveLog:
    """Learning curve as CSV next to the checkpoint: one row per epoch."""

    path: Path

    def write(self, row: dict) -> None:
        header = ""
        if self.path.exists():
            with self.path.open(newline="") as f:
                header = f.readline()  # the columns are all append_curve_row needs
        with self.path.open("a", newline="") as f:
            f.write(append_curve_row(header, row)[len(header) :])


def append_curve_row(text: str, row: dict) -> str:
    """CSV text + one epoch row. The first row's columns are the header; a later row fills the
    columns it has (a critic epoch has no reconstruction loss, an epoch without fresh statistics
    no val_auroc) and leaves the rest empty, so every column stays aligned."""
    header = next(csv.reader(io.StringIO(text)), None) if text else None
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header or list(row), restval="", extrasaction="ignore", lineterminator="\n")
    if header is None:
        w.writeheader()
    w.writerow(row)
    return text + buf.getvalue()


class Reporter:
    """What the loop tells the outside world (progress bar / Ray report); no-op base.
    `total`: the number of the run's last epoch, set by `fit_loop` before the first one."""

    total: int = 0

    def start_epoch(self, epoch: int, n_steps: int) -> None:
        pass

    def step(self, metrics: dict) -> None:
        pass

    def end_epoch(self, epoch: int, row: dict, save: Callable[[str | Path], str] | None) -> None:
        """row: the epoch's metrics; save(path) writes the checkpoint (rank 0 only, else None)."""


def epoch_line(row: dict, epochs: int) -> str:
    """One human-readable progress line per epoch (the same for every path)."""
    auc = f"  val_auroc {row['val_auroc']:.3f}" if "val_auroc" in row else ""
    if row.get("phase") == "critic":
        return (
            f"epoch {row['epoch']}/{epochs} (critic)  loss_d {row['loss_d']:.4f}  {row['images_per_s']:.1f} img/s{auc}"
        )
    return (
        f"epoch {row['epoch']}/{epochs}  loss_rec {row['loss_rec']:.4f}  loss_adv {row['loss_adv']:.4f}  "
        f"loss_d {row.get('loss_d', 0):.4f}  {row['images_per_s']:.1f} img/s{auc}"
    )

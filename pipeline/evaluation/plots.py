"""Figures for `patchrank evaluate`: ROC curve and a montage of the top-scoring slices.

matplotlib with the non-interactive Agg backend; imported lazily so the CLI stays fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from patchrank.pipeline.evaluation import metrics
from patchrank.pipeline.evaluation.harness import EvalData


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_png(data: EvalData, path: str | Path, title: str = "PatchRank") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    y, s = data.labels, data.scores
    curves = [("all slices", y, s)]
    if data.small is not None and data.small.any():
        sel = (y == 0) | data.small
        curves.append(("small lesions", y[sel], s[sel]))
    for label, yy, ss in curves:
        if metrics.safe(metrics.auroc, yy, ss) is None:
            continue
        fpr, tpr, _ = metrics.roc_curve(yy, ss)
        ax.plot(fpr, tpr, label=f"{label} (AUROC {metrics.auroc(yy, ss):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _to_model(mask: np.ndarray, size: int) -> np.ndarray:
    """Native (H0, W0) mask -> (size, size), same square padding as preprocessing."""
    h, w = mask.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = F.pad(t, (left, side - w - left, top, side - h - top))
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5


def _display(img: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) gray or (H, W, 3) RGB in [0, 1]."""
    x = (img + 1) / 2
    return np.clip(x[0] if x.shape[0] != 3 else x.transpose(1, 2, 0), 0, 1)


def montage_png(data: EvalData, path: str | Path, top: int = 8, boxes: int = 3) -> None:
    """Top-scoring slices: image | heatmap + ranked patch boxes | ground truth (if any)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    order = np.argsort(-data.scores)[:top]
    has_gt = any(data.gt[i] is not None for i in order)
    cols = 3 if has_gt else 2
    fig, axes = plt.subplots(len(order), cols, figsize=(2.4 * cols, 2.4 * len(order)), dpi=100, squeeze=False)
    for row, i in enumerate(order):
        img = _display(data.images[i])
        size = img.shape[0]
        gray = dict(cmap="gray", vmin=0, vmax=1) if img.ndim == 2 else {}
        verdict = "abnormal" if data.labels[i] == 1 else "normal"
        axes[row, 0].imshow(img, **gray)
        axes[row, 0].set_title(f"#{row + 1} {data.names[i]} ({verdict})\nscore {data.scores[i]:.2f}", fontsize=7)
        axes[row, 1].imshow(img, **gray)
        if data.maps is not None:
            m = data.maps[i]
            lo, hi = np.percentile(m, [50, 99.8])
            axes[row, 1].imshow(np.clip((m - lo) / max(hi - lo, 1e-6), 0, 1), cmap="inferno", alpha=0.55)
        if data.patches is not None:
            p = data.patches[i]
            cell = size // p.shape[-1]
            flat = np.argsort(-p.ravel())[:boxes]
            for rank, f in enumerate(flat, start=1):
                if not np.isfinite(p.ravel()[f]):
                    break
                r, c = divmod(int(f), p.shape[-1])
                axes[row, 1].add_patch(
                    Rectangle((c * cell - 0.5, r * cell - 0.5), cell, cell, fill=False, ec="cyan", lw=1)
                )
                axes[row, 1].text(c * cell, r * cell - 1, str(rank), color="cyan", fontsize=6)
        axes[row, 1].set_title("anomaly map + top patches", fontsize=7)
        if has_gt:
            axes[row, 2].imshow(img, **gray)
            if data.gt[i] is not None:
                axes[row, 2].imshow(
                    np.ma.masked_where(~_to_model(data.gt[i], size), np.ones((size, size))),
                    cmap="autumn",
                    alpha=0.6,
                    vmin=0,
                    vmax=1,
                )
            axes[row, 2].set_title("ground truth", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

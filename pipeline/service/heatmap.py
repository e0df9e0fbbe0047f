"""Per-scan heatmap PNG: the scan's most suspicious slices with ranked patch boxes.

Reads the scan from its stored uri (native resolution), paints the stored patch scores
of the scan (patches table) as a heat overlay and outlines the top patches, numbered
by rank. One panel per distinct slice among the top patches (at most `panels`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patchrank.pipeline.data.loaders import Scan, load_scan
from patchrank.pipeline.data.storage import fetch, is_s3
from patchrank.pipeline.service.results import ResultStore


def _load(uri: str, endpoint: str | None, series_uid: str | None = None) -> Scan:
    """The scan of a result row: a file or a DICOM series (its folder + uid), local or on s3:// (copied
    to a temp folder first)."""
    if not is_s3(uri):
        return load_scan(uri, series_uid=series_uid)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="patchrank-heatmap-") as tmp:
        if series_uid is not None:
            from patchrank.pipeline.data.dicom_s3 import fetch_series

            return load_scan(fetch_series(uri, series_uid, Path(tmp), endpoint), series_uid=series_uid)
        return load_scan(fetch(uri, tmp, endpoint))


def render_scan_png(
    store: ResultStore,
    scan_id: str,
    out: str | Path,
    *,
    boxes: int = 5,
    panels: int = 3,
    model_version: str | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    row = store.scan(scan_id, model_version)
    if row["status"] != "ok":
        raise ValueError(f"scan {scan_id} has status {row['status']}: {row['error']}")
    patches = [
        p for p in store.patches_of(row["result_id"], 1000) if p["score"] is not None and np.isfinite(p["score"])
    ]
    if not patches:
        raise ValueError(f"scan {scan_id} has no scored patches with a finite score")
    arr = _load(row["uri"], store.endpoint, row.get("series_uid")).array[0]  # (H, W, S) first channel
    slices = list(dict.fromkeys(p["slice_index"] for p in patches[:boxes]))[:panels]
    fig, axes = plt.subplots(1, len(slices), figsize=(4.2 * len(slices), 4.6), squeeze=False)
    lo_all = min(p["score"] for p in patches)
    hi_all = max(p["score"] for p in patches)
    for ax, s in zip(axes[0], slices):
        img = arr[..., s]
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray", interpolation="nearest")
        heat = np.full(img.shape, np.nan, dtype=np.float32)
        for p in patches:
            if p["slice_index"] == s:
                heat[p["y0"] : p["y1"], p["x0"] : p["x1"]] = np.fmax(
                    heat[p["y0"] : p["y1"], p["x0"] : p["x1"]], p["score"]
                )
        ax.imshow(heat, cmap="inferno", alpha=0.45, vmin=lo_all, vmax=hi_all, interpolation="nearest")
        for p in patches[:boxes]:
            if p["slice_index"] != s:
                continue
            ax.add_patch(
                Rectangle(
                    (p["x0"] - 0.5, p["y0"] - 0.5),
                    p["x1"] - p["x0"],
                    p["y1"] - p["y0"],
                    fill=False,
                    edgecolor="cyan",
                    linewidth=1.5,
                )
            )
            ax.text(p["x0"], p["y0"] - 1, f"#{p['rank']} {p['score']:.1f}", color="cyan", fontsize=8, va="bottom")
        ax.set_title(f"slice {s}")
        ax.axis("off")
    score = row["scan_score"]
    shown = f"{score:.2f}" if score is not None and np.isfinite(score) else "n/a"  # ok rows of older versions
    fig.suptitle(f"scan {scan_id[:12]}  score {shown}  model {row['model_version']}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

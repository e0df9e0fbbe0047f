"""Pass 28: are the brain maps aligned with the labels? One outer fold of the registered seed-0 split.

Pixel AUROC of the fold (pass 23's pixels: foreground of the labelled slices plus every tumour pixel, native grid)
with the map moved by dy, dx in -2..2 native pixels against the labels. A map offset from its labels (a resampling
convention, the pose's inverse) would score best away from (0, 0).

    python docs/quality/brain/pass28/shift.py --models DIR --fold N   (N = 1, 2, 3)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pass23"))
from errors import fold_args, fold_scores  # noqa: E402

from patchrank.pipeline.data.preprocess import to_native  # noqa: E402

SHIFTS = (-2, -1, 0, 1, 2)


def main() -> None:
    args = fold_args(__doc__)
    _, fold, data = fold_scores(args)
    maps, labels, region, start = [], [], [], 0
    for t in fold.test:
        p, keep = t.prep, np.flatnonzero(t.labels >= 0)
        if not keep.size:  # the harness skips scans without labelled slices
            continue
        maps.append(to_native(data.maps[start : start + keep.size], p.native_shape))
        start += keep.size
        gt = p.labels[keep]
        labels.append(gt)
        region.append((to_native(p.foreground[keep, 0].astype(np.float32), p.native_shape) > 0.5) | gt)
    y = np.concatenate([g[r] for g, r in zip(labels, region)])
    print(f"fold {args.fold}: pixel AUROC with the map moved by dy (rows) and dx (columns {SHIFTS}) native px")
    for dy in SHIFTS:
        auc = [
            roc_auc_score(y, np.concatenate([np.roll(m, (dy, dx), axis=(1, 2))[r] for m, r in zip(maps, region)]))
            for dx in SHIFTS
        ]
        print(f"  dy {dy:+d}: " + " ".join(f"{a:.5f}" for a in auc))


if __name__ == "__main__":
    main()

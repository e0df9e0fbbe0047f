"""Can pitch (tilt about the left-right axis) be estimated well enough to correct? Leave-one-out on the six
registered BraTS 2015 volumes: each volume's pitch against a template made of the other five, as distributed
(truth 0) and tilted by known angles (truth: its own registered estimate minus the applied angle).

Two estimates, both a search over rotations in the sagittal plane (0.5-degree steps, +-25 degrees):
  silhouette: the brain mask's sagittal silhouette (any over L-R), 2 mm, centred; best intersection over union;
  midplane:   the FLAIR (z-scored inside the brain) averaged over the central 11 mm, 2 mm, smoothed 2 mm;
              best correlation, with +-4 mm shifts.
Run from the repository root: .venv/bin/python docs/quality/brain/pitch/feasibility.py (~2 min, 1 core)."""

import glob

import nibabel as nib
import numpy as np
from scipy.ndimage import center_of_mass, gaussian_filter, rotate, zoom
from scipy.ndimage import shift as nd_shift

PATHS = sorted(glob.glob("../shared/data/brats2015/BraTS15_pat*/*_flair.nii.gz"))
ANGLES = np.arange(-25, 25.1, 0.5)


def load(p):
    img = nib.as_closest_canonical(nib.load(p)).get_fdata().astype(np.float32)
    m = nib.as_closest_canonical(nib.load(p.replace("_flair", "_brainmask"))).get_fdata() > 0
    v = img[m]
    return np.where(m, (img - v.mean()) / v.std(), 0).astype(np.float32), m


def centred(s, c):
    return nd_shift(s, (np.array(s.shape) - 1) / 2 - np.asarray(c), order=1)


def silhouette(img, m):
    s = zoom(m.any(0).astype(np.float32), 0.5, order=1)
    return centred(s, center_of_mass(s))


def midplane(img, m):
    cx = int(round(center_of_mass(m)[0]))
    s = gaussian_filter(zoom(img[cx - 5 : cx + 6].mean(0), 0.5, order=1), 1.0)
    return centred(s, np.array(center_of_mass(m[cx - 5 : cx + 6].any(0))) / 2)


def iou(a, b):
    return np.minimum(a, b).sum() / np.maximum(a, b).sum()


def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())


def best_angle(s, tmpl, kind):
    best = (-np.inf, 0.0)
    for a in ANGLES:
        r = rotate(s, a, reshape=False, order=1)
        if kind == "silhouette":
            cands = [centred(r, center_of_mass(r))]
            score = iou
        else:
            cands = [nd_shift(r, (dy, dz), order=1) for dy in (-2, 0, 2) for dz in (-2, 0, 2)]
            score = corr
        best = max(best, max((score(c, tmpl), a) for c in cands))
    return best[1]


def tilted(img, m, deg):
    if not deg:
        return img, m
    return (rotate(img, deg, axes=(1, 2), reshape=False, order=1),
            rotate(m.astype(np.float32), deg, axes=(1, 2), reshape=False, order=1) > 0.5)  # fmt: skip


vols = [load(p) for p in PATHS]
for kind, fn in (("silhouette", silhouette), ("midplane", midplane)):
    views = [fn(*v) for v in vols]
    print(f"{kind}: estimate at applied tilt 0 / -15 / +8 degrees (a perfect estimate: e0, e0+15, e0-8)")
    for i, v in enumerate(vols):
        tmpl = np.mean([s for j, s in enumerate(views) if j != i], 0)
        est = [best_angle(fn(*tilted(*v, d)), tmpl, kind) for d in (0, -15, 8)]
        print(f"  {PATHS[i].split('/')[-2]}  " + " / ".join(f"{e:+.1f}" for e in est), flush=True)

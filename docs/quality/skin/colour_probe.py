"""Probe (2026-12-04): is the lesion's colour, relative to the surrounding skin, one-class evidence for dermoscopy?
Per image at 64 px: the lesion = pixels darker than Otsu's threshold (grey); log(lesion colour / mean skin
colour) per pixel -> a 4x4x4 histogram (Hellinger) or its mean, std and 10th/90th percentiles (z-scored);
score = mean distance to the 5 nearest benign training images of the fold. The benchmark's 3 folds (seed 0).
Run from the repository root: .venv/bin/python docs/quality/skin/colour_probe.py (~20 s)."""

import csv

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score


def threshold_otsu(v):
    h, e = np.histogram(v.ravel(), 256)
    c = (e[:-1] + e[1:]) / 2
    w0 = h.cumsum()
    w1 = w0[-1] - w0
    m0 = (h * c).cumsum() / np.maximum(w0, 1)
    m1 = ((h * c).sum() - (h * c).cumsum()) / np.maximum(w1, 1)
    return c[np.argmax(w0 * w1 * (m0 - m1) ** 2)]


root = "../shared/data/isic2016_train"
rows = list(csv.DictReader(open(f"{root}/labels.csv")))
ids = [r["image_id"] for r in rows]
y = np.array([r["label"] != "benign" for r in rows], int)
# folds as make_folds: stratified, rng(seed 0) shuffle per label group (labels sorted: 0 then 1), dealt round robin
rng = np.random.default_rng(0)
folds = [[], [], []]
i = 0
for lab in (0, 1):
    g = sorted(s for s, lab_s in zip(ids, y) if lab_s == lab)
    rng.shuffle(g)
    for s in g:
        folds[i % 3].append(s)
        i += 1


def desc(iid):
    im = (
        np.asarray(Image.open(f"{root}/images/{iid}.jpg").convert("RGB").resize((64, 64), Image.BILINEAR), np.float32)
        / 255
    )
    g = im.mean(2)
    t = threshold_otsu(g[8:-8, 8:-8])
    m = g < t
    if m.sum() < 20:
        m = g <= np.quantile(g, 0.2)
    skin = im[~m].mean(0) + 1e-3
    lr = np.log((im[m] + 1e-3) / skin)  # lesion colour relative to the skin
    h, _ = np.histogramdd(lr, bins=(4, 4, 4), range=[(-2.5, 0.5)] * 3)
    h = h.ravel() / h.sum()
    stats = np.concatenate([lr.mean(0), lr.std(0), np.percentile(lr, [10, 90], axis=0).ravel()])
    return np.sqrt(h), stats


D = {i: desc(i) for i in ids}
for name, k_idx in (("hist", 0), ("stats", 1)):
    aucs = []
    for f in folds:
        te = set(f)
        tr = [i for i, lab_i in zip(ids, y) if i not in te and lab_i == 0]
        X = np.array([D[i][k_idx] for i in tr])
        mu, sd = X.mean(0), X.std(0) + 1e-6
        if name == "stats":
            X = (X - mu) / sd
        tid = [i for i in ids if i in te]
        T = np.array([D[i][k_idx] for i in tid])
        if name == "stats":
            T = (T - mu) / sd
        d = np.sqrt(((T[:, None] - X[None]) ** 2).sum(-1))
        s = np.sort(d, 1)[:, :5].mean(1)
        aucs.append(roc_auc_score([y[ids.index(i)] for i in tid], s))
    print(name, np.round(aucs, 3), round(float(np.mean(aucs)), 3))

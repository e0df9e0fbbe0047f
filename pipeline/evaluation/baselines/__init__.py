"""Baselines scored in the same harness as PatchRank (`pipeline.evaluation.harness.Scorer`).

Each `fit_*(train, val, cfg)` takes normal training/validation `SliceSet`s and the
`TrainConfig` of the run (image size, epochs, batch size, seed) and returns a scorer:
  cae        - convolutional autoencoder with a dense bottleneck, L2 error
  ocsvm      - one-class SVM (RBF) on downsampled pixels
  alocc      - ALOCC-style whole-image reconstructor + discriminator, score = -D(R(x))
  percentile - 99th percentile of preprocessed (z-scored) intensity in the foreground
"""

from __future__ import annotations

from patchrank.pipeline.evaluation.baselines.alocc import fit_alocc
from patchrank.pipeline.evaluation.baselines.cae import fit_cae
from patchrank.pipeline.evaluation.baselines.ocsvm import fit_ocsvm
from patchrank.pipeline.evaluation.baselines.percentile import fit_percentile

BASELINES = {"cae": fit_cae, "ocsvm": fit_ocsvm, "alocc": fit_alocc, "percentile": fit_percentile}

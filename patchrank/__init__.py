"""PatchRank: unsupervised patch-level anomaly detection for medical scans.

    import patchrank
    det = patchrank.load("model.pt")
    result = det.score("scan.nii.gz", maps=True)   # ScanResult: scan_score, ranked patches, maps
    patchrank.train("data/", "model.pt")           # as `patchrank train`: preset chosen from the data

The command line (`patchrank --help`) and the streaming service build on the same pieces:
patchrank.model (pure PyTorch), patchrank.pipeline (data, training, evaluation, service),
patchrank.actors (Ray wrappers) and patchrank.deploy (entry points).
"""

from .api import Detector, ScanResult, load, train

__all__ = ["Detector", "ScanResult", "load", "train"]

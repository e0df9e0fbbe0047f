"""PatchRank: unsupervised patch-level anomaly detection for medical scans."""

"""Evaluation protocols, metrics, plots, baselines and the cross-validated quality harness."""

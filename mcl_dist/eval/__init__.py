"""Evaluation: run_metrics.py runs zero_shot.py, linear_probe.py and mmvp.py on one model."""

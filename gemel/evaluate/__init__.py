"""Evaluating a run: metrics, baselines and the breakdown (the evaluate stage), and its HTML page (the
report stage)."""

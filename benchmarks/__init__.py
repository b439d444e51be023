"""Benchmarks: `python -m benchmarks.<name>` prints timings for one component."""

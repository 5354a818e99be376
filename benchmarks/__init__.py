"""Benchmarks: `python -m benchmarks` (steps, augmentation, and the report), `python -m benchmarks.grid`
(a timed `dvc repro`), `python -m benchmarks.plain_baseline` (plain SimCLR + kNN, the accuracy floor)."""

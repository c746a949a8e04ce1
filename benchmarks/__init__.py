"""Benchmarks of the input pipeline, training loop and serving signature (see docs/PERFORMANCE.md)."""

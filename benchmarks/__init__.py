"""Benchmarks: scripts that print figures (``python -m benchmarks.bench_NAME``); see BENCHMARKS.md."""

"""Refit benchmarks: run by hand on real data, each writes benchmarks/results/<name>.json and .md."""

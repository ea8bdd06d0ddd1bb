"""Benchmarks: `make bench` measures, merges into results.json and renders RESULTS.md."""

"""The load benchmark: see docs/benchmarks.md."""

"""The load benchmark: see README.md, "Benchmark", and docs/benchmarks.md."""

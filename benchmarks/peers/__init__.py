"""Other people's recipes, run under the budget benchmarks' rules (same data, minutes, threads and FID)."""

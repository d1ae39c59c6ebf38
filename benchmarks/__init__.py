"""Benchmark scripts: accuracy (RMSE/MAE per model), throughput, scaling. See README."""

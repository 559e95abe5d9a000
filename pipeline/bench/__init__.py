"""Benchmark harness: speed, memory and detection quality of the product beside baselines."""

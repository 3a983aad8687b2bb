"""tfyarn's benchmarks: each measures its baselines in the same run (see common.py)."""

"""The sections of benchmarks/gpu_check.py: shared set-up (common), correctness rows, speed rows."""

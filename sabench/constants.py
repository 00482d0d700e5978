"""Constants more than one module relies on (torch-free: the report may import them)."""

VERSION = "0.1.0"  # sabench.__version__; every run records it (measure.env)

# A phase's timed samples are "stable" when p90/p10 is at most this; above it the harness runs
# up to EXTRA_ROUNDS more rounds of `repeats` (CUDA only), then flags the set.
STABLE_RATIO = 1.05
EXTRA_ROUNDS = 3

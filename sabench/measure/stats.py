"""Summary statistics of latency samples, in the shape results.json stores them.

The raw samples are kept next to the summary so that reports can redo any
statistic (or plot distributions) without rerunning the benchmark.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def summarize(samples_ms: Sequence[float]) -> dict:
    """median/p10/p90/p99/mean/std/min/max plus the raw `samples` (all floats, ms).

    Percentiles use numpy's default linear interpolation. `std` is the sample
    standard deviation (ddof=1; 0.0 for a single sample, so the result stays
    JSON-serialisable). An empty or non-finite sample list is a bug upstream
    and raises ValueError rather than producing NaNs in a report.
    """
    samples = [float(x) for x in samples_ms]
    if not samples:
        raise ValueError("summarize() needs at least one sample")
    if not all(math.isfinite(x) for x in samples):
        raise ValueError(f"non-finite latency sample in {samples!r}")
    a = np.asarray(samples, dtype=np.float64)
    p10, p50, p90, p99 = np.percentile(a, [10, 50, 90, 99], method="linear")
    return {
        "median": float(p50),
        "p10": float(p10),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "samples": samples,
    }

"""Summaries of samples: the one place a median, a geometric mean or a percentile is computed."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def percentiles(values: Sequence[float], ps: Sequence[float]) -> dict:
    """{p: the p-th percentile} by linear interpolation (numpy's default, as vLLM); NaN for each
    p of an empty input (no such figure)."""
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return {p: float("nan") for p in ps}
    return {p: float(v) for p, v in zip(ps, np.percentile(a, list(ps), method="linear"))}


def rel_iqr(samples: Sequence[float]) -> Optional[float]:
    """The inter-quartile range over the median, a sample's relative spread; None for fewer than two
    samples or a median that is not positive."""
    if len(samples) < 2:
        return None
    q = percentiles(samples, (25, 50, 75))
    return (q[75] - q[25]) / q[50] if q[50] > 0 else None


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
    q = percentiles(a, (10, 50, 90, 99))
    p10, p50, p90, p99 = q[10], q[50], q[90], q[99]
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


def median(xs: Sequence[float]) -> Optional[float]:
    """The median of a list of numbers (None for an empty one)."""
    s = sorted(float(x) for x in xs)
    if not s:
        return None
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def geomean(xs: Sequence[float]) -> float:
    """Geometric mean of positive numbers (the mean of ratios that multiply)."""
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def validate_samples(samples: Sequence[float], where: str, *, min_n: int = 1) -> np.ndarray:
    """The samples as a float64 array, or ValueError naming `where` and the first bad value.

    Refuses non-numbers, NaN, +-inf, values <= 0 (a timing, memory or energy figure is positive)
    and fewer than `min_n` samples. `where` names the point and field (e.g.
    "results.json point prefill b=1 s=128 sa:2-3, field latency_ms.samples") so the message can
    be shown to a user as is.
    """
    try:
        a = np.asarray([float(x) for x in samples], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: samples must be numbers ({e})") from None
    bad = np.flatnonzero(~np.isfinite(a) | (a <= 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: sample {i} is {a[i]!r}; samples must be finite and > 0 "
                         f"({bad.size} of {a.size} invalid); re-run or drop that point")
    if a.size < min_n:
        raise ValueError(f"{where}: {a.size} sample(s), at least {min_n} needed; "
                         f"measure more rounds")
    return a

"""Step detection over a whole history series (one value per commit), as asv does it in spirit.

The series (per-commit medians, optionally with each commit's spread) is fitted on the log scale by
the piecewise-constant function that minimises

    sum_i w_i (ln y_i - level(i))^2  +  penalty * (number of steps),     w_i = 1 / sigma_i^2

solved exactly by dynamic programming (optimal partitioning, O(n^2) on numpy prefix sums; a few
thousand commits take well under a second). sigma_i is the noise of one commit's value: the series'
noise, estimated robustly from neighbour differences (a step moves only one of them), or the
commit's own spread where that is larger, so a commit measured with a wide spread counts for less.
With the residuals in units of that noise, the penalty is a number of standard deviations squared;
the default, 3 ln n (at least 9), keeps noise-only series free of steps (a 3-sigma-ish bar that
grows slowly with the series' length, as multiple comparisons demand).

Each step found is then judged against the noise: it is a regression (or an improvement) only when
its size exceeds both `noise_k` times the series' noise and the practical threshold; otherwise it is
"within noise". Unlike a neighbour-to-neighbour comparison, a slow drift or a single noisy commit
does not make a step, and a step's size is measured between the two levels, not two samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

NOISE_FLOOR = 1e-6  # relative: a perfectly flat series still gets finite weights


@dataclass(frozen=True)
class Segment:
    """Commits [start, stop) share one level (geometric mean, in the series' units)."""

    start: int
    stop: int
    level: float


@dataclass(frozen=True)
class Step:
    """A change of level at commit `index` (the first commit of the new level).

    ratio = after / before with a `confidence` interval [low, high] from the two levels' standard
    errors; kind is "regression" | "improvement" | "within noise" | "too short" (beyond the noise,
    but the new level spans fewer than `confirm` commits: a one-commit spike, or the newest commit
    alone, is not yet a regression). `before` is the last level that spanned `confirm` commits, so
    the return from a spike compares like with like.
    """

    index: int
    before: float
    after: float
    ratio: float
    low: float
    high: float
    exceeds_noise: bool
    kind: str


@dataclass(frozen=True)
class StepFit:
    segments: tuple[Segment, ...]
    steps: tuple[Step, ...]
    noise: float  # the series' noise: standard deviation of one commit's ln(value)
    penalty: float

    @property
    def regressions(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind == "regression")


def series_noise(values: Sequence[float]) -> float:
    """Robust sd of one value's ln, from neighbour differences, raised by one standard error.

    1.4826 MAD(diff) / sqrt(2) estimates the noise (a step moves one difference, not the median);
    from m differences that estimate has a relative standard error of about 1.17 / sqrt(m), and
    it is raised by that much so a short series, whose noise is poorly known, needs a larger step
    (with 10 commits, this halves the false steps on noise-only series).
    """
    z = np.log(np.asarray(values, dtype=np.float64))
    if z.size < 3:
        return NOISE_FLOOR
    d = np.diff(z)
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1.4826 * mad / math.sqrt(2) * (1 + 1.17 / math.sqrt(d.size)), NOISE_FLOOR)


def detect_steps(values: Sequence[float | None], spreads: Sequence[float | None] | None = None, *,
                 threshold: float = 0.05, noise: float | None = None, penalty: float | None = None,
                 noise_k: float = 2.0, min_size: int = 1, confirm: int = 2,
                 higher_is_worse: bool = True, confidence: float = 0.95) -> StepFit:
    """Fit levels to a per-commit series and judge each step against the series' noise.

    values: one positive number per commit, oldest first (None or NaN: commit not measured; it is
    skipped and indices still refer to positions in `values`). spreads: optional per-commit standard
    deviation in the same units (e.g. the sd of that commit's round medians). noise: the sd of one
    commit's ln(value) if known; estimated from the series otherwise. penalty: in squared noise
    units per step (default max(3 ln n, 9)). min_size: the fewest commits a level may span in the fit.
    confirm: the fewest commits the new level must span for its step to count as a regression or
    an improvement (as asv's min_size).
    higher_is_worse: True for times and energy, False for throughput.
    """
    idx, y, s = _present(values, spreads)
    n = y.size
    sigma = float(noise) if noise is not None else series_noise(y)
    pen = float(penalty) if penalty is not None else max(3 * math.log(max(n, 2)), 9.0)
    if n == 0:
        return StepFit((), (), sigma, pen)
    z = np.log(y)
    sig_i = np.maximum(sigma, s / y) if s is not None else np.full(n, sigma)
    w = 1 / np.maximum(sig_i, NOISE_FLOOR) ** 2
    bounds = _optimal_partition(z, w, pen, max(1, min_size))
    segs, steps = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        segs.append((a, b, float(np.sum(w[a:b] * z[a:b]) / np.sum(w[a:b])), float(np.sum(w[a:b]))))
    from scipy.stats import norm

    zc = float(norm.ppf((1 + confidence) / 2))
    bar = max(noise_k * sigma, math.log1p(threshold))
    anchor = segs[0] if segs and segs[0][1] - segs[0][0] >= confirm else None  # last confirmed level
    for prev, seg in zip(segs[:-1], segs[1:]):
        confirmed = seg[1] - seg[0] >= confirm
        # a step out of a short level is measured from the last confirmed level, so a one-commit
        # spike and its return are one transient, and a step hidden behind a spike is still found
        ref = anchor if confirmed and anchor is not None else prev
        d, se = seg[2] - ref[2], math.sqrt(1 / ref[3] + 1 / seg[3])
        exceeds = abs(d) > bar
        worse = (d > 0) == higher_is_worse
        kind = ("within noise" if not exceeds
                else "too short" if not confirmed or ref is not anchor
                else "regression" if worse else "improvement")
        steps.append(Step(int(idx[seg[0]]), math.exp(ref[2]), math.exp(seg[2]), math.exp(d),
                          math.exp(d - zc * se), math.exp(d + zc * se), exceeds, kind))
        anchor = seg if confirmed else anchor
    segments = tuple(Segment(int(idx[a]), int(idx[b - 1]) + 1, math.exp(m)) for a, b, m, _ in segs)
    return StepFit(segments, tuple(steps), sigma, pen)


def _present(values, spreads):
    """Indices, values and spreads of the measured commits; ValueError on a value <= 0 or inf."""
    keep, ys, ss = [], [], []
    for i, v in enumerate(values):
        if v is None or math.isnan(v := float(v)):
            continue
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"history value at commit {i} is {v!r}; values must be finite and > 0")
        sp = None if spreads is None else spreads[i]
        if sp is not None and not (math.isfinite(float(sp)) and float(sp) >= 0):
            raise ValueError(f"history spread at commit {i} is {sp!r}; spreads must be finite and >= 0")
        keep.append(i)
        ys.append(v)
        ss.append(0.0 if sp is None else float(sp))
    y = np.asarray(ys, dtype=np.float64)
    s = None if spreads is None else np.asarray(ss, dtype=np.float64)
    return np.asarray(keep, dtype=np.int64), y, s


def _optimal_partition(z: np.ndarray, w: np.ndarray, penalty: float, min_size: int) -> list[int]:
    """Segment boundaries [0, b1, ..., n] minimising weighted squared error + penalty per step."""
    n = z.size
    s0 = np.concatenate([[0.0], np.cumsum(w)])
    s1 = np.concatenate([[0.0], np.cumsum(w * z)])
    s2 = np.concatenate([[0.0], np.cumsum(w * z * z)])
    best = np.full(n + 1, np.inf)
    best[0] = -penalty
    last = np.zeros(n + 1, dtype=np.int64)
    for t in range(min_size, n + 1):
        s = np.arange(0, t - min_size + 1)
        s = s[np.isfinite(best[s])]
        sw, swz = s0[t] - s0[s], s1[t] - s1[s]
        cost = np.maximum((s2[t] - s2[s]) - swz * swz / sw, 0.0)
        total = best[s] + cost + penalty
        j = int(np.argmin(total))
        best[t], last[t] = total[j], s[j]
    if not np.isfinite(best[n]):  # fewer commits than min_size: one level
        return [0, n]
    bounds = [n]
    while bounds[-1] > 0:
        bounds.append(int(last[bounds[-1]]))
    return bounds[::-1]

"""Statistics for conclusions that survive noise: sample summaries, ratio intervals, verdicts, the gate.

The unit of replication is the round (one process, or one interleaved visit of every variant),
not the step: callers pass one number per round (for instance each round's median step time), and
every interval here treats those numbers as the independent samples. Steps within a round share
that round's conditions, so feeding raw steps in would overstate the evidence.

Ratios are candidate / base times (> 1: the candidate is slower) and are estimated as ratios of
geometric means: the arithmetic is done on log times, where timing noise is close to symmetric,
a ratio and its reciprocal get mirrored intervals (swapping base and candidate mirrors the verdict),
and the Student t interval on logs keeps its stated coverage with as few as 3 rounds. Percentile
bootstrap intervals under-cover badly at 3-5 rounds (about 85% for a nominal 95% at n = 5), and a
rank interval cannot reach 95% below 6 paired rounds; both are available (`method=`) for longer
series. Everything is deterministic: exact formulas, or a bootstrap with a fixed seed.

scipy is imported inside the functions that need it, so `import sabench.stats` stays light (the
point process imports `summarize` from this package).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from sabench.stats.summary import median, validate_samples

METHODS = ("t", "bootstrap", "rank")


@dataclass(frozen=True)
class RatioEstimate:
    """candidate / base, with a `confidence` interval [low, high]; > 1 means the candidate is slower."""

    ratio: float
    low: float
    high: float
    n_base: int
    n_cand: int
    method: str  # how it was computed, in words, e.g. "geometric-mean ratio, paired t on log ratios"
    confidence: float = 0.95
    paired: bool = False
    within_process: bool = False  # samples were steps of one process each, not rounds (schema v1)

    def __str__(self) -> str:
        return f"{fmt_ratio(self.ratio)}× [{fmt_ratio(self.low)}, {fmt_ratio(self.high)}]"

    @property
    def log_width(self) -> float:
        """ln(high / low): the interval's width on the log scale (0 for a point interval)."""
        return math.log(self.high / self.low)

    def inverted(self) -> "RatioEstimate":
        """base / candidate (a speedup instead of a time ratio), the interval mirrored."""
        return RatioEstimate(1 / self.ratio, 1 / self.high, 1 / self.low, self.n_cand, self.n_base,
                             self.method, self.confidence, self.paired, self.within_process)


def fmt_ratio(x: float) -> str:
    """Two decimals below 10, one below 100, none above: 1.04, 12.3, 250."""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def ratio_interval(base_samples: Sequence[float], cand_samples: Sequence[float], *,
                   paired: bool = False, confidence: float = 0.95, method: str = "t",
                   where: str = "ratio", seed: int = 0, n_resamples: int = 9999,
                   within_process: bool = False) -> RatioEstimate:
    """Ratio of geometric means cand / base over per-round summaries, with a `confidence` interval.

    paired=True: base_samples[i] and cand_samples[i] come from the same round (measured alternately
    in one process or one visit); the interval is on the per-round log ratios. Otherwise the two
    sets are independent (Welch's unequal-variance interval on the log difference).

    method:
      "t"          Student / Welch t on log times. Needs 2 rounds per side (paired: 2 pairs). Default.
      "bootstrap"  scipy.stats.bootstrap (BCa, percentile where BCa is undefined) of the mean log
                   ratio, seeded by `seed`; point estimate as for "t". Needs 2 per side.
      "rank"       Hodges-Lehmann shift of the logs with the exact interval from inverting the
                   Wilcoxon signed-rank (paired) or Mann-Whitney (unpaired) test; point estimate
                   is the HL median. ValueError where so few rounds cannot reach `confidence`
                   (95%: 6 pairs; 4 + 4 unpaired).
    within_process=True marks samples that are the steps of a single process per side (results.json
    v1 holds no rounds): the interval is computed the same way but says it ignores process-to-process
    variation, and verdict() names that in its reason.
    Invalid samples raise ValueError naming `where`.
    """
    if method not in METHODS:
        raise ValueError(f"{where}: unknown interval method {method!r}; use one of {', '.join(METHODS)}")
    if not 0 < confidence < 1:
        raise ValueError(f"{where}: confidence must lie in (0, 1), got {confidence!r}")
    lb = np.log(validate_samples(base_samples, f"{where} (base)", min_n=2))
    lc = np.log(validate_samples(cand_samples, f"{where} (candidate)", min_n=2))
    if paired and lb.size != lc.size:
        raise ValueError(f"{where}: paired rounds need as many base as candidate samples "
                         f"({lb.size} vs {lc.size})")
    if method == "t":
        est, lo, hi, how = (_paired_t if paired else _welch_t)(lb, lc, confidence)
    elif method == "bootstrap":
        est, lo, hi, how = _bootstrap(lb, lc, paired, confidence, seed, n_resamples)
    else:
        est, lo, hi, how = _rank(lb, lc, paired, confidence, where)
    if within_process:
        how += "; within-process only (steps of one process, not rounds)"
    return RatioEstimate(math.exp(est), math.exp(lo), math.exp(hi), int(lb.size), int(lc.size),
                         how, confidence, paired, within_process)


def _paired_t(lb: np.ndarray, lc: np.ndarray, confidence: float):
    from scipy.stats import t

    d = lc - lb
    m, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size)
    h = float(t.ppf((1 + confidence) / 2, d.size - 1)) * se
    return m, m - h, m + h, "geometric-mean ratio, paired t on per-round log ratios"


def _welch_t(lb: np.ndarray, lc: np.ndarray, confidence: float):
    from scipy.stats import t

    m = float(lc.mean() - lb.mean())
    vb, vc = float(lb.var(ddof=1)) / lb.size, float(lc.var(ddof=1)) / lc.size
    how = "geometric-mean ratio, Welch t on log times"
    if vb + vc == 0:
        return m, m, m, how
    df = (vb + vc) ** 2 / (vb ** 2 / (lb.size - 1) + vc ** 2 / (lc.size - 1))
    h = float(t.ppf((1 + confidence) / 2, df)) * math.sqrt(vb + vc)
    return m, m - h, m + h, how


def bootstrap_kwargs(confidence: float, seed: int, n_resamples: int, method: str) -> dict:
    """The keyword arguments ratio_interval passes to scipy.stats.bootstrap (`rng` or, before
    scipy 1.15, `random_state`)."""
    import inspect

    from scipy.stats import bootstrap

    seed_key = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    return {"confidence_level": confidence, "n_resamples": n_resamples, "method": method,
            "vectorized": True, seed_key: np.random.default_rng(seed)}


def _bootstrap(lb: np.ndarray, lc: np.ndarray, paired: bool, confidence: float, seed: int,
               n_resamples: int):
    import warnings

    from scipy.stats import bootstrap

    if paired:
        data, stat = (lc - lb,), _mean_last
        point = float((lc - lb).mean())
    else:
        data, stat = (lc, lb), _mean_difference
        point = float(lc.mean() - lb.mean())
    if np.ptp(np.concatenate(data)) == 0 or (not paired and np.ptp(lc) == 0 and np.ptp(lb) == 0):
        return point, point, point, "geometric-mean ratio, no spread to resample"
    for kind in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa on a degenerate resample warns and returns NaN
            ci = bootstrap(data, stat, **bootstrap_kwargs(confidence, seed, n_resamples, kind))
        lo, hi = float(ci.confidence_interval.low), float(ci.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            side = "paired per-round log ratios" if paired else "log times, rounds resampled per side"
            return point, lo, hi, f"geometric-mean ratio, {kind} bootstrap of {side} (seed {seed})"
    raise ValueError("bootstrap interval undefined on these samples")  # pragma: no cover


def _mean_last(x, axis=-1):
    return np.mean(x, axis=axis)


def _mean_difference(c, b, axis=-1):
    return np.mean(c, axis=axis) - np.mean(b, axis=axis)


def _rank(lb: np.ndarray, lc: np.ndarray, paired: bool, confidence: float, where: str):
    from scipy.stats import mannwhitneyu, wilcoxon

    if paired:
        d = lc - lb
        i, j = np.triu_indices(d.size)
        v = np.sort((d[i] + d[j]) / 2)  # Walsh averages

        def pvalue(theta: float) -> float:
            return float(wilcoxon(d - theta, method="exact").pvalue)
        how = "Hodges-Lehmann ratio, exact Wilcoxon signed-rank interval on per-round log ratios"
    else:
        v = np.sort((lc[:, None] - lb[None, :]).ravel())  # all pairwise log differences

        def pvalue(theta: float) -> float:
            return float(mannwhitneyu(lc - theta, lb, method="exact").pvalue)
        how = "Hodges-Lehmann ratio, exact Mann-Whitney interval on log times"
    est = float(np.median(v))
    if np.ptp(v) == 0:
        return est, est, est, how
    lo, hi = _invert_rank_test(v, pvalue, 1 - confidence)
    if lo is None:
        raise ValueError(f"{where}: {lb.size} + {lc.size} rounds cannot give a {confidence:.0%} rank "
                         f"interval; measure more rounds or use method='t'")
    return est, lo, hi, how


def _invert_rank_test(v: np.ndarray, pvalue, alpha: float):
    """[v_k, v_(M-k+1)]: the shifts a rank test (statistic = how many of v exceed the shift) accepts.

    Between consecutive sorted values v the statistic is constant, so the test is evaluated on one
    shift per gap, bisecting for the outermost accepted gap; by symmetry the upper end mirrors the
    lower.
    Returns (None, None) when even the outermost gap is accepted (too few samples).
    """
    m = v.size
    edges = np.concatenate([[v[0] - 1.0], (v[:-1] + v[1:]) / 2])  # a shift inside each gap j < k
    gaps = [k for k in range(m // 2 + 1) if k == 0 or v[k - 1] != v[k]]  # skip empty gaps
    lo, hi = 0, len(gaps)  # the p-value grows as the gap moves inward: bisect for the first accepted
    while lo < hi:
        mid = (lo + hi) // 2
        if pvalue(float(edges[gaps[mid]])) > alpha:
            hi = mid
        else:
            lo = mid + 1
    if lo == 0:
        return None, None
    k = gaps[lo] if lo < len(gaps) else m // 2 + 1
    return float(v[k - 1]), float(v[m - k])


# -- verdicts and the gate --------------------------------------------------------------------------


def round_centres(base: Sequence[dict], cand: Sequence[dict]) -> tuple:
    """Two series, one value per round of each run, for judging a set of points as a whole.

    base, cand: one {round index: value} mapping per point (sabench.stats.rounds.ok_rounds), the
    same points in the same order. Each point's values are put on one scale by dividing by that
    point's median over both runs' rounds; a round's value is then the median over the points
    (only the rounds every point measured count). The round stays the replication unit (load that
    slows a whole round moves its value once), and the median over points keeps one process that
    waited for a core from moving the round: per-round fastest steps on a loaded machine are far
    from normal (docs/methodology.md, "The regression gate"). ratio_interval on the two series
    estimates the typical point's ratio cand / base."""
    if not base or len(base) != len(cand):
        raise ValueError("round_centres needs the same points, at least one, on both sides")
    kb = sorted(set.intersection(*(set(p) for p in base)))
    kc = sorted(set.intersection(*(set(p) for p in cand)))
    centres = [median([math.log(b[k]) for k in kb] + [math.log(c[k]) for k in kc]) for b, c in zip(base, cand)]

    def series(points, rounds):
        return [math.exp(median([math.log(p[k]) - m for p, m in zip(points, centres)])) for k in rounds]

    return series(base, kb), series(cand, kc)


def geomean_interval(ests: Sequence[Optional[RatioEstimate]], confidence: float = 0.95) -> Optional[RatioEstimate]:
    """The geometric mean of per-point ratios with an interval that carries each point's own
    measurement noise (points taken as fixed: it says how well this set of points was measured,
    not how another set would come out). Each point's standard error on the log scale is read
    back from its interval, ln(high / low) / (2 z); the mean's is sqrt(sum se_i^2) / n."""
    from scipy.stats import norm

    ests = [e for e in ests if e is not None]
    if not ests:
        return None
    n = len(ests)
    logs = [math.log(e.ratio) for e in ests]
    se = [math.log(e.high / e.low) / (2 * float(norm.ppf((1 + e.confidence) / 2))) for e in ests]
    m, s = sum(logs) / n, math.sqrt(sum(x * x for x in se)) / n
    h = float(norm.ppf((1 + confidence) / 2)) * s
    return RatioEstimate(math.exp(m), math.exp(m - h), math.exp(m + h), n, n,
                         f"geometric mean over {n} points, per-point noise combined", confidence,
                         paired=False, within_process=any(e.within_process for e in ests))

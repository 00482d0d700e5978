"""sabench.stats: ratio intervals against scipy and brute force, verdicts, the gate, validation, steps."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats as st

from sabench.stats import (GateResult, RatioEstimate, detect_steps, geomean, median, percentiles, ratio_interval,
                           regression, rel_iqr, round_centres, summarize, validate_samples, verdict)
from sabench.stats.steps import _optimal_partition, series_noise

BASE = [10.2, 9.8, 10.5, 10.1, 9.9, 10.4]
CAND = [11.0, 10.9, 11.6, 10.7, 11.2, 11.8]


def _ci(est: RatioEstimate):
    return math.log(est.low), math.log(est.high)


# -- intervals against scipy ------------------------------------------------------------------------


def test_paired_t_matches_scipy_ttest_rel():
    est = ratio_interval(BASE, CAND, paired=True)
    ref = st.ttest_rel(np.log(CAND), np.log(BASE)).confidence_interval(0.95)
    assert _ci(est) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert est.ratio == pytest.approx(math.exp(np.mean(np.log(CAND) - np.log(BASE))))
    assert (est.n_base, est.n_cand, est.paired) == (6, 6, True)


def test_welch_t_matches_scipy_ttest_ind():
    est = ratio_interval(BASE, CAND[:4], confidence=0.9)
    ref = st.ttest_ind(np.log(CAND[:4]), np.log(BASE), equal_var=False).confidence_interval(0.9)
    assert _ci(est) == pytest.approx((ref.low, ref.high), rel=1e-12)
    geo = st.gmean(CAND[:4]) / st.gmean(BASE)
    assert est.ratio == pytest.approx(geo) and est.confidence == 0.9 and not est.paired


@pytest.mark.parametrize("paired", [True, False])
def test_bootstrap_matches_scipy_bootstrap(paired):
    lb, lc = np.log(BASE), np.log(CAND)
    if paired:
        ref = st.bootstrap((lc - lb,), np.mean, n_resamples=2000, rng=np.random.default_rng(7))
    else:
        ref = st.bootstrap((lc, lb), lambda c, b, axis: c.mean(axis) - b.mean(axis),
                           n_resamples=2000, rng=np.random.default_rng(7))
    est = ratio_interval(BASE, CAND, paired=paired, method="bootstrap", seed=7, n_resamples=2000)
    assert _ci(est) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high),
                                     rel=1e-12)
    assert "BCa bootstrap" in est.method and "seed 7" in est.method
    again = ratio_interval(BASE, CAND, paired=paired, method="bootstrap", seed=7, n_resamples=2000)
    assert again == est  # reproducible


# -- exact rank intervals against brute force -------------------------------------------------------


def _brute_signed_rank_ci(d, alpha):
    n = len(d)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    counts = [sum(r for r, s in zip(range(1, n + 1), signs) if s)
              for signs in itertools.product([0, 1], repeat=n)]  # null law of T+
    m = len(walsh)
    k = max(k for k in range(1, m // 2 + 1)  # P(T+ <= k - 1) <= alpha / 2
            if sum(c <= k - 1 for c in counts) / 2 ** n <= alpha / 2)
    return walsh[k - 1], walsh[m - k], float(np.median(walsh))


def _brute_mann_whitney_ci(b, c, alpha):
    n, m = len(c), len(b)
    diffs = sorted(x - y for x in c for y in b)
    us = []
    for ranks in itertools.combinations(range(n + m), n):  # null law of U: rank sum - n(n+1)/2
        us.append(sum(ranks) + n - n * (n + 1) // 2)
    total = len(us)
    k = max(k for k in range(1, n * m // 2 + 1) if sum(u <= k - 1 for u in us) / total <= alpha / 2)
    return diffs[k - 1], diffs[n * m - k], float(np.median(diffs))


@pytest.mark.parametrize("n", [6, 8, 9])
def test_rank_paired_matches_brute_force(n):
    rng = np.random.default_rng(n)
    b = rng.lognormal(2, 0.2, n)
    c = b * rng.lognormal(0.1, 0.1, n)
    est = ratio_interval(b, c, paired=True, method="rank")
    lo, hi, hl = _brute_signed_rank_ci(list(np.log(c) - np.log(b)), 0.05)
    assert _ci(est) == pytest.approx((lo, hi), rel=1e-12)
    assert math.log(est.ratio) == pytest.approx(hl)


@pytest.mark.parametrize("nb,nc", [(4, 4), (5, 6), (7, 5)])
def test_rank_unpaired_matches_brute_force(nb, nc):
    rng = np.random.default_rng(10 * nb + nc)
    b, c = rng.lognormal(2, 0.2, nb), rng.lognormal(2.3, 0.2, nc)
    est = ratio_interval(b, c, method="rank")
    lo, hi, hl = _brute_mann_whitney_ci(list(np.log(b)), list(np.log(c)), 0.05)
    assert _ci(est) == pytest.approx((lo, hi), rel=1e-12)
    assert math.log(est.ratio) == pytest.approx(hl)


def test_rank_refuses_too_few_rounds_for_the_confidence():
    with pytest.raises(ValueError, match="cannot give a 95% rank interval"):
        ratio_interval(BASE[:5], CAND[:5], paired=True, method="rank")
    assert ratio_interval(BASE[:5], CAND[:5], paired=True, method="rank", confidence=0.9).low > 1


# -- properties -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["t", "bootstrap", "rank"])
@pytest.mark.parametrize("paired", [True, False])
def test_swapping_sides_mirrors_the_interval(method, paired):
    fwd = ratio_interval(BASE, CAND, paired=paired, method=method)
    back = ratio_interval(CAND, BASE, paired=paired, method=method)
    assert back.ratio == pytest.approx(1 / fwd.ratio)
    if method != "bootstrap":  # BCa is not exactly mirror-symmetric
        assert (back.low, back.high) == pytest.approx((1 / fwd.high, 1 / fwd.low))
    inv = fwd.inverted()
    assert (inv.low, inv.ratio, inv.high) == pytest.approx((1 / fwd.high, 1 / fwd.ratio, 1 / fwd.low))


def test_format():
    est = RatioEstimate(1.0412, 0.9687, 1.1234, 5, 5, "t")
    assert str(est) == "1.04× [0.97, 1.12]"
    assert str(RatioEstimate(40.84, 12.3, 120.4, 3, 3, "t")) == "40.8× [12.3, 120]"


@pytest.mark.parametrize("method", ["t", "bootstrap", "rank"])
@pytest.mark.parametrize("paired", [True, False])
def test_identical_sample_sets_are_not_distinguishable(method, paired):
    est = ratio_interval(BASE, list(BASE), paired=paired, method=method)
    assert est.ratio == pytest.approx(1.0) and est.low <= 1 <= est.high
    v = verdict(est)
    assert v.label == "not distinguishable" and "includes 1" in v.reason
    assert regression(BASE, list(BASE), paired=paired, method=method).status == "pass"


@pytest.mark.parametrize("paired", [True, False])
def test_clear_two_fold_slowdown_with_five_rounds_is_slower(paired):
    rng = np.random.default_rng(3)
    base = rng.lognormal(math.log(8.0), 0.1, 5)
    cand = 2 * base * rng.lognormal(0, 0.1, 5) if paired else rng.lognormal(math.log(16.0), 0.1, 5)
    est = ratio_interval(base, cand, paired=paired)
    assert 1.7 < est.ratio < 2.3
    assert verdict(est).label == "slower" and "lies above 1.05" in verdict(est).reason
    assert verdict(ratio_interval(cand, base, paired=paired)).label == "faster"
    gate = regression(base, cand, 0.05, paired=paired)
    assert gate.regressed and gate.estimate == est
    assert regression(cand, base, 0.05, paired=paired).status == "improvement"


def test_verdict_needs_the_interval_beyond_the_threshold_and_narrower_than_the_effect():
    small = RatioEstimate(1.03, 1.02, 1.04, 10, 10, "t")  # excludes 1, within 5%
    v = verdict(small)
    assert v.label == "not distinguishable" and "not by the 5%" in v.reason
    assert verdict(small, threshold=0.0).label == "slower"
    wide = RatioEstimate(2.0, 1.2, 3.3, 3, 3, "t")  # clears 1.05 but spans a factor 2.75
    assert verdict(wide).label == "not distinguishable" and "wider than the effect" in verdict(wide).reason
    assert verdict(wide, max_width_to_effect=2.0).label == "slower"
    assert verdict(RatioEstimate(0.5, 0.45, 0.55, 5, 5, "t")).label == "faster"
    assert verdict(RatioEstimate(0.96, 0.94, 0.958, 5, 5, "t")).label == "not distinguishable"  # > 1/1.05
    with pytest.raises(ValueError, match="threshold"):
        verdict(small, threshold=-0.1)


def test_interval_coverage_by_simulation():
    """No true difference: the 95% interval covers 1 in 90-99% of 200 simulated five-round pairs."""
    rng = np.random.default_rng(2026)
    for paired in (True, False):
        covered = alarms = 0
        for _ in range(200):
            b, c = rng.lognormal(0, 0.3, 5), rng.lognormal(0, 0.3, 5)
            est = ratio_interval(b, c, paired=paired)
            covered += est.low <= 1 <= est.high
            alarms += regression(b, c, 0.05, paired=paired).regressed
        assert 0.90 <= covered / 200 <= 0.99, (paired, covered)
        assert alarms / 200 <= 0.05, (paired, alarms)


def test_interval_shrinks_with_more_rounds():
    rng = np.random.default_rng(5)
    widths = [ratio_interval(rng.lognormal(0, 0.2, n), rng.lognormal(0, 0.2, n)).log_width
              for n in (3, 30, 300)]
    assert widths[0] > widths[1] > widths[2]


# -- the gate and validation ------------------------------------------------------------------------


def test_gate_does_not_judge_too_few_rounds():
    g = regression([10.0, 10.1], [20.0, 20.2], 0.05, where="prefill b=1 s=128 sa:2-3")
    assert g.status == "not judged" and g.estimate is None and not g.regressed
    assert "prefill b=1 s=128 sa:2-3" in g.reason and "at least 3" in g.reason
    assert regression([10.0, 10.1], [20.0, 20.2], min_rounds=2).status == "regression"
    assert isinstance(g, GateResult)


@pytest.mark.parametrize("bad,what", [(0.0, "0.0"), (-1.5, "-1.5"), (float("nan"), "nan"),
                                      (float("inf"), "inf"), ("fast", "numbers")])
def test_invalid_samples_are_refused_naming_the_place(bad, what):
    where = "decode b=2 s=512 cla:2, field latency_ms.samples"
    with pytest.raises(ValueError, match=what) as e:
        validate_samples([1.0, bad, 2.0], where)
    assert where in str(e.value)
    with pytest.raises(ValueError, match=r"\(candidate\)"):
        regression(BASE, [1.0, bad, 2.0], where="p")
    with pytest.raises(ValueError, match="base"):
        ratio_interval([1.0, bad, 2.0], CAND)


def test_too_few_samples_are_refused():
    with pytest.raises(ValueError, match="1 sample.*at least 2"):
        ratio_interval([1.0], [1.0, 2.0], where="p")
    with pytest.raises(ValueError, match="0 sample"):
        validate_samples([], "p")
    with pytest.raises(ValueError, match="as many"):
        ratio_interval([1.0, 2.0, 3.0], [1.0, 2.0], paired=True)
    with pytest.raises(ValueError, match="method"):
        ratio_interval(BASE, CAND, method="median")
    assert validate_samples([1, 2.5], "p").dtype == np.float64


def test_median_and_geomean_against_numpy_and_scipy():
    xs = [3.0, 1.0, 2.0, 10.0]
    assert median(xs) == np.median(xs) == 2.5 and median([4.0]) == 4.0 and median([]) is None
    assert geomean(xs) == pytest.approx(st.gmean(xs))


def test_summarize_by_hand():
    # by hand: linear interpolation at (n - 1) * q, sample std with ddof=1 (sqrt(5/3) for 1..4)
    want = {"median": 2.5, "p10": 1.3, "p90": 3.7, "p99": 3.97, "mean": 2.5, "std": math.sqrt(5 / 3),
            "min": 1.0, "max": 4.0, "samples": [4.0, 1.0, 3.0, 2.0]}
    got = summarize([4, 1, 3, 2])
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(v) for k, v in want.items())


def test_percentiles_and_rel_iqr_by_hand():
    # linear interpolation at (n - 1) * p / 100 on 10, 20, 30, 40, 50 (unsorted on purpose)
    got = percentiles([50, 10, 40, 20, 30], (0, 25, 50, 90, 99))
    assert got == pytest.approx({0: 10.0, 25: 20.0, 50: 30.0, 90: 46.0, 99: 49.6})
    assert all(math.isnan(v) for v in percentiles([], (50, 90)).values())
    assert rel_iqr([50, 10, 40, 20, 30]) == pytest.approx((40 - 20) / 30)
    assert rel_iqr([5.0]) is None and rel_iqr([-1.0, 0.0, 1.0]) is None  # one sample; a median <= 0


# -- step detection ---------------------------------------------------------------------------------


def test_one_step_is_found_at_its_index_with_its_size():
    rng = np.random.default_rng(11)
    y = 10 * rng.lognormal(0, 0.03, 40)
    y[25:] *= 1.3
    fit = detect_steps(y)
    assert len(fit.steps) == 1 and len(fit.regressions) == 1
    s = fit.steps[0]
    assert s.index == 25 and s.kind == "regression" and s.exceeds_noise
    assert s.ratio == pytest.approx(1.3, rel=0.05) and s.low < 1.3 < s.high
    assert [(g.start, g.stop) for g in fit.segments] == [(0, 25), (25, 40)]
    assert fit.noise == pytest.approx(0.03, rel=0.6)


def test_noise_only_series_has_no_step():
    rng = np.random.default_rng(12)
    for n in (15, 60, 200):
        fit = detect_steps(10 * rng.lognormal(0, 0.05, n))
        assert fit.steps == () and len(fit.segments) == 1


def test_step_smaller_than_the_noise_is_not_a_regression():
    y = [10.0, 10.0, 10.0, 10.0, 10.2, 10.2, 10.2, 10.2]  # a clean 2% step, below the 5% threshold
    fit = detect_steps(y)
    assert [s.kind for s in fit.steps] == ["within noise"] and fit.regressions == ()


def test_throughput_series_and_spikes_and_missing_commits():
    y = [100.0, 101, 99, 100, 100, None, 70, 71, 69, 70, float("nan"), 70]
    fit = detect_steps(y, higher_is_worse=False)
    assert [(s.index, s.kind) for s in fit.steps] == [(6, "regression")]
    assert fit.segments[-1].stop == 12
    spike = [10.0, 10.1, 9.9, 10.0, 15.0, 10.0, 10.1, 9.9, 10.0, 10.05]
    assert [s.kind for s in detect_steps(spike).steps] == ["too short", "within noise"]
    with pytest.raises(ValueError, match="commit 2"):
        detect_steps([1.0, 2.0, -1.0])


def test_wide_spread_commits_count_for_less():
    y = [10.0, 10.1, 9.9, 10.0, 13.0, 13.1, 10.0, 9.9, 10.1, 10.0]
    assert detect_steps(y).regressions  # a two-commit plateau well above the noise
    spreads = [0.1] * 4 + [5.0, 5.0] + [0.1] * 4  # ... measured with a huge spread
    assert detect_steps(y, spreads).steps == ()


def test_optimal_partition_matches_exhaustive_search():
    rng = np.random.default_rng(4)
    z = np.concatenate([rng.normal(0, 1, 4), rng.normal(3, 1, 3), rng.normal(-1, 1, 4)])
    w = rng.uniform(0.5, 2, z.size)
    pen = 4.0

    def cost(bounds):
        total = pen * (len(bounds) - 2)
        for a, b in zip(bounds[:-1], bounds[1:]):
            m = np.sum(w[a:b] * z[a:b]) / np.sum(w[a:b])
            total += np.sum(w[a:b] * (z[a:b] - m) ** 2)
        return total

    n = z.size
    best = min(([0, *cuts, n] for r in range(n) for cuts in itertools.combinations(range(1, n), r)),
               key=cost)
    assert _optimal_partition(z, w, pen, 1) == best


def test_series_noise_ignores_a_step():
    rng = np.random.default_rng(9)
    y = rng.lognormal(0, 0.02, 100)
    stepped = y.copy()
    stepped[50:] *= 2
    assert series_noise(stepped) == pytest.approx(series_noise(y), rel=0.2)


def test_step_behind_a_one_commit_spike_is_measured_from_the_confirmed_level():
    y = [10.0, 10.1, 9.9, 10.0, 10.05, 25.0, 13.0, 13.1, 12.9, 13.0, 13.05]
    fit = detect_steps(y)
    assert [(s.index, s.kind) for s in fit.steps] == [(5, "too short"), (6, "regression")]
    assert fit.steps[1].before == pytest.approx(10.0, rel=0.01)
    assert fit.steps[1].ratio == pytest.approx(1.3, rel=0.02)


def test_round_centres_put_points_on_one_scale_and_take_each_rounds_median():
    # two points 100x apart; the candidate is 2x slower everywhere, and one of its rounds has a
    # point that waited for a core (x10): the median over points keeps that round's value
    a = [{1: 1.0, 2: 1.1, 3: 0.9}, {1: 100.0, 2: 110.0, 3: 90.0}, {1: 5.0, 2: 5.5, 3: 4.5}]
    b = [{1: 2.0, 2: 2.2, 3: 1.8}, {1: 200.0, 2: 2200.0, 3: 180.0}, {1: 10.0, 2: 11.0, 3: 9.0}]
    sa, sb = round_centres(a, b)
    assert len(sa) == len(sb) == 3
    est = ratio_interval(sa, sb)
    assert est.ratio == pytest.approx(2.0, rel=1e-9)
    # by hand: each point's centre is the median of its six log values; round 2 of b: median of
    # (ln 2.2 - c0, ln 2200 - c1, ln 11 - c2)
    c = [np.median(np.log(list(x.values()) + list(y.values()))) for x, y in zip(a, b)]
    want = np.exp(np.median([np.log(2.2) - c[0], np.log(2200.0) - c[1], np.log(11.0) - c[2]]))
    assert sb[1] == pytest.approx(want)
    # only the rounds every point measured
    sa, _ = round_centres([{1: 1.0, 2: 4.0, 3: 2.0}, {1: 4.0, 3: 8.0}], [{1: 1.0}, {1: 1.0}])
    assert len(sa) == 2
    with pytest.raises(ValueError):
        round_centres([a[0]], [])


def test_within_process_marking():
    est = ratio_interval(BASE, CAND, within_process=True)
    assert est.within_process and "within-process only" in est.method
    assert "within-process only" in verdict(est).reason
    assert est.inverted().within_process
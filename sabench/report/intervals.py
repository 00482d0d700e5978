"""Confidence intervals on the ratios readers print: report, compare and check share these.

Every interval is computed over rounds, from each round's fastest step (sabench.stats.round_minima:
a neighbour on the machine only ever adds time, so the fastest step follows the work while the
median follows the load; the latencies printed beside the ratios stay medians):
- two variants of one cell in ONE run are paired by round (round k of both was measured back to
  back), `ratio_interval(..., paired=True)` on the rounds both measured;
- points of two different runs are unpaired (Welch t on the logs of the per-round values);
- a record without two measured rounds (schema v1, a one-round run) falls back to the steps of its
  one process, and the interval is marked within-process only (printed with a †).

Times: `time_ratio` is candidate / base (> 1: slower); `speedup` is its inverse (base / candidate).
"""
from __future__ import annotations

from typing import Optional

from sabench.records import PhaseRecord
from sabench.stats import (DEFAULT_THRESHOLD, RatioEstimate, Verdict, paired_round_minima, ratio_interval,
                           round_medians, round_minima, verdict)

CONFIDENCE = 0.95
WITHIN_MARK = "†"
WITHIN_NOTE = ("† within-process only: the interval is computed from the steps of one process per point "
               "(no rounds recorded), so it ignores the variation between processes and is too narrow; "
               "measure with `--rounds` for intervals over rounds.")


def time_ratio(base: Optional[PhaseRecord], cand: Optional[PhaseRecord], *, same_run: bool,
               confidence: float = CONFIDENCE) -> Optional[RatioEstimate]:
    """candidate / base latency with its interval, or None when either side lacks two values."""
    if base is None or cand is None or not base.ok or not cand.ok:
        return None
    where = f"{cand.label} vs {base.label}"
    if same_run:
        pair = paired_round_minima(base, cand)
        if pair is not None:
            return ratio_interval(pair[0], pair[1], paired=True, confidence=confidence, where=where)
    b, wb = round_minima(base)
    c, wc = round_minima(cand)
    if len(b) < 2 or len(c) < 2:
        return None
    return ratio_interval(b, c, confidence=confidence, where=where, within_process=wb or wc)


def speedup(base, cand, *, same_run: bool, confidence: float = CONFIDENCE) -> Optional[RatioEstimate]:
    """base / candidate latency (> 1: the candidate is faster) with its interval."""
    est = time_ratio(base, cand, same_run=same_run, confidence=confidence)
    return est.inverted() if est is not None else None


def fmt_est(est: Optional[RatioEstimate], missing: str = "—") -> str:
    """'1.04× [0.97, 1.12]', with † when the interval is within-process only."""
    if est is None:
        return missing
    return str(est) + (WITHIN_MARK if est.within_process else "")


def speed_verdict(sp: RatioEstimate, threshold: float = DEFAULT_THRESHOLD) -> Verdict:
    """stats.verdict on a SPEEDUP estimate (base / candidate): "faster" means the candidate is faster.

    The verdict is taken on the time ratio (candidate / base), whose labels already speak of the
    candidate; its reason quotes that time ratio."""
    return verdict(sp.inverted(), threshold)


def latency_band(r: Optional[PhaseRecord]) -> Optional[tuple]:
    """(low, high, within_process) to draw around a point's median: the range of its per-round
    medians when it has two or more rounds, else the p10–p90 of its steps (within-process)."""
    if r is None or not r.ok or r.latency_ms is None:
        return None
    vals, within = round_medians(r)
    if not within:
        return min(vals), max(vals), False
    lat = r.latency_ms
    if lat.p10 is None or lat.p90 is None:
        return None
    return lat.p10, lat.p90, True


def is_noisy(r: Optional[PhaseRecord]) -> bool:
    """The record's own stability check failed (p90/p10 of its samples above the threshold)."""
    return r is not None and r.stability is not None and r.stability.stable is False

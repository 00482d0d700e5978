"""Statistics for conclusions that survive noise; the one home of every median, geometric mean,
interval and verdict in sabench.

- summary:   summaries of samples (summarize, median, geomean, percentiles, rel_iqr) and their validation
- rounds:    the per-round statistic (each round's fastest step or median), the replication unit
- intervals: ratio intervals (t, bootstrap, rank); a set of points judged as a whole (round_centres)
- verdicts:  faster / slower / not distinguishable, and the gate's regression test
- steps:     step detection over a whole history series
"""
from sabench.stats.intervals import (METHODS, RatioEstimate, fmt_ratio, geomean_interval, ratio_interval,
                                     round_centres)
from sabench.stats.rounds import ok_rounds, paired_round_minima, round_medians, round_minima
from sabench.stats.steps import Segment, Step, StepFit, detect_steps
from sabench.stats.summary import geomean, median, percentiles, rel_iqr, summarize, validate_samples
from sabench.stats.verdicts import DEFAULT_THRESHOLD, MIN_ROUNDS, GateResult, Verdict, regression, verdict

__all__ = ["METHODS", "RatioEstimate", "fmt_ratio", "geomean_interval", "ratio_interval", "round_centres",
           "ok_rounds", "paired_round_minima", "round_medians", "round_minima", "Segment", "Step", "StepFit",
           "detect_steps", "geomean", "median", "percentiles", "rel_iqr", "summarize", "validate_samples", "DEFAULT_THRESHOLD",
           "MIN_ROUNDS", "GateResult", "Verdict", "regression", "verdict"]

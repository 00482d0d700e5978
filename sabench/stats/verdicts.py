"""Verdicts on a ratio's interval: faster / slower / not distinguishable, and the gate's test.

One threshold test serves both: a change counts only when the whole interval clears 1 +/- the
practical threshold (`verdict` adds that the interval must be no wider than the effect it names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from sabench.stats.intervals import RatioEstimate, ratio_interval
from sabench.stats.summary import validate_samples

DEFAULT_THRESHOLD = 0.05
MIN_ROUNDS = 3


class Verdict(NamedTuple):
    label: str  # "faster" | "slower" | "not distinguishable" (the candidate, against the base)
    reason: str


def verdict(est: RatioEstimate, threshold: float = DEFAULT_THRESHOLD, *,
            max_width_to_effect: float = 1.0) -> Verdict:
    """Is the candidate faster, slower, or not distinguishable from the base on this evidence?

    "slower" only when the whole interval lies above 1 + threshold, "faster" only when it lies
    below 1 / (1 + threshold) (the mirror image, so swapping base and candidate mirrors the
    verdict), and in both cases only when the interval is no wider than the effect it reports:
    ln(high / low) <= max_width_to_effect * |ln ratio|. A ratio whose interval spans a factor of 3
    is not quoted as a finding even when it clears the threshold.
    """
    _check_threshold(threshold)
    up, down = 1 + threshold, 1 / (1 + threshold)
    pct = f"{threshold:.0%}"
    if est.low > up:
        label, side = "slower", f"the whole interval {est} lies above {up:.2f}"
    elif est.high < down:
        label, side = "faster", f"the whole interval {est} lies below {down:.2f}"
    elif est.low > 1 or est.high < 1:
        return Verdict("not distinguishable", f"{est}: the interval excludes 1 but not by the "
                                              f"{pct} practical threshold ({_rounds(est)})")
    else:
        return Verdict("not distinguishable", f"{est}: the interval includes 1 "
                                              f"({_rounds(est)}; {est.confidence:.0%} interval)")
    effect = abs(math.log(est.ratio))
    if est.log_width > max_width_to_effect * effect:
        return Verdict("not distinguishable", f"{est}: the interval is wider than the effect "
                                              f"({_pct(est.ratio)}; {_rounds(est)}); measure more rounds")
    return Verdict(label, f"{side} ({_rounds(est)}; {est.confidence:.0%} interval, threshold {pct})")


@dataclass(frozen=True)
class GateResult:
    """One point's gate decision: "regression" | "improvement" | "pass" | "not judged"."""

    status: str
    reason: str
    estimate: RatioEstimate | None
    threshold: float

    @property
    def regressed(self) -> bool:
        return self.status == "regression"


def regression(base_rounds: Sequence[float], cand_rounds: Sequence[float],
               threshold: float = DEFAULT_THRESHOLD, *, paired: bool = False,
               confidence: float = 0.95, min_rounds: int = MIN_ROUNDS, method: str = "t",
               where: str = "point") -> GateResult:
    """The gate for one point: a regression when the slowdown's interval lies wholly above 1 + threshold.

    Invalid samples (<= 0, NaN, inf, not numbers) raise ValueError naming `where`; fewer than
    `min_rounds` per side gives "not judged" (named in the reason), never a pass or a fail.
    "improvement" mirrors "regression" (interval wholly below 1 / (1 + threshold)); anything else
    passes. With a 95% two-sided interval, the chance of a false alarm on one point whose true
    slowdown is at most the threshold is at most 2.5%; across K points, pass
    confidence = 1 - 0.05 / K to hold the whole check to 5% (Bonferroni).
    """
    _check_threshold(threshold)
    b = validate_samples(base_rounds, f"{where} (base)")
    c = validate_samples(cand_rounds, f"{where} (candidate)")
    if min(b.size, c.size) < max(min_rounds, 2):
        return GateResult("not judged", f"{where}: {b.size} base and {c.size} candidate round(s); "
                                        f"the gate needs at least {max(min_rounds, 2)} per side",
                          None, threshold)
    est = ratio_interval(b, c, paired=paired, confidence=confidence, method=method, where=where)
    if est.low > 1 + threshold:
        status, why = "regression", f"slower: the whole interval lies above {1 + threshold:.2f}"
    elif est.high < 1 / (1 + threshold):
        status, why = "improvement", f"faster: the whole interval lies below {1 / (1 + threshold):.2f}"
    else:
        status, why = "pass", f"the interval reaches within {threshold:.0%} of 1"
    return GateResult(status, f"{where}: {est} {why}", est, threshold)


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 10):
        raise ValueError(f"threshold must be a fraction such as 0.05, got {threshold!r}")


def _rounds(est: RatioEstimate) -> str:
    if est.within_process:
        return f"{est.n_base} and {est.n_cand} steps of one process each: within-process only"
    if est.paired:
        return f"{est.n_base} paired rounds"
    return f"{est.n_base} base and {est.n_cand} candidate rounds"


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.0f}%"

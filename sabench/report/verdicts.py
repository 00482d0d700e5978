"""The speed findings of report.md: a variant is named faster or slower than the baseline only
where the data says so (sabench.stats.verdict on the speedup's interval, with a stated practical
threshold); everywhere else the report says the variants are not distinguishable, and why."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from sabench.report.intervals import CONFIDENCE, fmt_est, speed_verdict, speedup
from sabench.records import Key, PhaseRecord, PointSpec
from sabench.report.results import BASELINE, fmt_ms, listing, median_ms, phases_of, variants_of
from sabench.stats import DEFAULT_THRESHOLD, MIN_ROUNDS, RatioEstimate

MAX_LISTED = 12


@dataclass(frozen=True)
class Judged:
    key: Key
    speedup: RatioEstimate          # baseline / variant, with its interval
    label: str                      # "faster" | "slower" | "not distinguishable" (the variant)
    why: str                        # "includes 1" | "within threshold" | "wider than effect" | ""


def speedups(index: Dict[Key, PhaseRecord]) -> List[Tuple[Key, RatioEstimate]]:
    """(key, speedup with its interval) of every (variant, point, phase) with a baseline beside it."""
    out = []
    for k, r in index.items():
        if k[0] != BASELINE:
            sp = speedup(index.get((BASELINE,) + k[1:]), r, same_run=True)
            if sp is not None:
                out.append((k, sp))
    return out


def judge_points(sps: List[Tuple[Key, RatioEstimate]], threshold: float = DEFAULT_THRESHOLD) -> List[Judged]:
    """The speedups measured over rounds, each judged on its interval. A point measured in one round
    is not judged: the steps of one process ignore the variation between processes (its ratio stays
    an estimate in the tables)."""
    out = []
    for k, sp in sps:
        if sp.within_process:
            continue
        v = speed_verdict(sp, threshold)
        out.append(Judged(k, sp, v.label, "" if v.label != "not distinguishable" else _why(sp, threshold)))
    return out


def _why(sp: RatioEstimate, threshold: float) -> str:
    if sp.low <= 1 <= sp.high:
        return "includes 1"
    if sp.low < 1 + threshold and sp.high > 1 / (1 + threshold):
        return "within threshold"
    return "wider than effect"


def _pt(k) -> str:
    return PointSpec(k[0], k[1], k[2]).size


def _estimates_only(results, n: int) -> str:
    """The one paragraph a one-round run gets instead of speed findings."""
    name = (results.suite or {}).get("name") or "SUITE"
    return (f"**Speed: estimates only, no verdict.** {n} compared point{'s' if n > 1 else ''} "
            f"{'were' if n > 1 else 'was'} measured in one round, so each ratio in the tables (marked †) "
            f"comes from the steps of one process, which share that process's conditions and say nothing "
            f"of the variation between processes. For a verdict, measure at least {MIN_ROUNDS} rounds: "
            f"`sabench run {name} --out <this run's directory> --rounds {MIN_ROUNDS} --resume` adds the "
            f"missing rounds to this run.")


def basis(judged: List[Judged], threshold: float) -> str:
    """How the speed findings were reached: intervals, rounds, threshold."""
    paired = [j for j in judged if j.speedup.paired]
    rounds = sorted({j.speedup.n_base for j in paired})
    rr = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}–{rounds[-1]}" if rounds else "several"
    how = (f"intervals over {rr} rounds per point, on each round's fastest step (other work on the machine "
           "only ever adds time), paired by round (variants of a cell measured back to back)")
    return (f"How to read the speed findings: speedup = baseline time / variant time with its "
            f"{CONFIDENCE:.0%} interval; {how}. A variant is called faster or slower only where the whole "
            f"interval clears the {threshold:.0%} practical threshold and is narrower than the effect.")


def speed_findings(results, index: Dict[Key, PhaseRecord], threshold: float = DEFAULT_THRESHOLD) -> List[str]:
    """Markdown bullets (sub-bullets start with '  - '): per phase the largest speedup that has a
    verdict, or that the variants are not distinguishable and why; per variant its counts; the
    points where a variant is slower."""
    sps = speedups(index)
    judged = judge_points(sps, threshold)
    others = [v for v in variants_of(results) if v != BASELINE]
    estimates = [k for k, sp in sps if sp.within_process]
    if not judged:
        return [_estimates_only(results, len(estimates))] if estimates else []
    out = [basis(judged, threshold)]
    if estimates:
        out.append(_estimates_only(results, len(estimates)))
    for phase in phases_of(results):
        js = [j for j in judged if j.key[3] == phase]
        if not js:
            continue
        faster = [j for j in js if j.label == "faster"]
        if faster:
            best = max(faster, key=lambda j: j.speedup.ratio)
            k = best.key
            b_ms, v_ms = median_ms(index.get((BASELINE,) + k[1:])), median_ms(index[k])
            unit = "ms" if phase == "prefill" else "ms/token"
            out.append(f"**{phase.capitalize()}**: the largest speedup over baseline that the data supports is "
                       f"**{fmt_est(best.speedup)}**, `{k[0]}` at batch {k[1]}, seq_len {k[2]} "
                       f"(median {fmt_ms(v_ms)} vs {fmt_ms(b_ms)} {unit}).")
        elif not any(j.label == "slower" for j in js):
            out.append(f"**{phase.capitalize()}**: no variant is distinguishable from baseline on this run "
                       f"({_reasons(js, threshold)}).")
        else:
            out.append(f"**{phase.capitalize()}**: no variant is faster than baseline beyond the "
                       f"{threshold:.0%} threshold on this run.")
        for v in others:
            mine = [j for j in js if j.key[0] == v]
            if mine:
                out.append("  - " + _variant_line(v, mine, threshold))
    slower = sorted((j for j in judged if j.label == "slower"), key=lambda j: j.speedup.ratio)
    if slower:
        items = [f"{j.key[3]} `{j.key[0]}` {_pt(j.key)} ({fmt_est(j.speedup)})" for j in slower]
        out.append(f"**Slower than baseline** beyond the {threshold:.0%} threshold at {len(slower)} of "
                   f"{len(judged)} compared points, slowest first: " + listing(items, MAX_LISTED) + ".")
    else:
        out.append(f"No variant is slower than baseline beyond the {threshold:.0%} threshold at any compared point.")
    return out


def _variant_line(v: str, js: List[Judged], threshold: float) -> str:
    n = len(js)
    f = [j for j in js if j.label == "faster"]
    s = [j for j in js if j.label == "slower"]
    nd = n - len(f) - len(s)
    if not f and not s:
        return (f"`{v}`: not distinguishable from baseline at {'its only' if n == 1 else f'any of its {n}'} "
                f"compared point{'s' if n > 1 else ''} ({_reasons(js, threshold)})")
    parts = []
    if f:
        best = max(f, key=lambda j: j.speedup.ratio)
        parts.append(f"faster at {len(f)} of {n} points (up to {fmt_est(best.speedup)} at {_pt(best.key)})")
    if s:
        worst = min(s, key=lambda j: j.speedup.ratio)
        parts.append(f"slower at {len(s)} (down to {fmt_est(worst.speedup)} at {_pt(worst.key)})")
    if nd:
        parts.append(f"not distinguishable at {nd}")
    return f"`{v}`: " + ", ".join(parts)


def _reasons(js: List[Judged], threshold: float) -> str:
    """Why points are not distinguishable, counted: interval includes 1 / within the threshold /
    wider than the effect; the typical interval width; within-process only."""
    counts: Dict[str, int] = {}
    for j in js:
        if j.label == "not distinguishable":
            counts[j.why] = counts.get(j.why, 0) + 1
    words = {"includes 1": "the interval includes 1",
             "within threshold": f"the interval excludes 1 but not by the {threshold:.0%} threshold",
             "wider than effect": "the interval is wider than the effect"}
    parts = [f"{words[w]} at {c} point{'s' if c > 1 else ''}" for w, c in counts.items()]
    widths = sorted(math.sqrt(j.speedup.high / j.speedup.low) for j in js)
    parts.append(f"median interval ±{(widths[len(widths) // 2] - 1) * 100:.0f}%")
    parts.append(f"{js[0].speedup.n_base} rounds")
    return "; ".join(parts)


def speedup_cell(index: Dict[Key, PhaseRecord], r: PhaseRecord) -> Tuple[Optional[RatioEstimate], str]:
    """The phase table's 'speedup vs baseline' cell: the estimate and its text."""
    sp = speedup(index.get((BASELINE,) + r.key[1:]), r, same_run=True)
    return sp, fmt_est(sp)

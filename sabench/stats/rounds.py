"""The per-round statistic: one value per measured round, the replication unit of every interval.

Every interval a reader prints is computed over ROUNDS, never over the steps of one process,
because steps share their process's conditions. The value of a round is its fastest step for
ratios and the gate (a neighbour on the machine only ever adds time, so the fastest step follows
the work where the median follows the load: docs/methodology.md, "The regression gate"), its
median for latency bands. A record without two measured rounds (schema v1, a one-round run) has
only the steps of one process: they come back flagged within_process, and such values give
estimates, never verdicts. Records are read by their attributes (`rounds`, `ok`, `latency_ms`).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple


def ok_rounds(record, fastest: bool = False) -> Dict[int, float]:
    """round index -> that round's median (ms), or its fastest step with `fastest` (a round stored
    without its samples counts with its median), for the rounds of `record` that measured."""
    return {r.round: min(r.samples) if fastest and r.samples else r.median_ms
            for r in (record.rounds or ()) if r.ok and r.median_ms is not None}


def round_minima(record) -> Tuple[Tuple[float, ...], bool]:
    """(values, within_process) as round_medians, of each measured round's FASTEST step: what every
    ratio's interval and the regression gate are computed from. Interference from other work only
    ever adds time to a step, so a round's fastest step tracks the cost of the work itself where
    its median follows how busy the machine was (docs/methodology.md, "The regression gate")."""
    per_round = ok_rounds(record, fastest=True)
    if len(per_round) >= 2:
        return tuple(per_round.values()), False
    return round_medians(record)


def round_medians(record) -> Tuple[Tuple[float, ...], bool]:
    """(values, within_process): one median per measured round when there are two or more,
    within_process False. Otherwise (a v1 record, or a single round): the raw step samples of the
    record's headline latency, flagged within_process True (pseudo-rounds: they understate the
    spread between processes). A record that did not measure gives ((), True).
    """
    per_round = ok_rounds(record)
    if len(per_round) >= 2:
        return tuple(per_round.values()), False
    lat = record.latency_ms if record.ok else None
    return (tuple(lat.samples) if lat is not None else ()), True


def paired_round_minima(base, cand) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """Each round's fastest step of two records of ONE run, on the rounds both measured (round k
    of both, adjacent in time), or None when they share fewer than two measured rounds."""
    b, c = ok_rounds(base, fastest=True), ok_rounds(cand, fastest=True)
    common = sorted(set(b) & set(c))
    if len(common) < 2:
        return None
    return tuple(b[k] for k in common), tuple(c[k] for k in common)

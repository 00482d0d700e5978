"""Rounds: the order of a round's points, and one phase record per point merged over its rounds.

A round is one pass over every point of a suite. Each round visits the (batch, seq) cells in
a fresh shuffled order, seeded by the run's `created` stamp and the round index (so a resumed
run repeats it), and within a cell its variants back to back in a shuffled order: slow drift
spreads over all variants, and the variants of one cell measured in round k are adjacent in
time (their per-round ratios are paired by round).

Each (point, round) is its own point process. Its records are merged into the point's one
phase record: `rounds` keeps every round's median, sample count and samples (or the round's
own status when it failed); the headline `latency_ms` summarises the samples of all measured
rounds; the deterministic figures come from the first round that measured; the memory
readings are those of the round with the largest device_peak (a note says so); the rates
(tokens/s, MFU, MBU) are derived again from the merged median (records.rates). Records are
typed (PhaseRecord, RoundSample) throughout.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Iterable, Optional, Tuple

from sabench.records.rates import with_rates
from sabench.records import MAX_REQUEST, Latency, PhaseRecord, RoundSample, Stability
from sabench.stats import median

# --retry-failed: which round statuses count as still failing, and are measured again
RETRY_STATUSES = {"errors": ("error", "killed"), "oom": ("error", "killed", "oom")}
FAILING = ("error", "killed")  # a run holding one of these exits 1


def round_seed(created: str, round_index: int) -> str:
    return f"{created}|round {round_index}"


def round_order(points: Iterable, created: str, round_index: int) -> list:
    """The points of one round: cells (batch, seq) shuffled, each cell's variants adjacent and
    shuffled. Deterministic for (created, round_index)."""
    rng = random.Random(round_seed(created, round_index))
    cells: dict = {}
    for p in points:
        cells.setdefault((p.batch_size, p.seq_len), []).append(p)
    keys = list(cells)
    rng.shuffle(keys)
    out = []
    for k in keys:
        group = list(cells[k])
        rng.shuffle(group)
        out += group
    return out


def record_rounds(rec: PhaseRecord) -> Tuple[RoundSample, ...]:
    """The rounds of a stored record; one written without `rounds` (one round, or an older
    file) is read as round 1."""
    return rec.rounds or (round_sample(rec, 1),)


def round_sample(rec: PhaseRecord, round_index: int) -> RoundSample:
    """One round's entry of `rounds` from that round's own record."""
    if rec.ok:
        s = rec.latency_ms.samples
        return RoundSample(round_index, median(s), len(s), tuple(s))
    return RoundSample(round_index, status=rec.status, error=rec.error)


def round_status(rec: Optional[PhaseRecord], round_index: int) -> Optional[str]:
    """The status of `rec`'s round `round_index`, None when that round was not measured."""
    if rec is None:
        return None
    return next((r.status for r in record_rounds(rec) if r.round == round_index), None)


def merge_round(old: Optional[PhaseRecord], new: PhaseRecord, round_index: int, where: Optional[dict] = None,
                peaks: Optional[dict] = None) -> PhaseRecord:
    """The point's phase record with round `round_index` (measured as `new`) merged in; a round
    of the same index already in `old` (a retried failure) is replaced. `where` (`run --devices`:
    device, device_bus_id, t_start, t_end) is kept in the round's entry. The rates follow the
    merged latency (records.rates, against `peaks`)."""
    sample = replace(round_sample(new, round_index), **{k: v for k, v in (where or {}).items() if v is not None})
    if old is None:
        return with_rates(replace(new, rounds=(sample,)), peaks)
    rounds = tuple(sorted([r for r in record_rounds(old) if r.round != round_index] + [sample],
                          key=lambda r: r.round))
    base = old if old.ok or not new.ok else new  # the first round that measured: its deterministic figures
    out = replace(base, rounds=rounds)
    ok = [r for r in rounds if r.ok]
    if not ok:
        return out
    lat = Latency.of([x for r in ok for x in r.samples])
    out = replace(out, latency_ms=lat, stability=_stability(out.stability, lat, len(ok)))
    return with_rates(_largest_memory(out, new, len(ok)), peaks)


def _stability(old: Optional[Stability], lat: Latency, n_rounds: int) -> Stability:
    ratio = lat.p90 / lat.p10 if lat.p10 > 0 else float("inf")
    st = replace(old or Stability(), p90_over_p10=ratio, note=None)
    if st.threshold is None:
        return st
    stable = ratio <= st.threshold
    return replace(st, stable=stable, note=None if stable else (
        f"p90/p10 {ratio:.3f} > {st.threshold} over the samples of {n_rounds} rounds: "
        "the samples are spread (launch-bound or a busy machine); compare with care"))


def _peak(rec: PhaseRecord) -> float:
    if not rec.ok or rec.memory_bytes is None:
        return -1
    return rec.memory_bytes.device_peak or -1


def _largest_memory(out: PhaseRecord, new: PhaseRecord, n_ok: int) -> PhaseRecord:
    """The memory readings of the round with the largest device_peak, with a note saying so."""
    if _peak(new) > _peak(out):
        out = replace(out, memory_bytes=new.memory_bytes, memory_breakdown=new.memory_breakdown,
                      memory_source=new.memory_source)
    if n_ok > 1:
        note = f"memory readings: those of the round with the largest device_peak, of {n_ok} rounds"
        notes = [x for x in (out.memory_notes or ()) if not x.startswith("memory readings: those of")]
        out = replace(out, memory_notes=tuple(notes + [note]))
    return out


def failing_rounds(records, statuses=FAILING) -> list:
    """(record label, round) of every round whose status is among `statuses`."""
    return [(rec.label, r.round) for rec in records if rec.batch_request != MAX_REQUEST
            for r in record_rounds(rec) if r.status in statuses]

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
readings are those of the round with the largest device_peak (a note says so).
"""
from __future__ import annotations

import random
from typing import Iterable, Optional

from sabench.records import MAX_REQUEST
from sabench.stats import median, summarize

# --retry-failed: which round statuses count as still failing, and are measured again
RETRY_STATUSES = {"errors": ("error", "killed"), "oom": ("error", "killed", "oom")}
FAILING = ("error", "killed")  # a run holding one of these exits 1
# fields computed from the headline median: rescaled when the median changes
_RATE_FIELDS = ("tokens_per_s", "mfu", "mbu")
_MEMORY_FIELDS = ("memory_bytes", "memory_breakdown", "memory_source")


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


def record_rounds(rec: dict) -> list:
    """The rounds of a stored record; one written without `rounds` (one round, or an older
    file) is read as round 1."""
    if rec.get("rounds"):
        return list(rec["rounds"])
    return [round_sample(rec, 1)]


def round_sample(rec: dict, round_index: int) -> dict:
    """One round's entry of `rounds` from that round's own record."""
    if rec.get("status") == "ok":
        s = list(rec["latency_ms"]["samples"])
        return {"round": round_index, "median_ms": median(s), "n": len(s), "samples": s}
    out = {"round": round_index, "n": 0, "samples": [], "status": rec.get("status", "error")}
    if rec.get("error"):
        out["error"] = rec["error"]
    return out


def round_status(rec: Optional[dict], round_index: int) -> Optional[str]:
    """The status of `rec`'s round `round_index`, None when that round was not measured."""
    if rec is None:
        return None
    for r in record_rounds(rec):
        if r["round"] == round_index:
            return r.get("status", "ok")
    return None


def merge_round(old: Optional[dict], new: dict, round_index: int, where: Optional[dict] = None) -> dict:
    """The point's phase record with round `round_index` (measured as `new`) merged in; a round
    of the same index already in `old` (a retried failure) is replaced. `where` (`run --devices`:
    device, device_bus_id, t_start, t_end) is kept in the round's entry."""
    sample = dict(round_sample(new, round_index), **{k: v for k, v in (where or {}).items() if v is not None})
    if old is None:
        return dict(new, rounds=[sample])
    rounds = sorted([r for r in record_rounds(old) if r["round"] != round_index] + [sample],
                    key=lambda r: r["round"])
    base = old if old.get("status") == "ok" or new.get("status") != "ok" else new
    out = dict(base, rounds=rounds)
    ok = [r for r in rounds if r.get("status", "ok") == "ok"]
    if not ok:
        return out
    if base is new:  # the first round that measured: its deterministic figures; drop old errors
        for k in ("error", "traceback", "stderr_tail"):
            out.pop(k, None)
    old_median = base["latency_ms"]["median"]
    samples = [x for r in ok for x in r["samples"]]
    lat = summarize(samples)
    out["latency_ms"] = lat
    for k in _RATE_FIELDS:
        if out.get(k) is not None and lat["median"] > 0:
            out[k] = out[k] * old_median / lat["median"]
    out["stability"] = _stability(out.get("stability") or {}, lat, len(ok))
    return _largest_memory(out, old, new)


def _stability(old: dict, lat: dict, n_rounds: int) -> dict:
    ratio = lat["p90"] / lat["p10"] if lat["p10"] > 0 else float("inf")
    threshold = old.get("threshold")
    st = dict(old, p90_over_p10=ratio)
    st.pop("note", None)
    if threshold is not None:
        st["stable"] = ratio <= threshold
        if not st["stable"]:
            st["note"] = (f"p90/p10 {ratio:.3f} > {threshold} over the samples of {n_rounds} rounds: "
                          "the samples are spread (launch-bound or a busy machine); compare with care")
    return st


def _peak(rec: Optional[dict]) -> float:
    if not rec or rec.get("status") != "ok":
        return -1
    return ((rec.get("memory_bytes") or {}).get("device_peak")) or -1


def _largest_memory(out: dict, old: Optional[dict], new: dict) -> dict:
    """The memory readings of the round with the largest device_peak, with a note saying so."""
    if _peak(new) > _peak(out):
        for k in _MEMORY_FIELDS:
            if k in new:
                out[k] = new[k]
    n = sum(r.get("status", "ok") == "ok" for r in out["rounds"])
    if n > 1:
        note = f"memory readings: those of the round with the largest device_peak, of {n} rounds"
        notes = [x for x in (out.get("memory_notes") or []) if not x.startswith("memory readings: those of")]
        out["memory_notes"] = notes + [note]
    return out


def failing_rounds(records: list, statuses=FAILING) -> list:
    """(point label, round) of every round whose status is among `statuses`."""
    out = []
    for rec in records:
        if rec.get("batch_request") == MAX_REQUEST:
            continue
        for r in record_rounds(rec):
            if r.get("status", "ok") in statuses:
                out.append((f"{rec['phase']} {rec['variant']} b={rec['batch_size']} s={rec['seq_len']}", r["round"]))
    return out

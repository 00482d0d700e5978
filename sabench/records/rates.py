"""What a phase record derives from its headline latency: tokens/s, MFU, MBU and the roofline floor.

One function, applied where a record is made (the point process) and wherever its latency
changes (the sweep merging a round in): the rates always follow the record's own median and
its analytic figures, so no merge has to rescale them.

- tokens_per_s: prefill B*T / median; decode B / median step (one token per sequence per step);
- mfu, mbu: the FLOPs (bytes) of one sample over the median, against the device's peaks;
- floor_ms: the roofline floor of one sample, max(FLOPs / peak FLOP/s, bytes / peak bandwidth);
- roofline_metric: which of mfu / mbu is the phase's headline (prefill mfu, decode mbu).

A tensor-parallel record's mfu, mbu and floor are one rank's (its share of the FLOPs and bytes,
against one GPU's peaks), and the floor adds the rank's all-reduce bytes over the link.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from sabench.records import PhaseRecord

METRIC = {"prefill": "mfu", "decode": "mbu"}


def with_rates(rec: PhaseRecord, peaks: Optional[dict]) -> PhaseRecord:
    """`rec` with tokens_per_s, mfu, mbu and floor_ms computed from its latency median; a record
    that did not measure is returned as it is. A figure whose inputs the record lacks (no peak, no
    analytic count) is left as it was."""
    if not rec.ok or rec.latency_ms is None or not rec.latency_ms.median:
        return rec
    peaks = peaks or {}
    med_s = rec.latency_ms.median / 1e3
    decode = rec.phase == "decode"
    samples = (rec.decode_tokens or 1) if decode else 1  # the phase's figures are per phase: per sample here
    tp = rec.tensor_parallel
    if tp is not None:
        work = tp.per_rank or {}
    else:
        work = {"flops": rec.flops.analytic if rec.flops is not None else None, "bytes_moved": rec.bytes_moved}
    flops, nbytes = work.get("flops"), work.get("bytes_moved")
    out = {"tokens_per_s": rec.batch_size * (1 if decode else rec.seq_len) / med_s,
           "roofline_metric": METRIC[rec.phase]}
    bw, pf = peaks.get("peak_bandwidth_bytes_per_s"), peaks.get("peak_flops_per_s")
    floors = []
    if pf and flops is not None:
        floors.append(flops / samples / pf)
        out["mfu"] = flops / samples / (med_s * pf)
    if bw and nbytes is not None:
        floors.append(nbytes / samples / bw)
        out["mbu"] = nbytes / samples / (med_s * bw)
    if floors:
        out["floor_ms"] = max(floors) * 1e3
        if tp is not None and tp.link_bytes is not None and tp.link_bandwidth_bytes_per_s:
            link_ms = tp.link_bytes / samples / tp.link_bandwidth_bytes_per_s * 1e3
            out["tensor_parallel"] = replace(tp, link_ms=link_ms)
            out["floor_ms"] += link_ms
    return replace(rec, **out)

"""Upgrade a results.json of schema v1 ("sabench-results/1") to v2, before validation.

v1 files changed shape while the version stayed at 1; each rename is undone here, once, so no
reader special-cases an old file:

- `memory_bytes.peak_nvml` (the phase's rise over the level before it) is `phase_rise`;
- `memory_bytes.peak_nvml_process` (NVML's per-process reading) is the absolute footprint,
  `device_peak`, with `memory_source` "nvml-process";
- a CPU record (no allocator or NVML figure) with only `peak_rss` has that as its `device_peak`,
  `memory_source` "rss";
- a latency with samples but no median gets the samples' median.

Anything that is not the expected shape is left as it is, for validation to name.
"""
from __future__ import annotations

import copy

from sabench.values import is_number


def upgrade_v1(data: dict) -> dict:
    out = copy.copy(data)
    recs = data.get("records")
    if isinstance(recs, list):
        out["records"] = [_record(r) if isinstance(r, dict) else r for r in recs]
    return out


def _record(r: dict) -> dict:
    r = dict(r)
    mem = r.get("memory_bytes")
    if isinstance(mem, dict):
        mem = dict(mem)
        old_rise = mem.pop("peak_nvml", None)
        if old_rise is not None and mem.get("phase_rise") is None:
            mem["phase_rise"] = old_rise
        process = mem.pop("peak_nvml_process", None)
        if mem.get("device_peak") is None:
            if process is not None:
                mem["device_peak"] = process
                r.setdefault("memory_source", "nvml-process")
            elif old_rise is None and "peak_allocated" not in mem and mem.get("peak_rss") is not None:
                mem["device_peak"] = mem["peak_rss"]
                r.setdefault("memory_source", "rss")
        elif process is not None:
            mem["peak_nvml_process"] = process  # both written: keep the old reading as it was
        r["memory_bytes"] = mem
    for name in ("latency_ms", "latency_eager_ms"):
        lat = r.get(name)
        if isinstance(lat, dict) and lat.get("median") is None and _numbers(lat.get("samples")):
            s = sorted(lat["samples"])
            n = len(s)
            r[name] = {**lat, "median": s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])}
    return r


def _numbers(xs) -> bool:
    return isinstance(xs, list) and bool(xs) and all(is_number(x) for x in xs)

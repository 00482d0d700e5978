"""Trackers: what a phase measures besides its latency, behind one small interface.

A Tracker is started before the measured work, stopped after it, and then gives its part of
the phase's record as a dict (`result()`), in the spirit of optimum-benchmark's trackers:

- MemoryTracker: the NVML sampler's window (device and per-process peaks, idle level), the
  caching allocator's peaks (AllocatorTracker), the process's peak RSS, and the footprint
  breakdown (weights + kv_cache + activations + context; measure.memory.footprint);
- EnergyTracker: the device's energy counter (or integrated power samples) over the timed
  calls only (EnergyMeter), which it reads from the memory tracker's NVML window.

Latency is not a window but samples: measure.timing (time_fn, time_steps, CudaGraphStep) takes
them and sabench.stats.summarize summarises them. PhaseTrackers runs both trackers over one phase.
"""
from __future__ import annotations

import itertools
from typing import Callable, Optional, Protocol

from sabench.measure.energy import EnergyMeter
from sabench.measure.memory import (AllocatorTracker, current_rss_bytes, footprint, peak_rss_bytes,
                                    reset_peak_rss)


class Tracker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def result(self) -> dict: ...


_CPU_NOTE = ("CPU run: device_peak is the process's peak RSS; its context part is the interpreter, torch and "
             "libraries; activations are the RSS rise over the phase")
_RSS_NOTE = "the kernel refused to reset the peak-RSS mark: peak_rss is the process's lifetime peak"
_NVML_KEYS = ("idle_used_bytes", "peak_used_bytes", "n_samples", "achieved_hz", "device_mapping", "notes")


class MemoryTracker:
    """One phase's memory: NVML window, allocator peaks, RSS; result() gives the record's
    memory_bytes (device_peak, phase_rise, peak_allocated/reserved, peak_rss), memory_source,
    memory_breakdown, memory_notes and nvml."""

    def __init__(self, device, sampler, *, weights: int, kv_cache: int, pre_cuda_used=None):
        self.device, self.sampler = device, sampler
        self.weights, self.kv_cache, self.pre_cuda_used = weights, kv_cache, pre_cuda_used
        self.alloc = AllocatorTracker(device)
        self.window: dict = {}
        self.memory: dict = {}
        self.source = self.breakdown = None
        self.notes: list = []

    def start(self) -> None:
        self.rss_reset = reset_peak_rss()
        self.rss_start = current_rss_bytes()
        self.alloc.start()
        if self.sampler is not None:
            self.sampler.read_idle()
            self.sampler.start()

    def stop(self) -> None:
        r = self.window = self.sampler.stop() if self.sampler is not None else {}
        mem = self.memory = {k: int(v) for k, v in self.alloc.stop().items() if v is not None}
        mem["peak_rss"] = peak_rss_bytes()
        cpu = self.device.type != "cuda"
        fp = footprint(weights=self.weights, kv_cache=self.kv_cache,
                       process_peak=r.get("peak_process_bytes"), device_peak_used=r.get("peak_used_bytes"),
                       pre_cuda_used=self.pre_cuda_used, allocated_peak=mem.get("peak_allocated"),
                       rss_peak=mem["peak_rss"] if cpu else None,
                       rss_start=self.rss_start if cpu and self.rss_reset else None)
        if fp["device_peak"] is not None:
            mem["device_peak"] = fp["device_peak"]
        if r.get("peak_minus_idle_bytes") is not None:  # the rise over the level just before the phase
            mem["phase_rise"] = int(r["peak_minus_idle_bytes"])
        elif cpu and self.rss_reset and self.rss_start is not None:
            mem["phase_rise"] = max(0, mem["peak_rss"] - self.rss_start)
        notes = ([_CPU_NOTE] + ([] if self.rss_reset else [_RSS_NOTE])) if cpu else []
        self.source, self.breakdown, self.notes = fp["source"], fp["breakdown"], notes + fp["notes"]

    def result(self) -> dict:
        out = {"memory_bytes": self.memory}
        if self.source:
            out.update(memory_source=self.source, memory_breakdown=self.breakdown)
        if self.notes:
            out["memory_notes"] = self.notes
        if self.window:
            out["nvml"] = {k: self.window.get(k) for k in _NVML_KEYS}
            out["nvml"]["pre_cuda_used_bytes"] = self.pre_cuda_used
        return out


class EnergyTracker:
    """Energy of the timed calls: start()/stop() around them; result() once `window()` (the
    NVML window holding power samples, when the counter is missing) has closed. `tokens` and
    `scope` (what the figure covers) are set by the phase before result()."""

    def __init__(self, sampler, device, reason: Optional[str] = None, window: Callable[[], dict] = dict):
        self.meter = EnergyMeter(sampler, device, reason)
        self.window = window
        self.tokens, self.scope = 0, ""

    def start(self) -> None:
        self.meter.start()

    def stop(self) -> None:
        self.meter.stop()

    def result(self) -> dict:
        return self.meter.result(self.window(), self.tokens, self.scope)


class PhaseTrackers:
    """Memory over the whole `with` block, energy over the timed calls inside it (the phase
    starts and stops `energy`); fields() is the phase record's share of both."""

    def __init__(self, device, sampler, *, weights: int, kv_cache: int, pre_cuda_used=None, nvml_reason=None):
        self.memory = MemoryTracker(device, sampler, weights=weights, kv_cache=kv_cache,
                                    pre_cuda_used=pre_cuda_used)
        self.energy = EnergyTracker(sampler, device, nvml_reason, window=lambda: self.memory.window)

    def energy_from_call(self, k: int):
        """A time_fn `setup` that starts the energy tracker right before call k (the first timed one)."""
        calls = itertools.count()

        def setup():
            if next(calls) == k:
                self.energy.start()
        return setup

    def __enter__(self) -> "PhaseTrackers":
        self.memory.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.memory.stop()
        return False

    def fields(self, tokens: int, scope: str) -> dict:
        self.energy.tokens, self.energy.scope = tokens, scope
        return self.memory.result() | self.energy.result()

"""The Tracker interface of sabench.measure.trackers: memory and energy, start/stop/result."""
from __future__ import annotations

import torch

from sabench.measure.trackers import EnergyTracker, MemoryTracker, PhaseTrackers, Tracker


class FakeSampler:
    """An NVML sampler's surface: an energy counter in mJ and one memory window."""

    energy_error = None

    def __init__(self, counter_mj, window):
        self.counter, self.window, self.calls = list(counter_mj), window, []

    def energy_mj(self):
        return self.counter.pop(0)

    def read_idle(self):
        self.calls.append("read_idle")

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")
        return self.window


def _measured(tracker: Tracker) -> dict:
    """A phase's use of any tracker: start, (the work), stop, result: nothing else is called."""
    tracker.start()
    tracker.stop()
    return tracker.result()


def test_trackers_share_one_interface():
    window = {"peak_used_bytes": 800, "peak_process_bytes": 500, "peak_minus_idle_bytes": 200,
              "idle_used_bytes": 600, "n_samples": 3, "achieved_hz": 100.0}
    sampler = FakeSampler([2_000, 5_000], window)
    memory = MemoryTracker(torch.device("cpu"), sampler, weights=100, kv_cache=50)
    energy = EnergyTracker(sampler, torch.device("cpu"), window=lambda: memory.window)
    energy.tokens, energy.scope = 3, "three tokens"
    mem, joules = (_measured(t) for t in (memory, energy))
    assert sampler.calls == ["read_idle", "start", "stop"]
    assert mem["memory_bytes"]["phase_rise"] == 200 and mem["nvml"]["peak_used_bytes"] == 800
    assert joules["energy_j"] == 3.0 and joules["joules_per_token"] == 1.0  # (5000 - 2000) mJ over 3 tokens


def test_energy_is_the_counter_difference_over_the_timed_calls():
    sampler = FakeSampler([1_000, 4_000], {})
    e = EnergyTracker(sampler, torch.device("cpu"), window=dict)
    e.start()
    e.stop()
    e.tokens, e.scope = 6, "six tokens"
    r = e.result()
    assert r["energy_j"] == 3.0 and r["joules_per_token"] == 0.5  # (4000 - 1000) mJ, over 6 tokens
    assert r["energy_source"] == "nvml-energy-counter" and r["energy_scope"] == "six tokens"


def test_cpu_memory_window_reports_rss_and_no_energy():
    with PhaseTrackers(torch.device("cpu"), None, weights=100, kv_cache=50) as t:
        x = torch.ones(4 << 20)  # 16 MiB live inside the window
        del x
    f = t.fields(10, "scope")
    assert f["memory_bytes"]["peak_rss"] > 0
    assert "energy_j" not in f  # CPU: no energy figures at all
    assert "nvml" not in f and any("CPU run" in n for n in f["memory_notes"])


def test_the_memory_tracker_opens_and_closes_the_sampler_window():
    window = {"peak_used_bytes": 900, "peak_process_bytes": 700, "peak_minus_idle_bytes": 300,
              "idle_used_bytes": 600, "n_samples": 5, "achieved_hz": 200.0}
    sampler = FakeSampler([10, 20], window)
    t = PhaseTrackers(torch.device("cpu"), sampler, weights=100, kv_cache=50)
    with t:
        t.energy.start()
        t.energy.stop()
    assert sampler.calls == ["read_idle", "start", "stop"]
    f = t.fields(1, "one token")
    assert f["memory_bytes"]["phase_rise"] == 300  # the sampler's rise over idle, as measured
    assert f["nvml"]["peak_used_bytes"] == 900 and f["nvml"]["n_samples"] == 5
    assert f["energy_j"] == 0.01  # 10 mJ

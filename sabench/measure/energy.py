"""Energy of a timed phase: NVML's total-energy counter read around it, or its power samples.

The counter (nvmlDeviceGetTotalEnergyConsumption, millijoules, Volta and later) is read
right before the first timed call and right after the last one, each time after a
synchronize, so the difference covers exactly the timed repeats (warm-up excluded). Where
the counter is missing, the NVML sampler's window also records the power draw at every
sample, and the energy is the trapezoid integral of those samples over the same interval.
Both are board-level figures: whatever else runs on the GPU counts too. The counter is
updated by the driver every few milliseconds or tens of milliseconds, so a timed part much
shorter than that has a coarse figure; `energy_window_s` tells how long it was.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from sabench.measure.timing import sync


def integrate_power(samples: Sequence[Sequence[float]], t0: float, t1: float) -> Optional[float]:
    """Joules drawn between t0 and t1 from [[perf_counter s, milliwatts], ...] samples, or None.

    Trapezoids between samples; the power at t0 and t1 is interpolated between the samples
    around them (held constant beyond the first and last). None with fewer than two samples,
    or when no sample falls inside [t0, t1] and none straddles it.
    """
    pts = sorted((float(t), float(mw) / 1e3) for t, mw in samples or ())
    if len(pts) < 2 or t1 <= t0 or pts[-1][0] < t0 or pts[0][0] > t1:
        return None

    def watts(t: float) -> float:
        if t <= pts[0][0]:
            return pts[0][1]
        for (ta, wa), (tb, wb) in zip(pts, pts[1:]):
            if ta <= t <= tb:
                return wa if tb == ta else wa + (wb - wa) * (t - ta) / (tb - ta)
        return pts[-1][1]

    xs = [t0] + [t for t, _ in pts if t0 < t < t1] + [t1]
    ws = [watts(t) for t in xs]
    return sum(0.5 * (ws[i] + ws[i + 1]) * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1))


class EnergyMeter:
    """start()/stop() around the timed calls of a phase; result() after the sampler's window closed.

    `sampler` is the point's NvmlSampler or None (CPU, or NVML unavailable): result() then
    returns {} on CPU and null figures with the reason on CUDA.
    """

    def __init__(self, sampler, device, reason: Optional[str] = None):
        self.sampler, self.device, self.reason = sampler, device, reason
        self.t0 = self.t1 = self.e0 = self.e1 = None

    def start(self) -> None:
        if self.sampler is None:
            return
        sync(self.device)
        self.e0 = self.sampler.energy_mj()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.sampler is None or self.t0 is None:
            return
        sync(self.device)
        self.t1 = time.perf_counter()
        self.e1 = self.sampler.energy_mj()

    def result(self, window: Optional[dict], tokens: int, scope: str) -> dict:
        """{"energy_j", "joules_per_token", "energy_source", "energy_scope", "energy_window_s"}
        (+ "energy_note" when a figure is missing); {} on a CPU run."""
        if self.sampler is None:
            if getattr(self.device, "type", str(self.device)) != "cuda":
                return {}
            return {"energy_j": None, "joules_per_token": None, "energy_source": None,
                    "energy_note": self.reason or "NVML unavailable"}
        out = {"energy_scope": scope}
        joules = source = None
        note = None
        if self.t0 is None or self.t1 is None:
            note = "the timed part was not reached"
        else:
            out["energy_window_s"] = self.t1 - self.t0
            if self.e0 is not None and self.e1 is not None:
                joules, source = (self.e1 - self.e0) / 1e3, "nvml-energy-counter"
            else:
                joules = integrate_power((window or {}).get("power_samples"), self.t0, self.t1)
                if joules is not None:
                    source = "nvml-power-samples"
                    note = (f"no total-energy counter ({self.sampler.energy_error or 'a reading failed'}): "
                            "energy integrated from the sampler's power readings")
                else:
                    note = (f"no total-energy counter ({self.sampler.energy_error or 'a reading failed'}) "
                            "and no power readings to integrate")
        out.update(energy_j=joules, energy_source=source,
                   joules_per_token=joules / tokens if joules is not None and tokens else None)
        if note:
            out["energy_note"] = note
        return out

"""Rounds: the replication unit of a point's timings (see the README's measurement design).

A round is one pass over every point of a suite; each (point, round) is its own process. A phase
record keeps every round it measured as a `RoundSample` (in round order); its headline `latency_ms`
summarises the samples of all rounds. What a reader computes from the rounds (one value per
round, the replication unit of every interval) lives in sabench.stats.rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from sabench.records.checks import Where, mapping, number, show, text

ROUND_STATUSES = ("ok", "oom", "error", "killed", "skipped_after_oom")


@dataclass(frozen=True)
class RoundSample:
    """One round of one point and phase: its median step (ms), its sample count and raw samples."""
    round: int
    median_ms: Optional[float] = None    # None only when the round did not measure (status != ok)
    n: int = 0
    samples: Tuple[float, ...] = ()
    status: str = "ok"                   # the round's own status: a failed round is kept, named
    error: Optional[str] = None
    device: Optional[str] = None         # `run --devices`: the GPU the round's point process was pinned to
    #   (the CUDA_VISIBLE_DEVICES it ran with: a physical GPU id or UUID); absent without --devices
    device_bus_id: Optional[str] = None  # that GPU's PCI bus id, from the NVML sampler that read it (CUDA)
    t_start: Optional[float] = None      # `run --devices`: unix time (s) when the point process was started
    t_end: Optional[float] = None        # `run --devices`: unix time (s) when it had ended
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def parse(cls, w: Where, name: str, v) -> "RoundSample":
        m = mapping(w, name, v, optional=False)
        status = text(w, f"{name}.status", m.get("status", "ok"), choices=ROUND_STATUSES)
        ok = status == "ok"
        rnd = number(w, f"{name}.round", m.get("round"), integer=True, lo=0, optional=False)
        med = number(w, f"{name}.median_ms", m.get("median_ms"), positive=True, optional=not ok)
        s = m.get("samples") or []
        if not isinstance(s, list):
            w.fail(f"{name}.samples", f"must be a list of numbers, got {show(s)}")
        samples = tuple(number(w, f"{name}.samples[{i}]", x, positive=True, optional=False)
                        for i, x in enumerate(s))
        n = number(w, f"{name}.n", m.get("n", len(samples)), integer=True, lo=1 if ok else 0)
        if samples and n != len(samples):
            w.fail(f"{name}.n", f"is {n} but the round holds {len(samples)} samples")
        t0 = number(w, f"{name}.t_start", m.get("t_start"), lo=0)
        t1 = number(w, f"{name}.t_end", m.get("t_end"), lo=0)
        if t0 is not None and t1 is not None and t1 < t0:
            w.fail(f"{name}.t_end", f"is {t1} but the round started at {t0}")
        known = ("round", "median_ms", "n", "samples", "status", "error", "device", "device_bus_id",
                 "t_start", "t_end")
        return cls(rnd, med, n, samples, status, text(w, f"{name}.error", m.get("error")),
                   text(w, f"{name}.device", m.get("device")), text(w, f"{name}.device_bus_id", m.get("device_bus_id")),
                   t0, t1, {k: x for k, x in m.items() if k not in known})

    def to_dict(self) -> dict:
        d: Dict[str, Any] = {"round": self.round}
        if self.median_ms is not None:
            d["median_ms"] = self.median_ms
        d.update(n=self.n, samples=list(self.samples))
        if self.status != "ok":
            d["status"] = self.status
        if self.error is not None:
            d["error"] = self.error
        for k in ("device", "device_bus_id", "t_start", "t_end"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return {**d, **self.extra}


def parse_rounds(w: Where, v) -> Tuple[RoundSample, ...]:
    """The `rounds` list of a phase record (absent: no rounds), in strictly increasing round order."""
    if v is None:
        return ()
    if not isinstance(v, list):
        w.fail("rounds", f"must be a list of rounds, got {show(v)}")
    out = tuple(RoundSample.parse(w, f"rounds[{i}]", x) for i, x in enumerate(v))
    for a, b in zip(out, out[1:]):
        if b.round <= a.round:
            w.fail("rounds", f"must be in increasing round order (round {b.round} after round {a.round})")
    return out

"""Rounds: the replication unit of a point's timings (see the README's measurement design).

A round is one pass over every point of a suite; each (point, round) is its own process. A phase
record keeps every round it measured as a `RoundSample` (in round order); its headline `latency_ms`
summarises the samples of all rounds. What a reader computes from the rounds (one value per
round, the replication unit of every interval) lives in sabench.stats.rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from sabench.records.checks import Where
from sabench.records.codec import Record, checked, required

ROUND_STATUSES = ("ok", "oom", "error", "killed", "skipped_after_oom")


@dataclass(frozen=True)
class RoundSample(Record):
    """One round of one point and phase: its median step (ms), its sample count and raw samples."""
    round: int = required(lo=0)
    median_ms: Optional[float] = checked(positive=True, when_ok={"required": True})  # None only when the round
    #                                      did not measure (status != ok)
    n: int = checked(0, lo=0, when_ok={"lo": 1}, len_of="samples")  # absent: the samples' count
    samples: Tuple[float, ...] = checked((), positive=True)
    status: str = checked("ok", choices=ROUND_STATUSES, status_of="round", omit="ok")  # the round's own status:
    #                                      a failed round is kept, named
    error: Optional[str] = None
    device: Optional[str] = None         # `run --devices`: the GPU the round's point process was pinned to
    #   (the CUDA_VISIBLE_DEVICES it ran with: a physical GPU id or UUID); absent without --devices
    device_bus_id: Optional[str] = None  # that GPU's PCI bus id, from the NVML sampler that read it (CUDA)
    t_start: Optional[float] = checked(lo=0)  # `run --devices`: unix time (s) when the point process was started
    t_end: Optional[float] = checked(lo=0)    # `run --devices`: unix time (s) when it had ended
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def validate(self, w: Where, name: str) -> None:
        if self.samples and self.n != len(self.samples):
            w.fail(f"{name}.n", f"is {self.n} but the round holds {len(self.samples)} samples")
        if self.t_start is not None and self.t_end is not None and self.t_end < self.t_start:
            w.fail(f"{name}.t_end", f"is {self.t_end} but the round started at {self.t_start}")

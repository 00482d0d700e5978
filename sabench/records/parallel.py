"""The `tensor_parallel` block of a phase record (a point run on N tensor-parallel ranks).

types.PhaseRecord holds it; the records codec reads and writes it from the fields below, and
schema_doc documents it from their comments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from sabench.records.checks import Where, number
from sabench.records.codec import Record, checked, required


@dataclass(frozen=True)
class RankMeasure(Record):
    """What one rank of a tensor-parallel point measured on itself (its own process and device)."""
    rank: int = required(lo=0)
    kv_cache_bytes: Optional[int] = checked(lo=0)  # bytes of the cache this rank preallocated (its KV heads)
    latency_median_ms: Optional[float] = checked(lo=0)  # this rank's median sample (the record's latency is
    #                                            rank 0's)
    torch_threads: Optional[int] = checked(lo=1)  # CPU: the ranks share the cores, each gets 1/N of the threads
    memory_source: Optional[str] = None        # as the record's memory_source, for this rank
    memory_bytes: Optional[Dict[str, Any]] = None  # this rank's memory readings (peaks) over the phase


_PER_RANK = ("params", "weight_bytes", "kv_cache_bytes", "flops", "bytes_moved")


@dataclass(frozen=True)
class TensorParallel(Record):
    """A tensor-parallel point (suite `parallel.tensor` > 1). The record's `params`,
    `kv_cache_bytes`, `flops` and `bytes_moved` stay the model's, as a TP-1 record of the same
    point has them; this block holds one rank's share and what the ranks measured. `floor_ms`,
    `mfu` and `mbu` of such a record are one rank's, against one GPU's peaks, and the floor adds
    the rank's all-reduce bytes over the link; `latency_ms`, `tokens_per_s` and the memory fields
    are rank 0's (`memory_predicted_bytes`: one rank's prediction)."""
    world: int = required(lo=2)                # ranks of the point (each on its own GPU; CPU: processes)
    timing_rank: int = checked(0, lo=0)        # the rank whose samples are the record's latency_ms
    per_rank: Optional[Dict[str, float]] = None  # one rank's analytic params, weight_bytes, kv_cache_bytes,
    #                                              flops and bytes_moved (phase totals, like the record's)
    all_reduce_payload_bytes: Optional[int] = checked(lo=0)  # bytes all-reduced in the phase (2 per layer per forward)
    link_bytes: Optional[int] = checked(lo=0)  # bytes one rank sends over its link in the phase (ring: 2(N-1)/N)
    link_bandwidth_bytes_per_s: Optional[float] = checked(positive=True)  # the link the floor assumes
    link_bandwidth_source: Optional[str] = None  # the suite's parallel.link_bandwidth, or a datasheet's
    link_ms: Optional[float] = checked(lo=0)   # the link's part of floor_ms (one sample), when there is a floor
    ranks: Tuple[RankMeasure, ...] = ()        # every rank's own measurement (empty when the point failed)

    def validate(self, w: Where, name: str) -> None:
        for k, x in (self.per_rank or {}).items():
            if k not in _PER_RANK:
                w.fail(f"{name}.per_rank.{k}", f"unknown figure; expected one of {', '.join(_PER_RANK)}")
            number(w, f"{name}.per_rank.{k}", x, lo=0)
        if self.ranks and sorted(r.rank for r in self.ranks) != list(range(self.world)):
            w.fail(f"{name}.ranks", f"must hold ranks 0..{self.world - 1} once each")
        if self.timing_rank >= self.world:
            w.fail(f"{name}.timing_rank", f"must be below world {self.world}, got {self.timing_rank}")

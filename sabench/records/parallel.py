"""The `tensor_parallel` block of a phase record (a point run on N tensor-parallel ranks).

Split from types.py to keep each module short; types.PhaseRecord holds it and schema_doc
documents it from the field comments below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from sabench.records.checks import Where, mapping, number, numbers, show, text


@dataclass(frozen=True)
class RankMeasure:
    """What one rank of a tensor-parallel point measured on itself (its own process and device)."""
    rank: int
    kv_cache_bytes: Optional[int] = None       # bytes of the cache this rank preallocated (its KV heads)
    latency_median_ms: Optional[float] = None  # this rank's median sample (the record's latency is rank 0's)
    torch_threads: Optional[int] = None        # CPU: the ranks share the cores, each gets 1/N of the threads
    memory_source: Optional[str] = None        # as the record's memory_source, for this rank
    memory_bytes: Optional[Dict[str, Any]] = None  # this rank's memory readings (peaks) over the phase

    @classmethod
    def parse(cls, w: Where, name: str, v) -> "RankMeasure":
        m = mapping(w, name, v, optional=False)
        return cls(number(w, f"{name}.rank", m.get("rank"), integer=True, lo=0, optional=False),
                   number(w, f"{name}.kv_cache_bytes", m.get("kv_cache_bytes"), integer=True, lo=0),
                   number(w, f"{name}.latency_median_ms", m.get("latency_median_ms"), lo=0),
                   number(w, f"{name}.torch_threads", m.get("torch_threads"), integer=True, lo=1),
                   text(w, f"{name}.memory_source", m.get("memory_source")),
                   mapping(w, f"{name}.memory_bytes", m.get("memory_bytes")))

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


_PER_RANK = ("params", "weight_bytes", "kv_cache_bytes", "flops", "bytes_moved")


@dataclass(frozen=True)
class TensorParallel:
    """A tensor-parallel point (suite `parallel.tensor` > 1). The record's `params`,
    `kv_cache_bytes`, `flops` and `bytes_moved` stay the model's, as a TP-1 record of the same
    point has them; this block holds one rank's share and what the ranks measured. `floor_ms`,
    `mfu` and `mbu` of such a record are one rank's, against one GPU's peaks, and the floor adds
    the rank's all-reduce bytes over the link; `latency_ms`, `tokens_per_s` and the memory fields
    are rank 0's (`memory_predicted_bytes`: one rank's prediction)."""
    world: int                                 # ranks of the point (each on its own GPU; CPU: processes)
    timing_rank: int = 0                       # the rank whose samples are the record's latency_ms
    per_rank: Optional[Dict[str, float]] = None  # one rank's analytic params, weight_bytes, kv_cache_bytes,
    #                                              flops and bytes_moved (phase totals, like the record's)
    all_reduce_payload_bytes: Optional[int] = None  # bytes all-reduced in the phase (2 per layer per forward)
    link_bytes: Optional[int] = None           # bytes one rank sends over its link in the phase (ring: 2(N-1)/N)
    link_bandwidth_bytes_per_s: Optional[float] = None  # the link the floor assumes
    link_bandwidth_source: Optional[str] = None  # the suite's parallel.link_bandwidth, or a datasheet's
    link_ms: Optional[float] = None            # the link's part of floor_ms (one sample), when there is a floor
    ranks: Tuple[RankMeasure, ...] = ()        # every rank's own measurement (empty when the point failed)

    @classmethod
    def parse(cls, w: Where, v) -> Optional["TensorParallel"]:
        m = mapping(w, "tensor_parallel", v)
        if m is None:
            return None
        world = number(w, "tensor_parallel.world", m.get("world"), integer=True, lo=2, optional=False)
        per_rank = numbers(w, "tensor_parallel.per_rank", m.get("per_rank"))
        for k in per_rank or {}:
            if k not in _PER_RANK:
                w.fail(f"tensor_parallel.per_rank.{k}", f"unknown figure; expected one of {', '.join(_PER_RANK)}")
            number(w, f"tensor_parallel.per_rank.{k}", per_rank[k], lo=0)
        ranks = m.get("ranks") or []
        if not isinstance(ranks, list):
            w.fail("tensor_parallel.ranks", f"must be a list, got {show(ranks)}")
        parsed = tuple(RankMeasure.parse(w, f"tensor_parallel.ranks[{i}]", r) for i, r in enumerate(ranks))
        if parsed and sorted(r.rank for r in parsed) != list(range(world)):
            w.fail("tensor_parallel.ranks", f"must hold ranks 0..{world - 1} once each")
        timing = number(w, "tensor_parallel.timing_rank", m.get("timing_rank", 0), integer=True, lo=0)
        if timing >= world:
            w.fail("tensor_parallel.timing_rank", f"must be below world {world}, got {timing}")
        return cls(world, timing, per_rank,
                   number(w, "tensor_parallel.all_reduce_payload_bytes", m.get("all_reduce_payload_bytes"),
                          integer=True, lo=0),
                   number(w, "tensor_parallel.link_bytes", m.get("link_bytes"), integer=True, lo=0),
                   number(w, "tensor_parallel.link_bandwidth_bytes_per_s", m.get("link_bandwidth_bytes_per_s"),
                          positive=True),
                   text(w, "tensor_parallel.link_bandwidth_source", m.get("link_bandwidth_source")),
                   number(w, "tensor_parallel.link_ms", m.get("link_ms"), lo=0), parsed)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v is not None and k != "ranks"}
        out["ranks"] = [r.to_dict() for r in self.ranks]
        return out

"""One point's job, typed: what a point process needs to measure it, parsed once by the sweep.

The sweep builds a PointJob per point from the validated suite, with the variant already
parsed into a SharingPlan, and hands it to the point process (pickled by the forkserver):
the child parses nothing. `from_dict` is the edge for a job written as JSON
(`python -m sabench.harness.point JOB.json RESULT.json`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from sabench.plan import SharingPlan, plan_for
from sabench.presets import ModelConfig
from sabench.records import PointSpec


@dataclass(frozen=True)
class PointJob:
    point: PointSpec  # the point measured (its variant is the plan's)
    cfg: ModelConfig
    plan: SharingPlan
    device: str  # resolved: "cpu", "cuda" or "cuda:N"
    dtype: str  # canonical name
    decode_tokens: int
    warmup: int
    repeats: int
    prefill_chunk: Optional[int] = None
    execution: str = "eager"  # resolved: "eager" or "compiled"
    peaks: dict = field(default_factory=dict)  # peak_bandwidth_bytes_per_s, peak_flops_per_s
    threads: Optional[int] = None
    fault_oom: Optional[str] = None  # faults.FAULT_ENV's keys, read once by the sweep
    fault_kill: Optional[str] = None  # faults.KILL_ENV's keys (test seam: the point kills itself)
    fault_slowdown: Optional[str] = None  # faults.SLOW_ENV's value (a test seam), read once by the sweep
    inductor_cache_dir: Optional[str] = None
    count_cache_dir: Optional[str] = None
    seed: int = 0
    weights: str = "random"  # "random" or "checkpoint" (suite key `weights`)
    model_source: Optional[str] = None  # the model directory checkpoint weights come from
    quality: Optional[dict] = None  # perplexity windows to score after timing (sabench.loading)
    t_spawn: Optional[float] = None  # time.time() when the launcher started the process
    gpu: Optional[str] = None  # CUDA_VISIBLE_DEVICES of the point process (`run --devices`); None: inherited
    tensor_parallel: int = 1  # ranks per point (suite parallel.tensor); > 1: measured on N ranks (harness.tp_point)
    link_bandwidth: Optional[float] = None  # bytes/s of the ranks' link (parallel.link_bandwidth)

    def __post_init__(self):
        if self.point.variant != self.plan.variant:
            raise ValueError(f"a job of point {self.point.label} with the plan of {self.plan.variant}")

    # the point's figures, as the point process reads them
    @property
    def variant(self) -> str:
        return self.point.variant

    @property
    def batch_size(self) -> int:
        return self.point.batch_size

    @property
    def seq_len(self) -> int:
        return self.point.seq_len

    @property
    def key(self) -> str:
        return self.point.key

    @property
    def label(self) -> str:
        return self.point.label

    def replace(self, batch_size=None, seq_len=None, **changes) -> "PointJob":
        """A copy with `changes`; batch_size and seq_len change its point."""
        if batch_size is not None or seq_len is not None:
            changes["point"] = dataclasses.replace(changes.get("point", self.point),
                                                   **{k: v for k, v in (("batch_size", batch_size),
                                                                        ("seq_len", seq_len)) if v is not None})
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict) -> "PointJob":
        """A job from its JSON form: the runner's spec keys (model_config, variant, batch_size, ...)."""
        cfg = ModelConfig(**d["model_config"])
        plan = plan_for(d["variant"], cfg)
        names = {f.name for f in dataclasses.fields(cls)} - {"cfg", "plan", "point"}
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        return cls(point=PointSpec(plan.variant, d["batch_size"], d["seq_len"]), cfg=cfg, plan=plan, **kw)

"""The GPUs behind a run's numbers, for comparing runs of different topologies.

A point's recorded tokens/s is the throughput of the whole point: for a tensor-parallel
suite (`parallel: {tensor: N}`) that is N GPUs working on it together. Per GPU it is

    tokens/s per GPU = tokens/s total / (tensor degree x devices)

where `devices` is the number of such groups one measurement spans (a suite's
`parallel.data`; 1 for every run sabench makes today: even `run --devices`, which spreads the
points over several GPUs, measures each point on one GPU).
So 1xH100 at 1000 tokens/s against 8xH100 TP-8 at 4000 tokens/s is 4x the total but
half the throughput per GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from sabench.records import RunRecord
from sabench.report.results import fmt_rate, is_ok, status_text


@dataclass(frozen=True)
class Topology:
    tensor: int = 1             # tensor-parallel ranks per point
    devices: int = 1            # groups of `tensor` GPUs one measurement spans
    device: Optional[str] = None  # the device's name ("H100 80GB HBM3", "cpu")

    @property
    def gpus(self) -> int:
        return self.tensor * self.devices

    @property
    def label(self) -> str:
        """'1×H100 80GB HBM3', '8×H100 80GB HBM3 TP-8'."""
        return f"{self.gpus}×{self.device or 'device unknown'}" + (f" TP-{self.tensor}" if self.tensor > 1 else "")


def _positive_int(v) -> int:
    return v if type(v) is int and v >= 1 else 1


def topology(run: RunRecord) -> Topology:
    """A run's topology from its suite (parallel.tensor, parallel.data) and env (device name)."""
    par = run.suite.get("parallel") if isinstance(run.suite.get("parallel"), dict) else {}
    name = run.env.get("device_name") or run.env.get("device")
    return Topology(_positive_int(par.get("tensor")), _positive_int(par.get("data")),
                    str(name).removeprefix("NVIDIA ").strip() if name else None)


def per_gpu(tokens_per_s: Optional[float], topo: Topology) -> Optional[float]:
    """Total tokens/s over the GPUs that produced it; None stays None."""
    return None if tokens_per_s is None else tokens_per_s / topo.gpus


def differ(results: Sequence[RunRecord]) -> bool:
    """Do the runs use different numbers of GPUs per point?"""
    return len({(t.tensor, t.devices) for t in map(topology, results)}) > 1


def labels(results: Sequence[RunRecord]) -> List[Optional[str]]:
    """Each run's topology label when the topologies differ (compare names runs by it), else Nones."""
    return [topology(r).label for r in results] if differ(results) else [None] * len(results)


def env_rows(results: Sequence[RunRecord]) -> List[List[str]]:
    """The 'topology' row of compare's environment differences, when the runs' topologies differ."""
    if not differ(results):
        return []
    return [["topology (GPUs per point)"] + [topology(r).label for r in results]]


def _per_gpu_value(phase: str):
    def value(run, pt):  # run: compare.Run (results, index)
        r = run.index.get(pt + (phase,))
        if not is_ok(r) or r.tokens_per_s is None:
            return None, status_text(r, 30)
        return per_gpu(r.tokens_per_s, topology(run.results)), "—"
    return value


def per_gpu_tables(runs) -> list:
    """compare's per-GPU throughput tables, (phase, title, value, fmt, interval=None), when any run spans
    several GPUs."""
    if not any(topology(r.results).gpus > 1 for r in runs):
        return []
    return [(phase, f"{phase.capitalize()} throughput per GPU (tokens/s: total / GPUs per point)",
             _per_gpu_value(phase), fmt_rate, None) for phase in ("prefill", "decode")]


def report_note(run: RunRecord) -> List[str]:
    """What a tensor-parallel run's numbers are (report.md, below the setup); [] for one device."""
    topo = topology(run)
    if topo.tensor == 1:
        return []
    n = topo.tensor
    return [f"_Tensor-parallel run: every point ran on {n} ranks ({topo.label}). Latency, tokens/s and "
            f"memory are rank 0's (every rank passed a barrier before each timed call or sequence); params, "
            f"KV cache bytes and FLOPs are the model's, as a one-device run has them; the floor, MFU and MBU "
            f"are one rank's against one GPU's peaks, the floor with the rank's all-reduce bytes over the "
            f"link. Each record's `tensor_parallel` holds the per-rank figures and every rank's "
            f"measurement._", ""]

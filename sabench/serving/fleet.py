"""Fleet-scale serving predictions: the scheduler simulated where no machine here can go.

A prediction, never a measurement, and it says so with its inputs: step costs are roofline floors
(accounting.py closed forms: a decode step = max(FLOPs / peak, bytes / bandwidth) per rank at the
busy slots' mean context, plus its all-reduce bytes over the link; a prefill likewise over its
prompt) on a GPU's datasheet peaks (measure/calibrate.DATASHEET), slots are the memory model's
largest batch at the given memory per GPU (weights, cache, activations, context), and the
scheduler is the one `sabench serve` measures (simulate.CostEngine on a virtual clock). Floors
are what a step cannot beat: real steps are slower, so every rate here is an upper bound and
every GPU count a lower bound. The sustained rate of one replica (one GPU, or `tp` GPUs) is the
highest Poisson rate at which the share of requests meeting the targets stays at or above `share`
over a run several request lifetimes long. The scheduler prefills one request at a time (as the
measured runtime does), so at long prompts prefill caps the rate whatever the slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sabench import accounting, memory_model
from sabench.plan import as_plan
from sabench.presets import resolve_config
from sabench.serving.metrics import Targets, summarize
from sabench.serving.simulate import simulate
from sabench.serving.stream import Lengths, Poisson
from sabench.tp_shapes import rank_config


def _bilinear(fn):
    """fn(slots, context per slot) = a + b*slots + c*slots*context, exactly (the closed forms are), as
    a fast function of (slots, summed context); the coefficients from three evaluations."""
    f11, f12, f21 = fn(1, 1), fn(1, 2), fn(2, 1)
    c = f12 - f11
    b = f21 - f11 - c
    a = f11 - b - c
    return lambda slots, context: a + b * slots + c * context


class RooflineCosts:
    """Step costs (seconds) of one tensor-parallel replica from the closed forms; duck-types StepCosts."""

    def __init__(self, cfg, plan, dtype: str, peaks: dict, tp: int = 1, link_bytes_per_s: float = None):
        self.cfg, self.plan, self.dtype, self.peaks, self.tp = resolve_config(cfg), plan, dtype, peaks, tp
        self.rank = rank_config(self.cfg, tp)
        self.link = link_bytes_per_s or accounting.NVLINK_DATASHEET["bytes_per_s"]
        # a step writes the new token's position too: context + 1 positions read per sequence
        self._flops = _bilinear(lambda b, c: accounting.decode_flops(self.rank, plan, b, c).total)
        self._bytes = _bilinear(lambda b, c: accounting.decode_step_bytes(self.rank, plan, b, c + 1, dtype))
        self._link = _bilinear(lambda b, c: accounting.all_reduce_bytes(self.rank, b, 1, dtype, tp)["per_rank"])
        self._prefill: dict = {}

    def _floor(self, flops: float, nbytes: float, link: float) -> float:
        return accounting.floor_s(flops, nbytes, link, self.peaks, self.link)["floor_s"]

    def prefill(self, tokens: int) -> float:
        if tokens not in self._prefill:
            f = accounting.prefill_flops(self.rank, self.plan, 1, tokens).total
            b = accounting.prefill_bytes(self.rank, self.plan, 1, tokens, self.dtype)
            link = accounting.all_reduce_bytes(self.rank, 1, tokens, self.dtype, self.tp)["per_rank"]
            self._prefill[tokens] = self._floor(f, b, link)
        return self._prefill[tokens]

    def decode(self, slots: int, context: int) -> float:
        """`context`: the tokens the busy slots hold, summed."""
        return self._floor(self._flops(slots, context), self._bytes(slots, context), self._link(slots, context))


@dataclass(frozen=True)
class FleetPrediction:
    variant: str
    slots: int  # per replica, the memory model's largest batch
    sustained_rps: float  # per replica (0: not even the lowest rate tried meets the share; inf: the
    # targets never bind, every request at once meets them)
    gpus: int  # for the demand: replicas x tp (0 when no rate is sustained)


def sustained_rate(costs, slots: int, prompt: int, output: int, targets: Targets, share: float,
                   requests: int = 300, seed: int = 0, steps: int = 12, max_requests: int = 20_000) -> float:
    """The highest rate (bisected on a log scale) whose simulated goodput share meets `share`.

    A run must outlast the requests it holds, or a burst into free slots passes for a sustainable
    rate: each simulated run spans at least 5 lifetimes of a request at full slots (max_requests caps it)."""
    life = costs.prefill(prompt) + output * costs.decode(slots, slots * (prompt + output // 2))

    def ok(rate: float) -> bool:
        n = min(max_requests, max(requests, math.ceil(rate * 5 * life)))
        recs = simulate(costs, slots, Poisson(rate, n, Lengths(prompt, prompt), Lengths(output, output), seed))
        return summarize(recs, targets).goodput_share >= share

    lo = slots / life / 64
    if not ok(lo):
        return 0.0
    hi = lo * 2
    while ok(hi):
        if hi > lo * 2 ** 40:  # every request arriving at once still meets the targets: they never bind
            return math.inf
        lo, hi = hi, hi * 2
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def predict(model, variants, dtype: str, memory: int, peaks: dict, prompt: int, output: int, targets: Targets,
            demand_rps: float, share: float = 0.9, tp: int = 1, link_bytes_per_s: float = None) -> list:
    cfg = resolve_config(model)
    out = []
    for v in variants:
        plan = as_plan(v, cfg)
        slots, _ = memory_model.max_batch(rank_config(cfg, tp), plan, dtype, prompt, memory, decode_tokens=output)
        if slots < 1:
            out.append(FleetPrediction(plan.variant, 0, 0.0, 0))
            continue
        costs = RooflineCosts(cfg, plan, dtype, peaks, tp, link_bytes_per_s)
        rate = sustained_rate(costs, slots, prompt, output, targets, share)
        gpus = tp if math.isinf(rate) else math.ceil(demand_rps / rate) * tp if rate > 0 else 0
        out.append(FleetPrediction(plan.variant, slots, rate, gpus))
    return out

"""The scheduler on a virtual clock, driven by a step-cost model instead of a model.

`CostEngine` stands where the model runtime stands in `scheduler.serve`: admitting a request
advances the clock by the prefill cost of its prompt, a decode step by the cost of a step over
the busy slots and the context they hold. The costs are a linear model (`StepCosts`): the
scheduler's tests give them by hand; fitted on a run's measured steps, they predict other loads.
"""
from __future__ import annotations

from dataclasses import dataclass

from sabench.serving.scheduler import VirtualClock
from sabench.serving.stream import Request


@dataclass(frozen=True)
class StepCosts:
    """Seconds: prefill = prefill_s + prefill_per_token_s * prompt tokens; decode step =
    decode_s + decode_per_slot_s * busy slots + decode_per_context_s * tokens they hold."""

    prefill_s: float
    prefill_per_token_s: float
    decode_s: float
    decode_per_slot_s: float = 0.0
    decode_per_context_s: float = 0.0

    def prefill(self, tokens: int) -> float:
        return self.prefill_s + self.prefill_per_token_s * tokens

    def decode(self, slots: int, context: int) -> float:
        return self.decode_s + self.decode_per_slot_s * slots + self.decode_per_context_s * context


class CostEngine:
    def __init__(self, slots: int, costs: StepCosts, clock: VirtualClock):
        self.slots, self.costs, self.clock = slots, costs, clock
        self._free = list(range(slots))
        self._context: dict[int, int] = {}

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def admit(self, req: Request) -> int:
        slot = min(self._free)
        self._free.remove(slot)
        self.clock.advance(self.costs.prefill(req.prompt_len))
        self._context[slot] = req.prompt_len
        return slot

    def step(self, busy: dict) -> None:
        self.clock.advance(self.costs.decode(len(busy), sum(self._context[s] for s in busy)))
        for s in busy:
            self._context[s] += 1

    def release(self, slot: int) -> None:
        del self._context[slot]
        self._free.append(slot)


# ---------------------------------------------------------------- fitted on a measured run
def step_samples(requests) -> tuple[list, list]:
    """A measured run's timeline rebuilt from its request records: (prefills [(prompt tokens, s)],
    decode steps [(busy slots, context tokens they held, s)]).

    The loop runs one thing at a time, so a decode step began when the event before it ended (a
    step or a prefill: the loop never idles while a request is decoding) and its cost includes the
    loop's own work, as the simulated step must. A prefill's cost is first token - admitted."""
    prefills = [(r.prompt_len, r.token_s[0] - r.admitted_s) for r in requests]
    steps: dict = {}
    for r in requests:
        for k, t in enumerate(r.token_s[1:], 1):
            steps.setdefault(t, []).append(r.prompt_len + k - 1)
    ends = sorted([(r.token_s[0], None) for r in requests] + [(t, c) for t, c in steps.items()],
                  key=lambda e: e[0])
    decodes = [(len(ctx), sum(ctx), end - prev) for (prev, _), (end, ctx) in zip(ends, ends[1:]) if ctx is not None]
    return prefills, decodes


def fit_costs(runs) -> StepCosts:
    """Non-negative least squares of the linear StepCosts on the steps of `runs` (lists of records)."""
    import numpy as np
    from scipy.optimize import nnls

    pre, dec = [], []
    for requests in runs:
        p, d = step_samples(requests)
        pre += p
        dec += d
    if len(pre) < 2 or len(dec) < 3:
        raise ValueError(f"too few measured steps to fit ({len(pre)} prefills, {len(dec)} decode steps)")
    a = np.array([[1.0, t] for t, _ in pre])
    (p0, p1), _ = nnls(a, np.array([s for _, s in pre]))
    b = np.array([[1.0, n, c] for n, c, _ in dec])
    (d0, d1, d2), _ = nnls(b, np.array([s for *_, s in dec]))
    return StepCosts(float(p0), float(p1), float(d0), float(d1), float(d2))


def simulate(costs: StepCosts, slots: int, workload) -> list:
    """The scheduler's records for `workload` on `slots` slots costing `costs` (virtual time)."""
    from sabench.serving.scheduler import serve

    clock = VirtualClock()
    return serve(CostEngine(slots, costs, clock), workload, clock)


class Recorded:
    """A measured Poisson run's own requests (arrival times and lengths) replayed as a workload."""

    def __init__(self, requests):
        from sabench.serving.stream import Request

        self.requests = [Request(r.id, r.arrival_s, r.prompt_len, r.output_len) for r in requests]

    def initial(self):
        return list(self.requests)

    def after(self, finished, t):
        return None


HELD_OUT_FIGURES = ("ttft_p50_ms", "tpot_p50_ms", "output_tokens_per_s")


def _figures(summary) -> dict:
    return {"ttft_p50_ms": summary.ms["ttft"][50], "tpot_p50_ms": summary.ms["tpot"][50],
            "output_tokens_per_s": summary.output_tokens_per_s}


def held_out(results) -> list:
    """For each variant and Poisson rate: costs fitted on the variant's runs at the OTHER rates,
    the held-out rate's rounds simulated on their own request streams and slots. Rows of
    (variant, rate, measured, predicted): figure -> median over rounds. Closed loops are left out
    (their arrivals follow the measured finishes)."""
    from sabench.serving.metrics import summarize
    from sabench.stats import median

    rows = []
    runs = [r for r in results.runs if r.rate is not None]
    for variant in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == variant]
        for rate in sorted({r.rate for r in mine}):
            train = [r.requests for r in mine if r.rate != rate]
            test = [r for r in mine if r.rate == rate]
            if not train:
                continue
            costs = fit_costs(train)
            meas = [_figures(summarize(r.requests)) for r in test]
            pred = [_figures(summarize(simulate(costs, r.slots, Recorded(r.requests)))) for r in test]
            rows.append((variant, rate, {f: median(m[f] for m in meas) for f in HELD_OUT_FIGURES},
                         {f: median(p[f] for p in pred) for f in HELD_OUT_FIGURES}))
    return rows

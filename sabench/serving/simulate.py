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

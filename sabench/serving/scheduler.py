"""The serving event loop: first-come-first-served admission into free slots, prefill first.

Policy, stated once: whenever a request has arrived and a slot is free, the loop prefills it
(whole prompt, one request at a time) before the next decode step; otherwise it runs one decode
step over every busy slot; when nothing is running or admissible it waits for the next arrival.
A prefill therefore stalls the running requests' next token (their inter-token gap includes it),
as in vLLM's scheduler without chunked prefill.

One loop serves two engines: the model runtime timed by the wall clock (`WallClock`, monotonic,
CUDA synchronised before every reading), and a cost model on a virtual clock (`VirtualClock`:
the simulator and the scheduler's tests), so the policy measured and the policy simulated are the
same code.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Callable, Optional, Protocol

import torch

from sabench.records.serving import RequestRecord
from sabench.serving.stream import Request, Workload
from sabench.serving.runtime import SlotRuntime


class Clock(Protocol):
    def now(self) -> float: ...

    def wait_until(self, t: float) -> None: ...


class WallClock:
    """Seconds since construction on time.perf_counter (monotonic); `sync` (CUDA) runs before each read."""

    def __init__(self, sync: Optional[Callable[[], None]] = None):
        self.sync = sync
        self.t0 = time.perf_counter()

    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        dt = t - self.now()
        if dt > 0:
            time.sleep(dt)


class VirtualClock:
    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)


class Engine(Protocol):
    free_slots: int

    def admit(self, req: Request) -> int: ...  # prefill into a free slot; the slot

    def step(self, busy: dict) -> None: ...  # one decode step; busy: {slot: Request} decoding

    def release(self, slot: int) -> None: ...


class ModelEngine:
    """The model runtime behind the Engine interface. Prompts are random token ids seeded per request
    (id and `seed`): what a request says does not change its cost, its lengths do. Keeps every
    request's output tokens (`outputs`) for the parity checks."""

    def __init__(self, runtime: SlotRuntime, seed: int = 0):
        self.rt, self.seed = runtime, seed
        self.outputs: dict[int, list[int]] = {}
        self._in_slot: dict[int, int] = {}

    @property
    def free_slots(self) -> int:
        return self.rt.free_slots

    def prompt(self, req: Request) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + req.id)
        return torch.randint(0, self.rt.model.cfg.vocab_size, (req.prompt_len,), generator=gen)

    def admit(self, req: Request) -> int:
        slot, first = self.rt.admit(self.prompt(req), req.output_len)
        self.outputs[req.id] = [first]
        self._in_slot[slot] = req.id
        return slot

    def step(self, busy: dict) -> None:
        tokens = self.rt.step()
        for slot in busy:
            self.outputs[self._in_slot[slot]].append(tokens[slot])

    def release(self, slot: int) -> None:
        self.rt.release(slot)
        del self._in_slot[slot]


def serve(engine: Engine, workload: Workload, clock: Clock) -> list[RequestRecord]:
    """Run `workload` through `engine` to the last request; one record per request, by id."""
    arrivals = [(r.arrival_s, r.id, r) for r in workload.initial()]
    heapq.heapify(arrivals)
    queue: deque = deque()
    busy: dict[int, Request] = {}
    admitted: dict[int, float] = {}
    times: dict[int, list] = {}
    done: list[RequestRecord] = []

    def finish(slot: int, req: Request, t: float) -> None:
        engine.release(slot)
        done.append(RequestRecord(req.id, req.prompt_len, req.output_len, slot, req.arrival_s,
                                  admitted.pop(req.id), tuple(times.pop(req.id))))
        nxt = workload.after(req, t)
        if nxt is not None:
            heapq.heappush(arrivals, (nxt.arrival_s, nxt.id, nxt))

    while arrivals or queue or busy:
        now = clock.now()
        while arrivals and arrivals[0][0] <= now:
            queue.append(heapq.heappop(arrivals)[2])
        if queue and engine.free_slots:
            req = queue.popleft()
            admitted[req.id] = clock.now()
            slot = engine.admit(req)
            t = clock.now()
            times[req.id] = [t]
            if req.output_len == 1:
                finish(slot, req, t)
            else:
                busy[slot] = req
        elif busy:
            engine.step(busy)
            t = clock.now()
            for slot, req in list(busy.items()):
                times[req.id].append(t)
                if len(times[req.id]) == req.output_len:
                    del busy[slot]
                    finish(slot, req, t)
        elif arrivals:
            clock.wait_until(arrivals[0][0])
        else:
            raise RuntimeError(f"{len(queue)} requests queued with no slot free and none running")
    return sorted(done, key=lambda r: r.id)

"""Request streams: when requests arrive and how long they are.

Open loop: Poisson arrivals at `rate` requests/s (exponential gaps, seeded), the stream fixed
before the run, as `vllm bench serve --request-rate` draws it. Closed loop: C clients, each
sending its next request the moment its previous one finishes (no think time), so the offered
load follows the server. Lengths are fixed or drawn uniformly from an inclusive range, per request.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Request:
    id: int
    arrival_s: float  # since the run's start
    prompt_len: int
    output_len: int


@dataclass(frozen=True)
class Lengths:
    """Token counts drawn uniformly from lo..hi inclusive (fixed when lo == hi)."""

    lo: int
    hi: int

    def __post_init__(self):
        if not 1 <= self.lo <= self.hi:
            raise ValueError(f"lengths need 1 <= lo <= hi, got {self.lo}..{self.hi}")

    def draw(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


class Workload:
    """What the scheduler asks of a stream: the requests known at the start, and the request (if
    any) a finished one releases."""

    def initial(self) -> list[Request]:
        raise NotImplementedError

    def after(self, finished: Request, t: float) -> Optional[Request]:
        return None


class Poisson(Workload):
    def __init__(self, rate: float, count: int, prompt: Lengths, output: Lengths, seed: int = 0):
        if not rate > 0 or count < 1:
            raise ValueError(f"a Poisson stream needs rate > 0 and count >= 1, got {rate} and {count}")
        rng, t, self.requests = random.Random(seed), 0.0, []
        for i in range(count):
            t += rng.expovariate(rate)
            self.requests.append(Request(i, t, prompt.draw(rng), output.draw(rng)))

    def initial(self) -> list[Request]:
        return list(self.requests)


class ClosedLoop(Workload):
    def __init__(self, clients: int, count: int, prompt: Lengths, output: Lengths, seed: int = 0):
        if clients < 1 or count < 1:
            raise ValueError(f"a closed loop needs clients >= 1 and count >= 1, got {clients} and {count}")
        self.clients, self.count, self.prompt, self.output = clients, count, prompt, output
        self.rng, self.sent = random.Random(seed), 0

    def _next(self, t: float) -> Optional[Request]:
        if self.sent >= self.count:
            return None
        self.sent += 1
        return Request(self.sent - 1, t, self.prompt.draw(self.rng), self.output.draw(self.rng))

    def initial(self) -> list[Request]:
        return [r for r in (self._next(0.0) for _ in range(self.clients)) if r is not None]

    def after(self, finished: Request, t: float) -> Optional[Request]:
        return self._next(t)

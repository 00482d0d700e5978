"""serving.json, as types: what `sabench serve` writes and its report reads.

    ServingResults   schema, created, env, suite, runs
      ServingRun     one variant under one load in one round: its slots, its cache, its requests
        RequestRecord  one request's lengths and raw times (arrival, admission, every output token)

Only raw figures are stored; queue wait, TTFT, ITL, TPOT and end-to-end are derived from them
(sabench/serving/metrics.py), so a reader recomputes every figure from the same numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from sabench.records.checks import Where, mapping, number, text
from sabench.records.files import read_json, run_file

SERVING_SCHEMA = "sabench-serving/1"


@dataclass(frozen=True)
class RequestRecord:
    """One request: its lengths and its raw times, in seconds since the run's start (a monotonic
    clock, read after a CUDA synchronise on a GPU)."""
    id: int
    prompt_len: int
    output_len: int
    slot: int                # the cache slot it was prefilled into and decoded in
    arrival_s: float         # when it arrived (Poisson: drawn before the run; closed loop: its client's last finish)
    admitted_s: float        # when its prefill started (a slot was free and the loop took it)
    token_s: Tuple[float, ...] = ()  # when each output token was available, in order (output_len of them)

    @property
    def queue_wait_s(self) -> float:
        return self.admitted_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.token_s[0] - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.token_s[-1] - self.arrival_s

    @property
    def itl_s(self) -> list:
        return [b - a for a, b in zip(self.token_s, self.token_s[1:])]

    @property
    def tpot_s(self) -> float:
        """(end-to-end - TTFT) / (tokens - 1); 0 for a one-token output (no gap to average)."""
        n = len(self.token_s)
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else 0.0

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt_len": self.prompt_len, "output_len": self.output_len, "slot": self.slot,
                "arrival_s": self.arrival_s, "admitted_s": self.admitted_s, "token_s": list(self.token_s)}

    @classmethod
    def parse(cls, w: Where, name: str, v) -> "RequestRecord":
        m = mapping(w, name, v, optional=False)

        def num(key, integer=False, lo=0):
            return number(w, f"{name}.{key}", m.get(key), integer=integer, lo=lo, optional=False)

        tokens = m.get("token_s")
        if not isinstance(tokens, list) or not tokens:
            w.fail(f"{name}.token_s", "must be a non-empty list of times")
        times = tuple(number(w, f"{name}.token_s[{i}]", t, lo=0, optional=False) for i, t in enumerate(tokens))
        r = cls(num("id", True), num("prompt_len", True, 1), num("output_len", True, 1), num("slot", True),
                num("arrival_s"), num("admitted_s"), times)
        if len(times) != r.output_len:
            w.fail(f"{name}.token_s", f"holds {len(times)} times for {r.output_len} output tokens")
        if not r.arrival_s <= r.admitted_s <= times[0] or list(times) != sorted(times):
            w.fail(name, "times out of order (arrival <= admitted <= first token <= ... <= last token)")
        return r


@dataclass(frozen=True)
class ServingRun:
    """One variant under one load in one round of `sabench serve`."""
    variant: str
    round: int
    slots: int                    # requests decoded at once: the variant's slots at the suite's cache budget
    cache_bytes: int              # the KV cache allocated for those slots (the memory model's figure, checked)
    rate: Optional[float] = None  # Poisson arrivals per second; None for a closed loop
    clients: Optional[int] = None  # closed loop: clients, each sending when its last request finished
    requests: Tuple[RequestRecord, ...] = ()

    @property
    def load(self) -> str:
        return f"{self.rate:g} req/s" if self.rate is not None else f"{self.clients} clients"

    def to_dict(self) -> dict:
        return {"variant": self.variant, "round": self.round, "slots": self.slots, "cache_bytes": self.cache_bytes,
                "rate": self.rate, "clients": self.clients, "requests": [r.to_dict() for r in self.requests]}

    @classmethod
    def parse(cls, file: str, i: int, v) -> "ServingRun":
        w = Where(file, f"run {i}")
        m = mapping(w, "", v, optional=False)
        rate = number(w, "rate", m.get("rate"), positive=True)
        clients = number(w, "clients", m.get("clients"), integer=True, lo=1)
        if (rate is None) == (clients is None):
            w.fail("rate", "or clients must be given, not both")
        reqs = m.get("requests")
        if not isinstance(reqs, list) or not reqs:
            w.fail("requests", "must be a non-empty list")
        return cls(text(w, "variant", m.get("variant"), optional=False),
                   number(w, "round", m.get("round"), integer=True, lo=0, optional=False),
                   number(w, "slots", m.get("slots"), integer=True, lo=1, optional=False),
                   number(w, "cache_bytes", m.get("cache_bytes"), integer=True, lo=0, optional=False),
                   rate, clients, tuple(RequestRecord.parse(w, f"requests[{j}]", r) for j, r in enumerate(reqs)))


@dataclass(frozen=True)
class ServingResults:
    """A `sabench serve` run: the suite as run, where it ran, and every (variant, load, round) run."""
    schema: str
    created: str                  # ISO 8601 UTC
    env: Dict[str, Any]           # device, torch version, threads
    suite: Dict[str, Any]         # the suite as run (Suite.to_dict, with its serving block)
    runs: Tuple[ServingRun, ...] = ()
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": self.schema, "created": self.created, "env": self.env, "suite": self.suite,
                "runs": [r.to_dict() for r in self.runs], **self.extra}

    @classmethod
    def from_dict(cls, data, file: str = "serving.json") -> "ServingResults":
        w = Where(file, "file")
        m = mapping(w, "", data, optional=False)
        schema = text(w, "schema", m.get("schema"), optional=False)
        if schema != SERVING_SCHEMA:
            w.fail("schema", f"is {schema!r}; this sabench reads {SERVING_SCHEMA!r}")
        runs = m.get("runs")
        if not isinstance(runs, list):
            w.fail("runs", "must be a list")
        known = ("schema", "created", "env", "suite", "runs")
        return cls(schema, text(w, "created", m.get("created"), optional=False),
                   mapping(w, "env", m.get("env")) or {}, mapping(w, "suite", m.get("suite")) or {},
                   tuple(ServingRun.parse(file, i, r) for i, r in enumerate(runs)),
                   {k: v for k, v in m.items() if k not in known})


def serving_path(path_or_dir) -> Path:
    return run_file(path_or_dir, "serving.json")


def load_serving(path_or_dir) -> ServingResults:
    data, p = read_json(path_or_dir, "serving.json")
    return ServingResults.from_dict(data, str(p))


def write_serving(path, results: ServingResults) -> Path:
    from sabench.io import write_atomic

    return write_atomic(path, json.dumps(results.to_dict(), indent=1))

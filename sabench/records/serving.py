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

from sabench.records.checks import Where, mapping, text
from sabench.records.codec import Record, checked, parse, required
from sabench.records.files import read_json, run_file

SERVING_SCHEMA = "sabench-serving/1"


@dataclass(frozen=True)
class RequestRecord(Record):
    """One request: its lengths and its raw times, in seconds since the run's start (a monotonic
    clock, read after a CUDA synchronise on a GPU)."""
    id: int = required(lo=0)
    prompt_len: int = required(lo=1)
    output_len: int = required(lo=1)
    slot: int = required(lo=0)  # the cache slot it was prefilled into and decoded in
    arrival_s: float = required(lo=0)  # when it arrived (Poisson: drawn before the run; closed loop: its client's
    #                                    last finish)
    admitted_s: float = required(lo=0)  # when its prefill started (a slot was free and the loop took it)
    token_s: Tuple[float, ...] = checked((), lo=0, required=True, nonempty=True)  # when each output token was
    #                                    available, in order (output_len of them)

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

    def validate(self, w: Where, name: str) -> None:
        times = self.token_s
        if len(times) != self.output_len:
            w.fail(f"{name}.token_s", f"holds {len(times)} times for {self.output_len} output tokens")
        if not self.arrival_s <= self.admitted_s <= times[0] or list(times) != sorted(times):
            w.fail(name, "times out of order (arrival <= admitted <= first token <= ... <= last token)")


@dataclass(frozen=True)
class ServingRun(Record):
    """One variant under one load in one round of `sabench serve`."""
    variant: str
    round: int = required(lo=0)
    slots: int = required(lo=1)   # requests decoded at once: the variant's slots at the suite's cache budget
    cache_bytes: int = required(lo=0)  # the KV cache allocated for those slots (the memory model's figure, checked)
    rate: Optional[float] = checked(positive=True, null=True)  # Poisson arrivals per second; None for a closed loop
    clients: Optional[int] = checked(lo=1, null=True)  # closed loop: clients, each sending when its last request
    #                               finished
    requests: Tuple[RequestRecord, ...] = checked((), required=True, nonempty=True)

    @property
    def load(self) -> str:
        return f"{self.rate:g} req/s" if self.rate is not None else f"{self.clients} clients"

    def validate(self, w: Where, name: str) -> None:
        if (self.rate is None) == (self.clients is None):
            w.fail("rate", "or clients must be given, not both")


@dataclass(frozen=True)
class ServingResults(Record):
    """A `sabench serve` run: the suite as run, where it ran, and every (variant, load, round) run."""
    schema: str
    created: str                  # ISO 8601 UTC
    env: Dict[str, Any]           # device, torch version, threads
    suite: Dict[str, Any]         # the suite as run (Suite.to_dict, with its serving block)
    runs: Tuple[ServingRun, ...] = ()
    extra: Dict[str, Any] = field(default_factory=dict)

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
        runs = tuple(parse(ServingRun, Where(file, f"run {i}"), "", r) for i, r in enumerate(runs))
        return parse(cls, w, "", m, known={"runs": runs})


def serving_path(path_or_dir) -> Path:
    return run_file(path_or_dir, "serving.json")


def load_serving(path_or_dir) -> ServingResults:
    data, p = read_json(path_or_dir, "serving.json")
    return ServingResults.from_dict(data, str(p))


def write_serving(path, results: ServingResults) -> Path:
    from sabench.io import write_atomic

    return write_atomic(path, json.dumps(results.to_dict(), indent=1))

"""A suite's `serving:` block, parsed into a typed ServingSpec (errors: one line naming the key)::

    serving:
      rates: [5, 200]          # Poisson arrivals, requests/s (one run per rate); or
      clients: [1, 8]          # a closed loop of C clients (one run per C); exactly one of the two
      requests: 40             # requests per run, 1..100000
      prompt_len: 32           # tokens: an integer, or [lo, hi] drawn uniformly per request
      output_len: [8, 24]
      slots: max               # max: each variant gets floor(cache_memory / its cache bytes per slot);
                               # or an integer, the same for every variant (equal batch, not equal memory)
      cache_memory: 192KiB     # the KV cache budget (required with slots: max); sizes as in `memory`
      targets: {ttft_ms: 200, tpot_ms: 20}   # optional; a request meeting all counts in goodput
      goodput_share: 0.9       # optional, default 0.9: the share a rate must keep to count as sustained
      seed: 0                  # optional: arrival times, lengths and prompts

The suite's `rounds` repeats every (variant, load) run; its `variants`, `model`, `dtype`, `device`,
`prefill_chunk` and `threads` apply as in a sweep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from sabench import accounting
from sabench.serving.metrics import Targets
from sabench.serving.stream import ClosedLoop, Lengths, Poisson, Workload
from sabench.suite_fields import SuiteError, check_keys, int_field, parsed
from sabench.values import is_int, is_number, show

KEYS = ("rates", "clients", "requests", "prompt_len", "output_len", "slots", "cache_memory", "targets",
        "goodput_share", "seed")
TARGET_KEYS = ("ttft_ms", "tpot_ms")
MAX_REQUESTS = 100_000


@dataclass(frozen=True)
class Load:
    """One offered load: Poisson `rate` requests/s, or a closed loop of `clients`."""

    rate: Optional[float] = None
    clients: Optional[int] = None

    def workload(self, requests: int, prompt: Lengths, output: Lengths, seed: int) -> Workload:
        if self.rate is not None:
            return Poisson(self.rate, requests, prompt, output, seed)
        return ClosedLoop(self.clients, requests, prompt, output, seed)

    def __str__(self) -> str:
        return f"{self.rate:g} req/s" if self.rate is not None else f"{self.clients} clients"


@dataclass(frozen=True)
class ServingSpec:
    loads: tuple  # of Load, ascending
    requests: int
    prompt: Lengths
    output: Lengths
    slots: Union[int, str]  # an int, or "max" (from cache_memory)
    cache_memory: Optional[int]
    targets: Targets
    goodput_share: float = 0.9
    seed: int = 0

    @property
    def max_len(self) -> int:
        """Positions a slot needs: the longest prompt and output (the last token is never written)."""
        return self.prompt.hi + self.output.hi - 1

    def slot_bytes(self, cfg, plan, dtype: str) -> int:
        return accounting.kv_cache_bytes(cfg, plan, 1, self.max_len, dtype)

    def slots_for(self, cfg, plan, dtype: str) -> int:
        """The slots a variant gets: equal memory under `slots: max`, else the suite's number."""
        if self.slots != "max":
            return self.slots
        return self.cache_memory // self.slot_bytes(cfg, plan, dtype)

    def to_dict(self) -> dict:
        kind = "rates" if self.loads[0].rate is not None else "clients"
        return {kind: [ld.rate if kind == "rates" else ld.clients for ld in self.loads],
                "requests": self.requests, "prompt_len": [self.prompt.lo, self.prompt.hi],
                "output_len": [self.output.lo, self.output.hi], "slots": self.slots,
                "cache_memory": self.cache_memory,
                "targets": {"ttft_ms": self.targets.ttft_ms, "tpot_ms": self.targets.tpot_ms},
                "goodput_share": self.goodput_share, "seed": self.seed}


def _lengths(v, key: str, source: str) -> Lengths:
    if is_int(v):
        int_field(v, key, 1, source)
        return Lengths(v, v)
    if isinstance(v, list) and len(v) == 2 and all(is_int(x) for x in v) and 1 <= v[0] <= v[1]:
        return Lengths(v[0], v[1])
    raise SuiteError(source, key, f"expected a token count >= 1 or a range [lo, hi] with 1 <= lo <= hi, got {show(v)}")


def _loads(block: dict, source: str) -> tuple:
    if ("rates" in block) == ("clients" in block):
        raise SuiteError(source, "serving", "give exactly one of rates (Poisson arrivals, requests/s) "
                                            "or clients (a closed loop)")
    key = "rates" if "rates" in block else "clients"
    v = block[key]
    items = v if isinstance(v, list) else [v]
    if not items:
        raise SuiteError(source, f"serving.{key}", "expected a non-empty list")
    loads = []
    for i, x in enumerate(items):
        where = f"serving.{key}[{i}]" if isinstance(v, list) else f"serving.{key}"
        if key == "rates":
            if not is_number(x) or not 0 < x < 1e9:
                raise SuiteError(source, where, f"expected a rate in requests/s > 0, got {show(x)}")
            loads.append(Load(rate=float(x)))
        else:
            loads.append(Load(clients=int_field(x, where, 1, source, 1_000_000)))
    if len(set(loads)) != len(loads):
        raise SuiteError(source, f"serving.{key}", f"lists a value twice: {show(v)}")
    return tuple(sorted(loads, key=lambda ld: ld.rate if ld.rate is not None else ld.clients))


def _targets(v, source: str) -> Targets:
    if v is None:
        return Targets()
    if not isinstance(v, dict):
        raise SuiteError(source, "serving.targets", f"expected a mapping like {{ttft_ms: 200, tpot_ms: 20}}, got {show(v)}")
    check_keys(v, TARGET_KEYS, (), "serving.targets", source)
    for k, x in v.items():
        if x is not None and (not is_number(x) or not x > 0):
            raise SuiteError(source, f"serving.targets.{k}", f"expected milliseconds > 0 or null, got {show(x)}")
    return Targets(**{k: (None if x is None else float(x)) for k, x in v.items()})


def parse_serving(block, source: str, cfg, plans: dict, dtype: str) -> ServingSpec:
    """The `serving:` block checked against the model; `plans`: variant -> SharingPlan (every variant
    must get at least one slot)."""
    if not isinstance(block, dict):
        raise SuiteError(source, "serving", f"expected a mapping (see `sabench serve --help`), got {show(block)}")
    check_keys(block, KEYS, ("requests", "prompt_len", "output_len", "slots"), "serving", source)
    loads = _loads(block, source)
    requests = int_field(block["requests"], "serving.requests", 1, source, MAX_REQUESTS)
    prompt = _lengths(block["prompt_len"], "serving.prompt_len", source)
    output = _lengths(block["output_len"], "serving.output_len", source)
    slots = block["slots"]
    if slots != "max":
        slots = int_field(slots, "serving.slots", 1, source, 1 << 20)
    from sabench.units import parse_size

    memory = parsed(parse_size, block.get("cache_memory"), "serving.cache_memory", source)
    if slots == "max" and memory is None:
        raise SuiteError(source, "serving.cache_memory", "required with slots: max (the KV cache budget every "
                                                         "variant shares, e.g. 2GiB)")
    share = block.get("goodput_share", 0.9)
    if not is_number(share) or not 0 < share <= 1:
        raise SuiteError(source, "serving.goodput_share", f"expected a share in (0, 1], got {show(share)}")
    seed = block.get("seed", 0)
    if not is_int(seed) or seed < 0:
        raise SuiteError(source, "serving.seed", f"expected an integer >= 0, got {show(seed)}")
    spec = ServingSpec(loads, requests, prompt, output, slots, memory, _targets(block.get("targets"), source),
                       float(share), seed)
    if spec.max_len > cfg.max_position_embeddings:
        raise SuiteError(source, "serving.output_len", f"prompt {prompt.hi} + output {output.hi} tokens exceed the "
                                                       f"model's {cfg.max_position_embeddings} positions")
    for variant, plan in plans.items():
        if spec.slots_for(cfg, plan, dtype) < 1:
            raise SuiteError(source, "serving.cache_memory",
                             f"{memory} bytes hold no slot of {variant} (one slot of {spec.max_len} positions "
                             f"needs {spec.slot_bytes(cfg, plan, dtype)} bytes)")
    return spec

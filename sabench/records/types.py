"""The types of results.json, schema v2 (see the package docstring)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple, Union

from sabench.records.parallel import TensorParallel
from sabench.records.checks import ResultsError, Where, dump, mapping, number, numbers, show, strings, text
from sabench.records.rounds import RoundSample, parse_rounds

SCHEMA = "sabench-results/2"
SCHEMA_V1 = "sabench-results/1"
PHASES = ("prefill", "decode")
STATUSES = ("ok", "oom", "error", "killed", "skipped_after_oom")
# Statuses of a point that failed and may be measured again (readers treat them alike).
FAILED_STATUSES = ("error", "killed")
MAX_REQUEST = "max"  # a sweep's `batch_size: max`

Key = Tuple[str, int, int, str]  # (variant, batch_size, seq_len, phase)


def point_key(variant: str, batch_size, seq_len: int) -> str:
    """The one key of a point in results.json (`overhead`) and in resume bookkeeping."""
    return f"{variant}|{batch_size}|{seq_len}"


@dataclass(frozen=True, order=True)
class PointSpec:
    """One cell of a sweep: a variant at one batch size and prompt length (the one point type)."""
    variant: str
    batch_size: Union[int, str]  # an int, or "max": the largest batch the memory model predicts to fit
    seq_len: int

    @property
    def key(self) -> str:
        return point_key(self.variant, self.batch_size, self.seq_len)

    def record_key(self, phase: str) -> "Key":
        """(variant, batch_size, seq_len, phase): the index key of this point's record of `phase`."""
        return (self.variant, self.batch_size, self.seq_len, phase)

    @property
    def size(self) -> str:
        """'b=4 s=512': the point's place in the sweep, for text that names the variant apart."""
        return f"b={self.batch_size} s={self.seq_len}"

    @property
    def label(self) -> str:
        """'cla:2 b=4 s=512': the one human label of a point (a phase record prefixes its phase)."""
        return f"{self.variant} {self.size}"


def key_label(k: Key) -> str:
    """'decode cla:2 b=4 s=512' for an index key (PhaseRecord.label without the record)."""
    return f"{k[3]} {PointSpec(k[0], k[1], k[2]).label}"


# ---------------------------------------------------------------------------- record parts


@dataclass(frozen=True)
class Latency:
    """Milliseconds. Prefill: one sample per prompt forward; decode: one per single-token step."""
    median: Optional[float] = None
    p10: Optional[float] = None
    p90: Optional[float] = None
    p99: Optional[float] = None
    mean: Optional[float] = None
    std: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    samples: Tuple[float, ...] = ()

    @classmethod
    def parse(cls, w: Where, name: str, v, timed: bool) -> Optional["Latency"]:
        m = mapping(w, name, v)
        if m is None:
            return None
        vals = {}
        for n in _names(cls):
            if n == "samples":
                continue
            vals[n] = number(w, f"{name}.{n}", m.get(n), lo=0,
                                   positive=timed and n != "std")
        s = m.get("samples") or []
        if not isinstance(s, list):
            w.fail(f"{name}.samples", f"must be a list of numbers, got {show(s)}")
        samples = tuple(s)
        if not _plain_samples(samples, timed):  # the quick check failed: find and name the bad one
            samples = tuple(number(w, f"{name}.samples[{i}]", x, positive=timed) for i, x in enumerate(s))
        if timed and vals["median"] is None:
            w.fail(f"{name}.median", "is missing (the record's status is ok)")
        return cls(samples=samples, **vals)

    def to_dict(self) -> dict:
        d = {n: getattr(self, n) for n in _names(type(self)) if n != "samples" and getattr(self, n) is not None}
        d["samples"] = list(self.samples)
        return d

    @classmethod
    def of(cls, samples) -> "Latency":
        """The summary of measured samples (ms): sabench.stats.summarize's figures."""
        from sabench.stats.summary import summarize

        s = summarize(samples)
        return cls(samples=tuple(s.pop("samples")), **s)


@lru_cache(maxsize=None)
def _names(cls) -> Tuple[str, ...]:
    """A dataclass's field names, in order (dataclasses.fields is slow on every record)."""
    return tuple(f.name for f in fields(cls))


def _plain_samples(xs: tuple, timed: bool) -> bool:
    """All finite numbers (> 0 when timed): the common case, checked at C speed."""
    if not all(type(x) is float or type(x) is int for x in xs):
        return False
    try:
        lo, hi = min(xs, default=1.0), max(xs, default=1.0)
    except TypeError:
        return False
    return math.isfinite(lo) and math.isfinite(hi) and lo == lo and (lo > 0 if timed else True) \
        and all(x == x for x in xs)


@dataclass(frozen=True)
class Stability:
    p90_over_p10: Optional[float] = None
    stable: Optional[bool] = None           # p90/p10 <= threshold
    threshold: Optional[float] = None
    extra_rounds: Optional[int] = None      # CUDA: up to 3 more rounds of `repeats`
    note: Optional[str] = None

    @classmethod
    def parse(cls, w: Where, v) -> Optional["Stability"]:
        m = mapping(w, "stability", v)
        if m is None:
            return None
        stable = m.get("stable")
        if stable is not None and not isinstance(stable, bool):
            w.fail("stability.stable", f"must be true or false, got {show(stable)}")
        return cls(number(w, "stability.p90_over_p10", m.get("p90_over_p10")), stable,
                   number(w, "stability.threshold", m.get("threshold")),
                   number(w, "stability.extra_rounds", m.get("extra_rounds"), integer=True, lo=0),
                   text(w, "stability.note", m.get("note")))

    def to_dict(self) -> dict:
        return {n: getattr(self, n) for n in _names(type(self)) if getattr(self, n) is not None}


@dataclass(frozen=True)
class Flops:
    """For the whole phase (prefill forward, or all decode_tokens steps), see accounting.py."""
    counted: Optional[int] = None
    analytic: Optional[int] = None
    analytic_breakdown: Optional[Dict[str, float]] = None  # projections, attention, mlp, lm_head

    @classmethod
    def parse(cls, w: Where, v) -> Optional["Flops"]:
        m = mapping(w, "flops", v)
        if m is None:
            return None
        return cls(number(w, "flops.counted", m.get("counted"), lo=0),
                   number(w, "flops.analytic", m.get("analytic"), lo=0),
                   numbers(w, "flops.analytic_breakdown", m.get("analytic_breakdown")))

    def to_dict(self) -> dict:
        return {n: getattr(self, n) for n in _names(type(self)) if getattr(self, n) is not None}


@dataclass(frozen=True)
class Memory:
    """memory_bytes: measured readings only (bytes)."""
    device_peak: Optional[int] = None     # the point's own absolute peak footprint in this phase
    phase_rise: Optional[int] = None      # the phase's peak minus the level just before it
    peak_allocated: Optional[int] = None  # CUDA caching allocator peaks over the phase
    peak_reserved: Optional[int] = None
    peak_rss: Optional[int] = None        # the process's peak resident memory
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, readings: dict) -> "Memory":
        """From a tracker's readings (sabench.measure.trackers): the named peaks, the rest in extra."""
        names = [n for n in _names(cls) if n != "extra"]
        return cls(extra={k: x for k, x in readings.items() if k not in names},
                   **{n: readings.get(n) for n in names})

    @classmethod
    def parse(cls, w: Where, v) -> Optional["Memory"]:
        m = mapping(w, "memory_bytes", v)
        if m is None:
            return None
        names = [n for n in _names(cls) if n != "extra"]
        vals = {n: number(w, f"memory_bytes.{n}", m.get(n), lo=None if n == "phase_rise" else 0)
                for n in names}
        return cls(extra={k: x for k, x in m.items() if k not in names}, **vals)

    def to_dict(self) -> dict:
        d = {n: getattr(self, n) for n in _names(type(self)) if n != "extra" and getattr(self, n) is not None}
        return {**d, **self.extra}


@dataclass(frozen=True)
class MaxAttempt:
    batch_size: int
    status: str

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "status": self.status}


# ---------------------------------------------------------------------------- one point and phase

# scalar fields of a record: name -> (kind, keyword arguments of the check)
_NUM, _INT, _STR = "num", "int", "str"
_SCALARS: Dict[str, Tuple[str, dict]] = {
    "warmup": (_INT, {"lo": 0}), "repeats": (_INT, {"lo": 0}),
    "execution": (_STR, {"choices": ("eager", "compiled")}),
    "params": (_INT, {"lo": 0}), "kv_cache_bytes": (_INT, {"lo": 0}), "bytes_moved": (_INT, {"lo": 0}),
    "tokens_per_s": (_NUM, {"lo": 0}),          # checked > 0 in an ok record
    "prefill_mode": (_STR, {}), "decode_mode": (_STR, {}),   # graph | compiled | eager
    "decode_tokens": (_INT, {"lo": 0}),
    "memory_source": (_STR, {}),                # nvml-process | nvml-device | rss
    "roofline_metric": (_STR, {"choices": ("mfu", "mbu")}),  # which of mfu/mbu is the phase's headline
    "mfu": (_NUM, {"lo": 0}), "mbu": (_NUM, {"lo": 0}), "floor_ms": (_NUM, {"lo": 0}),
    "energy_j": (_NUM, {"lo": 0}), "joules_per_token": (_NUM, {"lo": 0}),
    "energy_source": (_STR, {}), "energy_scope": (_STR, {}), "energy_window_s": (_NUM, {"lo": 0}),
    "energy_note": (_STR, {}),
    "batch_request": (_STR, {"choices": (MAX_REQUEST,)}), "predicted_max_batch": (_INT, {"lo": 0}),
    "max_attempt": (_INT, {"lo": 1}), "memory_budget_bytes": (_INT, {"lo": 0}),
    "memory_budget_source": (_STR, {}),
}
_ENERGY_NULLS = ("energy_j", "joules_per_token", "energy_source")  # written as null when not measured


@dataclass(frozen=True)
class PhaseRecord:
    """One point and phase of a run (the runner writes one per point and phase)."""
    variant: str
    batch_size: int
    seq_len: int
    phase: str                                   # prefill | decode
    status: str                                  # ok | oom | error | killed | skipped_after_oom
    error: Optional[str] = None                  # only when status != ok
    warmup: Optional[int] = None
    repeats: Optional[int] = None
    execution: Optional[str] = None              # eager | compiled (what ran)
    params: Optional[int] = None                 # the model's parameters (a tensor-parallel point: all ranks'
    #                                              together, each weight once, as the TP-1 record)
    kv_cache_bytes: Optional[int] = None         # analytic bytes of the preallocated cache (tensor-parallel: all
    #                                              ranks' caches together; one rank's in tensor_parallel)
    memory_predicted_bytes: Optional[Dict[str, float]] = None  # memory_model.predict: weights, kv_cache,
    #                                              activations, context, total, activations_live, needed
    flops: Optional[Flops] = None                # the model's (tensor-parallel: as the TP-1 record's)
    bytes_moved: Optional[int] = None            # analytic bytes read + written by the phase (roofline;
    #                                              tensor-parallel: the model's, as flops)
    latency_ms: Optional[Latency] = None         # the headline timing
    latency_eager_ms: Optional[Latency] = None   # decode on CUDA, eager execution: the eager step
    tokens_per_s: Optional[float] = None         # prefill: B*T/median_s; decode: B/median_step_s
    prefill_mode: Optional[str] = None
    decode_mode: Optional[str] = None
    decode_tokens: Optional[int] = None          # decode only
    stability: Optional[Stability] = None
    memory_bytes: Optional[Memory] = None
    memory_source: Optional[str] = None
    memory_breakdown: Optional[Dict[str, float]] = None  # weights, kv_cache, activations, context
    memory_notes: Optional[Tuple[str, ...]] = None
    mfu: Optional[float] = None                  # prefill, when env has peaks
    mbu: Optional[float] = None                  # decode, when env has peaks
    floor_ms: Optional[float] = None             # roofline floor of one sample (tensor-parallel: one rank's,
    #                                              all-reduce bytes over the link included)
    roofline_metric: Optional[str] = None        # mfu | mbu: the phase's headline utilisation
    nvml: Optional[Dict[str, Any]] = None        # GPU only: the sampler's window
    energy_j: Optional[float] = None             # GPU only: joules over the timed calls
    joules_per_token: Optional[float] = None
    energy_source: Optional[str] = None
    energy_scope: Optional[str] = None
    energy_window_s: Optional[float] = None
    energy_note: Optional[str] = None
    batch_request: Optional[str] = None          # "max" on points of a `batch_size: max` sweep entry
    predicted_max_batch: Optional[int] = None
    max_attempt: Optional[int] = None            # 1-based
    memory_budget_bytes: Optional[int] = None
    memory_budget_source: Optional[str] = None
    max_attempts: Optional[Tuple[MaxAttempt, ...]] = None  # on the last attempt's records
    tensor_parallel: Optional[TensorParallel] = None  # a point run on N tensor-parallel ranks: per rank figures
    rounds: Tuple[RoundSample, ...] = ()         # every round measured, in round order (v1: none)
    extra: Dict[str, Any] = field(default_factory=dict)    # any other field, kept as written

    @property
    def point(self) -> PointSpec:
        return PointSpec(self.variant, self.batch_size, self.seq_len)

    @property
    def key(self) -> Key:
        return (self.variant, self.batch_size, self.seq_len, self.phase)

    @property
    def label(self) -> str:
        """'decode cla:2 b=4 s=512'."""
        return f"{self.phase} {self.point.label}"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    # ------------------------------------------------------------ constructors (what the harness makes)
    @classmethod
    def failed(cls, point: PointSpec, phase: str, status: str, error: str, **extra) -> "PhaseRecord":
        """A phase of `point` that did not measure, and nothing else known of it: `status` (oom,
        error, killed, skipped_after_oom), a one-line `error`, and what else the failure left
        (`extra`: stderr_tail, signal, traceback)."""
        return cls(point.variant, point.batch_size, point.seq_len, phase, status, error=error[:500], extra=extra)

    @classmethod
    def skipped_after_oom(cls, point: PointSpec, phase: str, reason: str) -> "PhaseRecord":
        """A phase not measured because the point (or a smaller one) ran out of memory before."""
        return cls.failed(point, phase, "skipped_after_oom", reason)

    def with_failure(self, status: str, error: str, **extra) -> "PhaseRecord":
        """This record, its analytic figures kept, as a phase that did not measure."""
        return replace(self, status=status, error=error[:500], extra={**self.extra, **extra})

    def with_extra(self, **extra) -> "PhaseRecord":
        """This record with more fields the types do not name (torch_threads, weights, notes, ...)."""
        return replace(self, extra={**self.extra, **extra})

    @classmethod
    def from_dict(cls, d, file: str = "results.json", index: int = 0) -> "PhaseRecord":
        w = Where(file, f"record {index}")
        if not isinstance(d, dict):
            w.fail("", f"must be a mapping, got {show(d)}")
        variant = text(w, "variant", d.get("variant"), optional=False)
        if not variant:
            w.fail("variant", "must not be empty")
        batch = number(w, "batch_size", d.get("batch_size"), integer=True, positive=True, optional=False)
        seq = number(w, "seq_len", d.get("seq_len"), integer=True, positive=True, optional=False)
        phase = text(w, "phase", d.get("phase"), choices=PHASES, optional=False)
        w = Where(file, f"record '{phase} {PointSpec(variant, batch, seq).label}'")
        status = text(w, "status", d.get("status"), choices=STATUSES, optional=False)
        ok = status == "ok"
        vals: Dict[str, Any] = {}
        for name, (kind, kw) in _SCALARS.items():
            v = d.get(name)
            vals[name] = (text(w, name, v, **kw) if kind == _STR
                          else number(w, name, v, integer=kind == _INT, **kw))
        if ok and vals["tokens_per_s"] is not None and vals["tokens_per_s"] <= 0:
            w.fail("tokens_per_s", f"must be > 0 in an ok record, got {vals['tokens_per_s']!r}")
        lat = Latency.parse(w, "latency_ms", d.get("latency_ms"), timed=ok)
        if ok and lat is None:
            w.fail("latency_ms", "is missing (the record's status is ok)")
        known = set(_names(cls)) - {"extra"}
        return cls(
            variant=variant, batch_size=batch, seq_len=seq, phase=phase, status=status,
            error=text(w, "error", d.get("error")),
            latency_ms=lat,
            latency_eager_ms=Latency.parse(w, "latency_eager_ms", d.get("latency_eager_ms"), timed=ok),
            flops=Flops.parse(w, d.get("flops")),
            stability=Stability.parse(w, d.get("stability")),
            memory_bytes=Memory.parse(w, d.get("memory_bytes")),
            memory_predicted_bytes=numbers(w, "memory_predicted_bytes", d.get("memory_predicted_bytes")),
            memory_breakdown=numbers(w, "memory_breakdown", d.get("memory_breakdown")),
            memory_notes=strings(w, "memory_notes", d.get("memory_notes")),
            nvml=mapping(w, "nvml", d.get("nvml")),
            max_attempts=_attempts(w, d.get("max_attempts")),
            tensor_parallel=TensorParallel.parse(w, d.get("tensor_parallel")),
            rounds=parse_rounds(w, d.get("rounds")),
            extra={k: v for k, v in d.items() if k not in known},
            **vals)

    def to_dict(self) -> dict:
        energy = self.energy_note is not None or self.energy_scope is not None
        out = {}
        for n in _names(type(self)):
            v = getattr(self, n)
            if n == "extra" or (n == "rounds" and not v):
                continue
            if v is not None or (energy and n in _ENERGY_NULLS):
                out[n] = [dump(a) for a in v] if n in ("max_attempts", "rounds") else dump(v)
        out.update(self.extra)
        return out


def _attempts(w: Where, v) -> Optional[Tuple[MaxAttempt, ...]]:
    if v is None:
        return None
    if not isinstance(v, list):
        w.fail("max_attempts", f"must be a list, got {show(v)}")
    out = []
    for i, a in enumerate(v):
        m = mapping(w, f"max_attempts[{i}]", a, optional=False)
        out.append(MaxAttempt(number(w, f"max_attempts[{i}].batch_size", m.get("batch_size"), integer=True,
                                      positive=True, optional=False),
                              text(w, f"max_attempts[{i}].status", m.get("status"), optional=False)))
    return tuple(out)


# ---------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class Overhead:
    """Harness overhead of one point's process, apart from the measured phases (seconds)."""
    process_start_s: Optional[float] = None
    model_build_s: Optional[float] = None
    count_flops_s: Optional[float] = None
    first_prefill_s: Optional[float] = None   # the untimed first call of each phase
    first_decode_s: Optional[float] = None
    compile_s: Optional[float] = None         # compiled execution: first_prefill_s + first_decode_s
    total_s: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, seconds: dict) -> "Overhead":
        """From a point process's overhead (harness.point): the named figures, the rest in extra."""
        names = [n for n in _names(cls) if n != "extra"]
        return cls(extra={k: x for k, x in seconds.items() if k not in names}, **{n: seconds.get(n) for n in names})

    @classmethod
    def parse(cls, w: Where, key: str, v) -> "Overhead":
        m = mapping(w, f"overhead[{key!r}]", v, optional=False)
        names = [n for n in _names(cls) if n != "extra"]
        vals = {n: number(w, f"overhead[{key!r}].{n}", m.get(n)) for n in names}
        return cls(extra={k: x for k, x in m.items() if k not in names}, **vals)

    def to_dict(self) -> dict:
        d = {n: getattr(self, n) for n in _names(type(self)) if n != "extra" and getattr(self, n) is not None}
        return {**d, **self.extra}


# env keys whose type readers rely on (the rest of env is shown as written)
_ENV_NUMBERS = ("peak_bandwidth_bytes_per_s", "peak_flops_per_s", "memory_total_bytes", "cpu_count",
                "power_limit_w", "sm_clock_max_mhz", "mem_clock_max_mhz")
_ENV_TEXTS = ("device", "device_name", "host", "cpu", "git_commit", "peak_source", "driver", "cuda",
              "sabench", "torch", "transformers", "python")


@dataclass(frozen=True)
class RunRecord:
    """One results.json: the environment, the suite as run, per-point overhead, the records."""
    env: Dict[str, Any] = field(default_factory=dict)    # sabench.measure.env.capture_env()
    suite: Dict[str, Any] = field(default_factory=dict)  # sabench.suite.Suite.to_dict()
    records: Tuple[PhaseRecord, ...] = ()
    overhead: Dict[str, Overhead] = field(default_factory=dict)  # point_key -> overhead
    created: Optional[str] = None                         # UTC, ISO 8601
    schema: str = SCHEMA
    extra: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = field(default=None, compare=False)  # the file it was loaded from

    @classmethod
    def from_dict(cls, d, file: str = "results.json") -> "RunRecord":
        """Validate (and upgrade a v1 dict); raises ResultsError naming file, record and field."""
        w = Where(file, "top level")
        if not isinstance(d, dict):
            raise ResultsError(f"{file} is not a sabench results file (top level is not an object)")
        schema = d.get("schema")
        if schema == SCHEMA_V1:
            from sabench.records.v1 import upgrade_v1
            d = upgrade_v1(d)
        elif schema != SCHEMA:
            raise ResultsError(f"{file} has schema {schema!r}, expected {SCHEMA!r} (or {SCHEMA_V1!r})")
        recs = d.get("records")
        if not isinstance(recs, list):
            w.fail("records", f"must be a list of objects, got {show(recs)}")
        env = mapping(w, "env", d.get("env")) or {}
        for k in _ENV_NUMBERS:
            number(w, f"env.{k}", env.get(k), lo=0)
        for k in _ENV_TEXTS:
            if env.get(k) is not None and not isinstance(env.get(k), str):
                w.fail(f"env.{k}", f"must be a string, got {show(env.get(k))}")
        suite = _suite(w, mapping(w, "suite", d.get("suite")) or {})
        ovh = mapping(w, "overhead", d.get("overhead")) or {}
        known = ("schema", "created", "env", "suite", "overhead", "records")
        return cls(env=env, suite=suite,
                   records=tuple(PhaseRecord.from_dict(r, file, i) for i, r in enumerate(recs)),
                   overhead={str(k): Overhead.parse(w, k, v) for k, v in ovh.items()},
                   created=text(w, "created", d.get("created")), schema=SCHEMA,
                   extra={k: v for k, v in d.items() if k not in known}, source=file)

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA}
        if self.created is not None:
            out["created"] = self.created
        out.update(env=self.env, suite=self.suite, overhead={k: o.to_dict() for k, o in self.overhead.items()},
                   records=[r.to_dict() for r in self.records])
        out.update(self.extra)
        return out

    def index(self) -> Dict[Key, PhaseRecord]:
        """(variant, batch, seq, phase) -> record (the last one wins on duplicates)."""
        return {r.key: r for r in self.records}

    def variants(self) -> List[str]:
        """Variants in suite order, then any others found in the records (first-seen order)."""
        vs = self.suite.get("variants")
        out: List[str] = []
        for v in (list(vs) if isinstance(vs, list) else []) + [r.variant for r in self.records]:
            if str(v) not in out:
                out.append(str(v))
        return out

    def phases(self) -> List[str]:
        present = {r.phase for r in self.records}
        return [p for p in PHASES if p in present]


def _suite(w: Where, suite: dict) -> dict:
    """The suite as run stays a mapping, but the keys readers use must have their types."""
    for k in ("name", "description", "dtype", "device", "execution", "path"):
        text(w, f"suite.{k}", suite.get(k))
    if not isinstance(suite.get("model"), (str, dict, type(None))):
        w.fail("suite.model", f"must be a name or a mapping, got {show(suite.get('model'))}")
    mapping(w, "suite.model_config", suite.get("model_config"))
    strings(w, "suite.variants", suite.get("variants"))
    sweep = mapping(w, "suite.sweep", suite.get("sweep")) or {}
    for k, v in sweep.items():
        if not isinstance(v, list) or not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in v):
            w.fail(f"suite.sweep.{k}", f"must be a list of integers, got {show(v)}")
    for k in ("decode_tokens", "warmup", "repeats", "prefill_chunk", "rounds", "threads"):
        number(w, f"suite.{k}", suite.get(k), integer=True, lo=0)
    return suite


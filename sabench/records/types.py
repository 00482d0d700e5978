"""The types of results.json, schema v2 (see the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple, Union

from sabench.records.parallel import TensorParallel
from sabench.records.checks import ResultsError, Where, mapping, number, strings, text
from sabench.records.codec import Record, checked, named_and_extra, parse, parse_fields, required
from sabench.records.rounds import RoundSample
from sabench.values import is_int, show

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

# a timing of an ok record must be > 0 (a failed record's partial timings need only be finite)
_TIMED = {"lo": 0, "when_ok": {"positive": True}}


@dataclass(frozen=True)
class Latency(Record):
    """Milliseconds. Prefill: one sample per prompt forward; decode: one per single-token step."""
    median: Optional[float] = checked(lo=0, when_ok={"positive": True, "required": True})
    p10: Optional[float] = checked(**_TIMED)
    p90: Optional[float] = checked(**_TIMED)
    p99: Optional[float] = checked(**_TIMED)
    mean: Optional[float] = checked(**_TIMED)
    std: Optional[float] = checked(lo=0)
    min: Optional[float] = checked(**_TIMED)
    max: Optional[float] = checked(**_TIMED)
    samples: Tuple[float, ...] = checked((), when_ok={"positive": True})

    @classmethod
    def of(cls, samples) -> "Latency":
        """The summary of measured samples (ms): sabench.stats.summarize's figures."""
        from sabench.stats.summary import summarize

        s = summarize(samples)
        return cls(samples=tuple(s.pop("samples")), **s)


@dataclass(frozen=True)
class Stability(Record):
    p90_over_p10: Optional[float] = None
    stable: Optional[bool] = None           # p90/p10 <= threshold
    threshold: Optional[float] = None
    extra_rounds: Optional[int] = checked(lo=0)  # CUDA: up to 3 more rounds of `repeats`
    note: Optional[str] = None


@dataclass(frozen=True)
class Flops(Record):
    """For the whole phase (prefill forward, or all decode_tokens steps), see accounting.py."""
    counted: Optional[int] = checked(lo=0, integer=False)
    analytic: Optional[int] = checked(lo=0, integer=False)
    analytic_breakdown: Optional[Dict[str, float]] = None  # projections, attention, mlp, lm_head


_BYTES = {"lo": 0, "integer": False}  # readings files have held as any number


@dataclass(frozen=True)
class Memory(Record):
    """memory_bytes: measured readings only (bytes)."""
    device_peak: Optional[int] = checked(**_BYTES)     # the point's own absolute peak footprint in this phase
    phase_rise: Optional[int] = checked(integer=False)  # the phase's peak minus the level just before it
    peak_allocated: Optional[int] = checked(**_BYTES)  # CUDA caching allocator peaks over the phase
    peak_reserved: Optional[int] = checked(**_BYTES)
    peak_rss: Optional[int] = checked(**_BYTES)        # the process's peak resident memory
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, readings: dict) -> "Memory":
        """From a tracker's readings (sabench.measure.trackers): the named peaks, the rest in extra."""
        return cls(**named_and_extra(cls, readings))


@dataclass(frozen=True)
class MaxAttempt(Record):
    batch_size: int = required(positive=True)
    status: str = required()


# ---------------------------------------------------------------------------- one point and phase

_ENERGY_SET = ("energy_note", "energy_scope")  # either set: the energy figures are written, null when not measured
_KEY_FIELDS = ("variant", "batch_size", "seq_len", "phase")


@dataclass(frozen=True)
class PhaseRecord(Record):
    """One point and phase of a run (the runner writes one per point and phase)."""
    variant: str = required(nonempty=True)
    batch_size: int = required(positive=True)
    seq_len: int = required(positive=True)
    phase: str = required(choices=PHASES)        # prefill | decode
    status: str = required(choices=STATUSES, status_of="record")  # ok | oom | error | killed | skipped_after_oom
    error: Optional[str] = None                  # only when status != ok
    warmup: Optional[int] = checked(lo=0)
    repeats: Optional[int] = checked(lo=0)
    execution: Optional[str] = checked(choices=("eager", "compiled"))  # eager | compiled (what ran)
    params: Optional[int] = checked(lo=0)        # the model's parameters (a tensor-parallel point: all ranks'
    #                                              together, each weight once, as the TP-1 record)
    kv_cache_bytes: Optional[int] = checked(lo=0)  # analytic bytes of the preallocated cache (tensor-parallel:
    #                                              all ranks' caches together; one rank's in tensor_parallel)
    memory_predicted_bytes: Optional[Dict[str, float]] = None  # memory_model.predict: weights, kv_cache,
    #                                              activations, context, total, activations_live, needed
    flops: Optional[Flops] = None                # the model's (tensor-parallel: as the TP-1 record's)
    bytes_moved: Optional[int] = checked(lo=0)   # analytic bytes read + written by the phase (roofline;
    #                                              tensor-parallel: the model's, as flops)
    latency_ms: Optional[Latency] = checked(when_ok={"required": True})  # the headline timing
    latency_eager_ms: Optional[Latency] = None   # decode on CUDA, eager execution: the eager step
    tokens_per_s: Optional[float] = checked(lo=0)  # prefill: B*T/median_s; decode: B/median_step_s
    prefill_mode: Optional[str] = None           # graph | compiled | eager
    decode_mode: Optional[str] = None
    decode_tokens: Optional[int] = checked(lo=0)  # decode only
    stability: Optional[Stability] = None
    memory_bytes: Optional[Memory] = None
    memory_source: Optional[str] = None          # nvml-process | nvml-device | rss
    memory_breakdown: Optional[Dict[str, float]] = None  # weights, kv_cache, activations, context
    memory_notes: Optional[Tuple[str, ...]] = None
    mfu: Optional[float] = checked(lo=0)         # prefill, when env has peaks
    mbu: Optional[float] = checked(lo=0)         # decode, when env has peaks
    floor_ms: Optional[float] = checked(lo=0)    # roofline floor of one sample (tensor-parallel: one rank's,
    #                                              all-reduce bytes over the link included)
    roofline_metric: Optional[str] = checked(choices=("mfu", "mbu"))  # mfu | mbu: the phase's headline utilisation
    nvml: Optional[Dict[str, Any]] = None        # GPU only: the sampler's window
    energy_j: Optional[float] = checked(lo=0, null_with=_ENERGY_SET)  # GPU only: joules over the timed calls
    joules_per_token: Optional[float] = checked(lo=0, null_with=_ENERGY_SET)
    energy_source: Optional[str] = checked(null_with=_ENERGY_SET)
    energy_scope: Optional[str] = None
    energy_window_s: Optional[float] = checked(lo=0)
    energy_note: Optional[str] = None
    batch_request: Optional[str] = checked(choices=(MAX_REQUEST,))  # "max" on points of a `batch_size: max` sweep entry
    predicted_max_batch: Optional[int] = checked(lo=0)
    max_attempt: Optional[int] = checked(lo=1)   # 1-based
    memory_budget_bytes: Optional[int] = checked(lo=0)
    memory_budget_source: Optional[str] = None
    max_attempts: Optional[Tuple[MaxAttempt, ...]] = None  # on the last attempt's records
    tensor_parallel: Optional[TensorParallel] = None  # a point run on N tensor-parallel ranks: per rank figures
    rounds: Tuple[RoundSample, ...] = checked((), omit=())  # every round measured, in round order (v1: none)
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
        """Read one record; its errors name it by index until its label is known, by label after."""
        w = Where(file, f"record {index}")
        if not isinstance(d, dict):
            w.fail("", f"must be a mapping, got {show(d)}")
        key = parse_fields(cls, w, d, _KEY_FIELDS)
        w = Where(file, f"record '{key['phase']} {PointSpec(key['variant'], key['batch_size'], key['seq_len']).label}'")
        return parse(cls, w, "", d, known=key)

    def validate(self, w: Where, name: str) -> None:
        if self.ok and self.tokens_per_s is not None and self.tokens_per_s <= 0:
            w.fail("tokens_per_s", f"must be > 0 in an ok record, got {self.tokens_per_s!r}")
        for a, b in zip(self.rounds, self.rounds[1:]):
            if b.round <= a.round:
                w.fail("rounds", f"must be in increasing round order (round {b.round} after round {a.round})")


# ---------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class Overhead(Record):
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
        return cls(**named_and_extra(cls, seconds))


# env keys whose type readers rely on (the rest of env is shown as written)
_ENV_NUMBERS = ("peak_bandwidth_bytes_per_s", "peak_flops_per_s", "memory_total_bytes", "cpu_count",
                "power_limit_w", "sm_clock_max_mhz", "mem_clock_max_mhz")
_ENV_TEXTS = ("device", "device_name", "host", "cpu", "git_commit", "peak_source", "driver", "cuda",
              "sabench", "torch", "transformers", "python")


@dataclass(frozen=True)
class RunRecord(Record):
    """One results.json: the environment, the suite as run, per-point overhead, the records."""
    schema: str = SCHEMA                                  # sabench-results/2 (a v1 file is upgraded as it loads)
    created: Optional[str] = None                         # UTC, ISO 8601
    env: Dict[str, Any] = field(default_factory=dict)    # sabench.measure.env.capture_env()
    suite: Dict[str, Any] = field(default_factory=dict)  # sabench.suite.Suite.to_dict()
    overhead: Dict[str, Overhead] = field(default_factory=dict)  # point_key -> overhead
    records: Tuple[PhaseRecord, ...] = ()
    extra: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = field(default=None, compare=False, metadata={"skip": True})  # the file it was loaded from

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
        records = tuple(PhaseRecord.from_dict(r, file, i) for i, r in enumerate(recs))
        return parse(cls, w, "", d, known={"schema": SCHEMA, "env": env, "suite": suite, "records": records,
                                           "source": file})

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
        if not isinstance(v, list) or not all(isinstance(x, str) or is_int(x) for x in v):
            w.fail(f"suite.sweep.{k}", f"must be a list of integers, got {show(v)}")
    for k in ("decode_tokens", "warmup", "repeats", "prefill_chunk", "rounds", "threads"):
        number(w, f"suite.{k}", suite.get(k), integer=True, lo=0)
    return suite


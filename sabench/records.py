"""results.json, schema v2, as types: the one contract between the runner (writer) and every reader.

    RunRecord      schema, created, env, suite, overhead, records
      PhaseRecord  one point and phase: variant, batch_size, seq_len, phase, status, latency, ...
        Latency    median, p10, p90, p99, mean, std, min, max, samples (milliseconds)
    PointSpec      variant, batch_size, seq_len: `key` ("variant|batch|seq") and `label` ("cla:2 b=4 s=512")

`load_results(path)` reads a file (v2, or v1 upgraded on the way in), checks every field's type
and range and raises ResultsError naming the file, the record and the field; nothing that reaches
a reader can fail later on a missing key or a wrong type. `write_results(path, run)` writes one
atomically. Units are in field names where they are not obvious: `_ms`, `_bytes`, `_per_s`;
FLOPs are plain FLOPs (2 per multiply-add). Fields the types do not name are kept in `extra`
(per record, per memory reading) so a load -> write round trip loses nothing. The field-by-field
meaning is in docs (results schema) and in the comments below.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

SCHEMA = "sabench-results/2"
SCHEMA_V1 = "sabench-results/1"
PHASES = ("prefill", "decode")
STATUSES = ("ok", "oom", "error", "skipped_after_oom")
STABLE_RATIO = 1.05  # p90/p10 of a point's samples above this: flagged unstable (the worker's threshold)
MAX_REQUEST = "max"  # a sweep's `batch_size: max`

Key = Tuple[str, int, int, str]  # (variant, batch_size, seq_len, phase)


class ResultsError(ValueError):
    """A results file (or a pair of them) that cannot be used; the message is one line."""


def point_key(variant: str, batch_size, seq_len: int) -> str:
    """The one key of a point in results.json (`overhead`) and in resume bookkeeping."""
    return f"{variant}|{batch_size}|{seq_len}"


@dataclass(frozen=True)
class PointSpec:
    variant: str
    batch_size: Union[int, str]  # an int, or "max": the largest batch the memory model predicts to fit
    seq_len: int

    @property
    def key(self) -> str:
        return point_key(self.variant, self.batch_size, self.seq_len)

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


# ---------------------------------------------------------------------------- validation


class _Where:
    """Names a place in a file for error messages: '<file>: record 'decode cla:2 b=4 s=512''."""

    def __init__(self, file: str, what: str):
        self.file, self.what = file, what

    def fail(self, name: str, msg: str):
        raise ResultsError(f"{self.file}: {self.what}: {name} {msg}")


def _show(v) -> str:
    s = repr(v) if not isinstance(v, (dict, list)) else type(v).__name__ + " " + json.dumps(v)[:40]
    return s if len(s) <= 60 else s[:57] + "..."


def _number(w: _Where, name: str, v, *, integer=False, lo=None, positive=False, optional=True):
    if v is None:
        if not optional:
            w.fail(name, "is missing")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not _is_int(v)):
        w.fail(name, f"must be {'an integer' if integer else 'a number'}, got {_show(v)}")
    if not math.isfinite(v):
        w.fail(name, f"must be a finite number, got {v!r}")
    if positive and v <= 0:
        w.fail(name, f"must be > 0, got {v!r}")
    if lo is not None and v < lo:
        w.fail(name, f"must be >= {lo}, got {v!r}")
    return int(v) if integer else v


def _is_int(v) -> bool:
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _text(w: _Where, name: str, v, *, choices=None, optional=True):
    if v is None:
        if not optional:
            w.fail(name, "is missing")
        return None
    if not isinstance(v, str):
        w.fail(name, f"must be a string, got {_show(v)}")
    if choices is not None and v not in choices:
        w.fail(name, f"must be one of {', '.join(choices)}, got {v!r}")
    return v


def _mapping(w: _Where, name: str, v, optional=True) -> Optional[dict]:
    if v is None:
        if not optional:
            w.fail(name, "is missing")
        return None
    if not isinstance(v, dict):
        w.fail(name, f"must be a mapping, got {_show(v)}")
    return v


def _numbers(w: _Where, name: str, v) -> Optional[Dict[str, float]]:
    """A mapping of name -> number (memory_breakdown, memory_predicted_bytes, ...)."""
    m = _mapping(w, name, v)
    return None if m is None else {str(k): _number(w, f"{name}.{k}", x) for k, x in m.items()}


def _strings(w: _Where, name: str, v) -> Optional[Tuple[str, ...]]:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        w.fail(name, f"must be a list of strings, got {_show(v)}")
    return tuple(v)


def _dump(v):
    return v.to_dict() if hasattr(v, "to_dict") else list(v) if isinstance(v, tuple) else v


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
    def parse(cls, w: _Where, name: str, v, timed: bool) -> Optional["Latency"]:
        m = _mapping(w, name, v)
        if m is None:
            return None
        vals = {}
        for f in fields(cls):
            if f.name == "samples":
                continue
            vals[f.name] = _number(w, f"{name}.{f.name}", m.get(f.name), lo=0,
                                   positive=timed and f.name != "std")
        s = m.get("samples") or []
        if not isinstance(s, list):
            w.fail(f"{name}.samples", f"must be a list of numbers, got {_show(s)}")
        samples = tuple(_number(w, f"{name}.samples[{i}]", x, positive=timed) for i, x in enumerate(s))
        if timed and vals["median"] is None:
            w.fail(f"{name}.median", "is missing (the record's status is ok)")
        return cls(samples=samples, **vals)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"
             and getattr(self, f.name) is not None}
        d["samples"] = list(self.samples)
        return d


@dataclass(frozen=True)
class Stability:
    p90_over_p10: Optional[float] = None
    stable: Optional[bool] = None           # p90/p10 <= threshold
    threshold: Optional[float] = None
    extra_rounds: Optional[int] = None      # CUDA: up to 3 more rounds of `repeats`
    note: Optional[str] = None

    @classmethod
    def parse(cls, w: _Where, v) -> Optional["Stability"]:
        m = _mapping(w, "stability", v)
        if m is None:
            return None
        stable = m.get("stable")
        if stable is not None and not isinstance(stable, bool):
            w.fail("stability.stable", f"must be true or false, got {_show(stable)}")
        return cls(_number(w, "stability.p90_over_p10", m.get("p90_over_p10")), stable,
                   _number(w, "stability.threshold", m.get("threshold")),
                   _number(w, "stability.extra_rounds", m.get("extra_rounds"), integer=True, lo=0),
                   _text(w, "stability.note", m.get("note")))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Flops:
    """For the whole phase (prefill forward, or all decode_tokens steps), see accounting.py."""
    counted: Optional[int] = None
    analytic: Optional[int] = None
    analytic_breakdown: Optional[Dict[str, float]] = None  # projections, attention, mlp, lm_head

    @classmethod
    def parse(cls, w: _Where, v) -> Optional["Flops"]:
        m = _mapping(w, "flops", v)
        if m is None:
            return None
        return cls(_number(w, "flops.counted", m.get("counted"), lo=0),
                   _number(w, "flops.analytic", m.get("analytic"), lo=0),
                   _numbers(w, "flops.analytic_breakdown", m.get("analytic_breakdown")))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


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
    def parse(cls, w: _Where, v) -> Optional["Memory"]:
        m = _mapping(w, "memory_bytes", v)
        if m is None:
            return None
        names = [f.name for f in fields(cls) if f.name != "extra"]
        vals = {n: _number(w, f"memory_bytes.{n}", m.get(n), lo=None if n == "phase_rise" else 0)
                for n in names}
        return cls(extra={k: x for k, x in m.items() if k not in names}, **vals)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name != "extra" and getattr(self, f.name) is not None}
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
    status: str                                  # ok | oom | error | skipped_after_oom
    error: Optional[str] = None                  # only when status != ok
    warmup: Optional[int] = None
    repeats: Optional[int] = None
    execution: Optional[str] = None              # eager | compiled (what ran)
    params: Optional[int] = None
    kv_cache_bytes: Optional[int] = None         # analytic bytes of the preallocated cache
    memory_predicted_bytes: Optional[Dict[str, float]] = None  # memory_model.predict: weights, kv_cache,
    #                                              activations, context, total, activations_live, needed
    flops: Optional[Flops] = None
    bytes_moved: Optional[int] = None            # analytic bytes read + written by the phase (roofline)
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
    floor_ms: Optional[float] = None             # roofline floor of one sample
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

    @classmethod
    def from_dict(cls, d, file: str = "results.json", index: int = 0) -> "PhaseRecord":
        w = _Where(file, f"record {index}")
        if not isinstance(d, dict):
            w.fail("", f"must be a mapping, got {_show(d)}")
        variant = _text(w, "variant", d.get("variant"), optional=False)
        if not variant:
            w.fail("variant", "must not be empty")
        batch = _number(w, "batch_size", d.get("batch_size"), integer=True, positive=True, optional=False)
        seq = _number(w, "seq_len", d.get("seq_len"), integer=True, positive=True, optional=False)
        phase = _text(w, "phase", d.get("phase"), choices=PHASES, optional=False)
        w = _Where(file, f"record '{phase} {PointSpec(variant, batch, seq).label}'")
        status = _text(w, "status", d.get("status"), choices=STATUSES, optional=False)
        ok = status == "ok"
        vals: Dict[str, Any] = {}
        for name, (kind, kw) in _SCALARS.items():
            v = d.get(name)
            vals[name] = (_text(w, name, v, **kw) if kind == _STR
                          else _number(w, name, v, integer=kind == _INT, **kw))
        if ok and vals["tokens_per_s"] is not None and vals["tokens_per_s"] <= 0:
            w.fail("tokens_per_s", f"must be > 0 in an ok record, got {vals['tokens_per_s']!r}")
        lat = Latency.parse(w, "latency_ms", d.get("latency_ms"), timed=ok)
        if ok and lat is None:
            w.fail("latency_ms", "is missing (the record's status is ok)")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            variant=variant, batch_size=batch, seq_len=seq, phase=phase, status=status,
            error=_text(w, "error", d.get("error")),
            latency_ms=lat,
            latency_eager_ms=Latency.parse(w, "latency_eager_ms", d.get("latency_eager_ms"), timed=ok),
            flops=Flops.parse(w, d.get("flops")),
            stability=Stability.parse(w, d.get("stability")),
            memory_bytes=Memory.parse(w, d.get("memory_bytes")),
            memory_predicted_bytes=_numbers(w, "memory_predicted_bytes", d.get("memory_predicted_bytes")),
            memory_breakdown=_numbers(w, "memory_breakdown", d.get("memory_breakdown")),
            memory_notes=_strings(w, "memory_notes", d.get("memory_notes")),
            nvml=_mapping(w, "nvml", d.get("nvml")),
            max_attempts=_attempts(w, d.get("max_attempts")),
            extra={k: v for k, v in d.items() if k not in known},
            **vals)

    def to_dict(self) -> dict:
        energy = self.energy_note is not None or self.energy_scope is not None
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra":
                continue
            if v is not None or (energy and f.name in _ENERGY_NULLS):
                out[f.name] = [_dump(a) for a in v] if f.name == "max_attempts" else _dump(v)
        out.update(self.extra)
        return out


def _attempts(w: _Where, v) -> Optional[Tuple[MaxAttempt, ...]]:
    if v is None:
        return None
    if not isinstance(v, list):
        w.fail("max_attempts", f"must be a list, got {_show(v)}")
    out = []
    for i, a in enumerate(v):
        m = _mapping(w, f"max_attempts[{i}]", a, optional=False)
        out.append(MaxAttempt(_number(w, f"max_attempts[{i}].batch_size", m.get("batch_size"), integer=True,
                                      positive=True, optional=False),
                              _text(w, f"max_attempts[{i}].status", m.get("status"), optional=False)))
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
    def parse(cls, w: _Where, key: str, v) -> "Overhead":
        m = _mapping(w, f"overhead[{key!r}]", v, optional=False)
        names = [f.name for f in fields(cls) if f.name != "extra"]
        vals = {n: _number(w, f"overhead[{key!r}].{n}", m.get(n)) for n in names}
        return cls(extra={k: x for k, x in m.items() if k not in names}, **vals)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name != "extra" and getattr(self, f.name) is not None}
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
        w = _Where(file, "top level")
        if not isinstance(d, dict):
            raise ResultsError(f"{file} is not a sabench results file (top level is not an object)")
        schema = d.get("schema")
        if schema == SCHEMA_V1:
            from sabench.records_v1 import upgrade_v1
            d = upgrade_v1(d)
        elif schema != SCHEMA:
            raise ResultsError(f"{file} has schema {schema!r}, expected {SCHEMA!r} (or {SCHEMA_V1!r})")
        recs = d.get("records")
        if not isinstance(recs, list):
            w.fail("records", f"must be a list of objects, got {_show(recs)}")
        env = _mapping(w, "env", d.get("env")) or {}
        for k in _ENV_NUMBERS:
            _number(w, f"env.{k}", env.get(k), lo=0)
        for k in _ENV_TEXTS:
            if env.get(k) is not None and not isinstance(env.get(k), str):
                w.fail(f"env.{k}", f"must be a string, got {_show(env.get(k))}")
        suite = _mapping(w, "suite", d.get("suite")) or {}
        ovh = _mapping(w, "overhead", d.get("overhead")) or {}
        known = ("schema", "created", "env", "suite", "overhead", "records")
        return cls(env=env, suite=suite,
                   records=tuple(PhaseRecord.from_dict(r, file, i) for i, r in enumerate(recs)),
                   overhead={str(k): Overhead.parse(w, k, v) for k, v in ovh.items()},
                   created=_text(w, "created", d.get("created")), schema=SCHEMA,
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


# ---------------------------------------------------------------------------- files


def results_path(path_or_dir) -> Path:
    """RUN_DIR -> RUN_DIR/results.json; a file path is returned as is."""
    p = Path(path_or_dir)
    return p / "results.json" if p.is_dir() else p


def load_results(path_or_dir) -> RunRecord:
    """Read, validate and (for v1 files) upgrade a results.json, or the one in a run directory."""
    p = results_path(path_or_dir)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if Path(path_or_dir).is_dir():
            raise ResultsError(f"no results.json in {path_or_dir}") from None
        raise ResultsError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read {p}: {e.__class__.__name__}: {e}".splitlines()[0]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ResultsError(f"{p} is nested too deeply to be a results file") from None
    return RunRecord.from_dict(data, str(p))


def write_results(path, run: RunRecord) -> Path:
    """Write `run` as results.json (schema v2) atomically (temp file, fsync, rename)."""
    from sabench.io import write_atomic

    return write_atomic(path, json.dumps(run.to_dict(), indent=1))

"""Declarative benchmark suites: a YAML file says what to measure, this module checks it.

A suite is validated completely before anything runs: every variant is parsed for
the model's layer count and every sweep point is checked against the model's
positions, so a typo costs a second, not a half-finished GPU run. Errors are one
line, ``FILE: key.path: what was wrong, what is allowed``, so the CLI can print
them as they are.

Suite files are data, never code: they are read with ``yaml.safe_load``, and any
tag that safe loading cannot construct (``!!python/object/...``, custom ``!tags``)
is rejected with its key path before loading. Schema::

    name: smoke                 # required; letters, digits, - and _
    description: ...            # optional string
    model: tiny                 # required; preset, model directory or config.json path
                                # (relative paths: the suite file's directory first, then cwd)
    dtype: float32              # optional, default bfloat16 (fp32/bf16/fp16 accepted)
    device: auto                # optional, default auto; auto | cpu | cuda | cuda:N
    variants: [baseline, "cla:2", "sa:2-3"]
    sweep:
      batch_size: [1, 4]        # positive ints, no duplicates (a single int is accepted); `max`:
                                # the largest batch that fits for each variant and seq_len (predicted
                                # by memory_model, confirmed by running it, stepping down on OOM)
      seq_len: [32, 128]        # prompt lengths, same rules
    decode_tokens: 16           # optional, default 32; 1..2**20
    warmup: 2                   # optional, default 2; 0..1000
    repeats: 5                  # optional, default 5; 1..10000 (timed calls per round)
    rounds: 3                   # optional, default 3 (DEFAULT_ROUNDS); 1..100: passes over every point,
                                # each in a fresh shuffled order of (batch, seq) cells, a cell's variants
                                # back to back; each (point, round) its own process, so a run takes about
                                # `rounds` times one round's time (`sabench run --rounds` overrides). Fewer
                                # than 3 rounds give estimates, never findings or gate verdicts
    threads: null               # optional; torch intra-op threads in every point process (`sabench run
                                # --threads` overrides); null: 1 on CPU (default_threads), torch's own on CUDA
    prefill_chunk: null         # optional; null or >= 1 (chunked prefill query block)
    memory: null                # optional; memory `max` fits in (80GiB, 16GB, bytes); default: the
                                # CUDA device's total memory, on CPU the available RAM
    execution: auto             # optional, default auto; eager | compiled | auto
                                # (auto: compiled on CUDA, eager on CPU; `sabench run --execution` overrides)
    weights: random             # optional, default random; random | checkpoint (sabench/loading.py)
    quality: null               # optional, with weights: checkpoint: {text | token_ids, seq_len,
                                # windows, stride}: a perplexity column beside the timings
    parallel:                   # optional; default one device
      tensor: 8                 # tensor-parallel ranks (sabench.parallel: heads, KV heads and MLP width
                                # must divide by it)
      link_bandwidth: 450GB/s   # optional; the GPUs' link (per direction, per GPU) for the all-reduce
                                # floor; default: NVLink 4's datasheet figure, labelled as such
    allow_long_context: false   # optional; true lets seq_len + decode_tokens exceed the model's positions
                                # (the model then runs with max_position_embeddings raised to fit)
    serving: null               # optional; a serving scenario for `sabench serve` (arrivals, lengths,
                                # slots at a cache budget, latency targets: sabench/serving/spec.py);
                                # with it, `sweep` may be left out
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sabench.devices import DEVICE_PATTERN, EXECUTION_CHOICES
from sabench.dtypes import dtype_name
from sabench.paths import suites_dir
from sabench.plan import PlanError, plan_for
from sabench.presets import PRESETS, ModelConfig, ModelSourceError, resolve_config
from sabench.records import PointSpec
from sabench.serving.spec import ServingSpec, parse_serving
from sabench.suite_fields import (MAX_DECODE_TOKENS, MAX_REPEATS, MAX_SIZE, MAX_WARMUP, REQUIRED, SuiteError,
                                  batch_list, check_keys, int_field, int_list, parsed, read_yaml,
                                  string_field)
from sabench.values import is_int, show


DEFAULTS = {
    "description": "",
    "dtype": "bfloat16",
    "device": "auto",
    "decode_tokens": 32,
    "warmup": 2,
    "repeats": 5,
    "prefill_chunk": None,
    "memory": None,
    "execution": "auto",
    "parallel": None,
    "allow_long_context": False,
    "rounds": 3,  # DEFAULT_ROUNDS
    "threads": None,
}
# Three rounds is the fewest that give an interval across processes (a paired t with 2 degrees of
# freedom) and let `check` judge a point (stats.MIN_ROUNDS); it triples a one-round run's time.
DEFAULT_ROUNDS = DEFAULTS["rounds"]
MAX_ROUNDS, MAX_THREADS = 100, 4096
ALLOWED_KEYS = ("name", "description", "model", "dtype", "device", "variants", "sweep",
                "decode_tokens", "warmup", "repeats", "prefill_chunk", "memory", "execution",
                "allow_long_context", "parallel", "weights", "quality", "rounds", "threads", "serving")
PARALLEL_KEYS = ("tensor", "link_bandwidth")
SWEEP_KEYS = ("batch_size", "seq_len")


_SLUG = re.compile(r"^[A-Za-z0-9_-]+$")
_DEVICE = DEVICE_PATTERN


@dataclass(frozen=True)
class Suite:
    """A validated suite: every field canonical, every point known to fit the model."""

    name: str
    description: str
    model: str
    model_config: ModelConfig
    dtype: str
    device: str
    variants: tuple
    batch_sizes: tuple
    seq_lens: tuple
    decode_tokens: int
    warmup: int
    repeats: int
    prefill_chunk: Optional[int]
    path: Optional[str] = None
    memory: Optional[int] = None  # bytes `max` fits in; None: the device's (CUDA) or available RAM (CPU)
    execution: str = "auto"  # as written; devices.resolve_execution() says what runs on a device
    tensor_parallel: int = 1  # ranks per point (parallel.tensor)
    link_bandwidth: Optional[float] = None  # bytes/s (parallel.link_bandwidth); None: datasheet default
    allow_long_context: bool = False  # seq_len + decode_tokens may exceed the model's positions
    weights: str = "random"  # random | checkpoint (sabench/loading.py)
    quality: Optional[dict] = dataclasses.field(default=None, hash=False)  # perplexity windows, or None
    rounds: int = DEFAULT_ROUNDS  # passes over every point (sabench.harness.rounds)
    threads: Optional[int] = None  # torch intra-op threads per point process; None: devices.resolve_threads(device)
    serving: Optional[ServingSpec] = dataclasses.field(default=None, hash=False)  # `sabench serve`'s scenario
    # variant -> its SharingPlan for this model, parsed once when the suite is (None: parsed here)
    plans: Optional[dict] = dataclasses.field(default=None, hash=False, compare=False, repr=False)

    def __post_init__(self):
        if self.plans is None:
            object.__setattr__(self, "plans", {v: plan_for(v, self.model_config) for v in self.variants})
        elif tuple(self.plans) != tuple(self.variants):  # a copy that changed the variants kept the old plans
            raise ValueError(f"suite plans {list(self.plans)} are not its variants {list(self.variants)}")

    def to_dict(self) -> dict:
        """The suite as run, JSON-serialisable; the file's keys plus the resolved model."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "model_config": self.model_config.to_dict(),
            "dtype": self.dtype,
            "device": self.device,
            "variants": list(self.variants),
            "sweep": {"batch_size": list(self.batch_sizes), "seq_len": list(self.seq_lens)},
            "decode_tokens": self.decode_tokens,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "prefill_chunk": self.prefill_chunk,
            "memory": self.memory,
            "execution": self.execution,
            "weights": self.weights,
            "quality": self.quality,
            "rounds": self.rounds,
            "threads": self.threads,
            "path": self.path,
            # only for a multi-GPU point, so single-device results keep the form they always had
            **({"parallel": {"tensor": self.tensor_parallel, "link_bandwidth": self.link_bandwidth}}
               if self.tensor_parallel > 1 else {}),
        } | ({"allow_long_context": True} if self.allow_long_context else {}) | (
            {"serving": self.serving.to_dict()} if self.serving is not None else {})

    def points(self) -> list[PointSpec]:
        """Every point, per variant with batch size then seq_len ascending.

        Ascending sizes within a variant let the runner skip the rest of a
        variant's larger points once one runs out of memory. A `max` entry comes last, as
        PointSpec(variant, "max", seq_len): the runner resolves it per variant and seq_len.
        """
        return [PointSpec(v, b, t) for v in self.variants for b in self.batch_sizes for t in self.seq_lens]

    def with_variants(self, variants) -> "Suite":
        """A copy running only `variants` (e.g. from ``--variant``), in the order given.

        Variants the suite does not list are allowed: they are checked against the
        suite's model like the file's own.
        """
        source = self.path or self.name
        if isinstance(variants, str) or not list(variants):
            raise SuiteError(source, "--variant", "expected at least one variant string")
        plans = {}
        for text in variants:
            try:  # a variant the suite lists, as it spells it, is parsed already
                plan = self.plans.get(text) or plan_for(text, self.model_config)
            except PlanError as e:
                raise SuiteError(source, "--variant", str(e)) from None
            if plan.variant in plans:
                raise SuiteError(source, "--variant", f"{text!r} is given twice (as {plan.variant!r})")
            plans[plan.variant] = plan
        return dataclasses.replace(self, variants=tuple(plans), plans=plans)


def find_suite(name_or_path) -> Path:
    """A suite file path, or a bare name like ``smoke`` -> ``<repo>/suites/smoke.yaml``."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.is_file():
        return p
    looks_like_path = p.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_path:
        raise SuiteError(text, None, "no such suite file")
    for ext in (".yaml", ".yml"):
        candidate = suites_dir() / f"{text}{ext}"
        if candidate.is_file():
            return candidate
    names = ", ".join(available_suites()) or "none"
    raise SuiteError(text, None, f"unknown suite; available suites: {names} (or give a path to a .yaml file)")


def available_suites() -> list[str]:
    """Names of the suites shipped in <repo>/suites."""
    d = suites_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_suite(path) -> Suite:
    """Read, parse and fully validate a suite file; SuiteError on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SuiteError(source, None, f"cannot read suite file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SuiteError(source, None, f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return parse_suite(read_yaml(text, source), source)


def _resolve_model(model: str, path: Optional[str]) -> ModelConfig:
    """Presets first, then a relative path against the suite's directory, then cwd.

    Resolving against the suite's directory keeps a suite that ships next to its
    config.json runnable from anywhere.
    """
    if model.lower() not in PRESETS and path is not None:
        p = Path(model).expanduser()
        if not p.is_absolute():
            beside = Path(path).parent / p
            if beside.exists():
                return resolve_config(beside)
    return resolve_config(model)


def parse_suite(data, path: Optional[str] = None) -> Suite:
    """Validate suite data (as read from YAML) into a Suite; SuiteError names the first problem.

    `path` labels the messages and anchors relative model paths; None means the
    data came from elsewhere (messages say ``<suite>``, model paths resolve from cwd).
    """
    source = path if path is not None else "<suite>"
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise SuiteError(source, None, f"top level is {what}; expected a mapping with keys "
                                       f"{', '.join(REQUIRED)}")
    serving = data.get("serving")
    # a serving suite needs no sweep (`sabench serve` runs its scenario, not points)
    check_keys(data, ALLOWED_KEYS, [k for k in REQUIRED if serving is None or k != "sweep"], "", source)
    d = {**DEFAULTS, **data}

    name = d["name"]
    if not isinstance(name, str) or not _SLUG.match(name):
        raise SuiteError(source, "name", f"expected a slug of letters, digits, - and _, got {show(name)}")
    description = d["description"]
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise SuiteError(source, "description", f"expected a string, got {show(description)}")

    try:
        dtype = dtype_name(d["dtype"])
    except ValueError as e:
        raise SuiteError(source, "dtype", str(e)) from None
    device = d["device"].strip().lower() if isinstance(d["device"], str) else d["device"]
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise SuiteError(source, "device", f"expected auto, cpu, cuda or cuda:N, got {show(d['device'])}")

    decode_tokens = int_field(d["decode_tokens"], "decode_tokens", 1, source, MAX_DECODE_TOKENS)
    warmup = int_field(d["warmup"], "warmup", 0, source, MAX_WARMUP)
    repeats = int_field(d["repeats"], "repeats", 1, source, MAX_REPEATS)
    rounds = int_field(d["rounds"], "rounds", 1, source, MAX_ROUNDS)
    threads = None if d["threads"] is None else int_field(d["threads"], "threads", 1, source, MAX_THREADS)
    prefill_chunk = d["prefill_chunk"]
    if prefill_chunk is not None and (not is_int(prefill_chunk) or not 1 <= prefill_chunk <= MAX_SIZE):
        raise SuiteError(source, "prefill_chunk",
                         f"expected null or an integer in 1..{MAX_SIZE}, got {show(prefill_chunk)}")
    allow_long = d["allow_long_context"]
    if not isinstance(allow_long, bool):
        raise SuiteError(source, "allow_long_context", f"expected true or false, got {show(allow_long)}")

    execution = d["execution"]
    if execution not in EXECUTION_CHOICES:
        raise SuiteError(source, "execution", f"expected one of {', '.join(EXECUTION_CHOICES)}, got {show(execution)}")

    if "sweep" in d:
        sweep = d["sweep"]
        if not isinstance(sweep, dict):
            raise SuiteError(source, "sweep", f"expected a mapping with keys {', '.join(SWEEP_KEYS)}, got {show(sweep)}")
        check_keys(sweep, SWEEP_KEYS, SWEEP_KEYS, "sweep", source)
        batch_sizes = batch_list(sweep["batch_size"], source)
        seq_lens, seq_paths = int_list(sweep["seq_len"], "sweep.seq_len", source)
    else:
        batch_sizes, seq_lens, seq_paths = (), (), []

    from sabench.units import parse_size

    memory = parsed(parse_size, d["memory"], "memory", source)

    model = string_field(d["model"], "model", "a preset name, model directory or config.json path", source)
    try:
        cfg = _resolve_model(model, path)
    except ModelSourceError as e:
        raise SuiteError(source, "model", str(e)) from None

    plans = _parse_variants(d["variants"], cfg, source)
    variants = tuple(plans)
    from sabench.loading import parse_suite_keys

    weights = parse_suite_keys(data, cfg, model, path, source)
    tensor_parallel, link_bandwidth = _parse_parallel(d["parallel"], cfg, source)

    limit = cfg.max_position_embeddings
    needed = max(seq_lens, default=0) + decode_tokens
    if allow_long and needed > limit:
        # Asked for explicitly: the model runs past its trained positions (RoPE extends; quality may not).
        cfg = dataclasses.replace(cfg, max_position_embeddings=needed)
    for seq, p in zip(seq_lens, seq_paths):
        if seq + decode_tokens > cfg.max_position_embeddings:
            raise SuiteError(
                source, p,
                f"{seq} + decode_tokens {decode_tokens} exceeds the model's {limit} positions; "
                f"seq_len may be at most {limit - decode_tokens} (or set allow_long_context: true to run "
                "past the trained positions)",
            )

    if serving is not None:
        serving = parse_serving(serving, source, cfg, plans, dtype)

    return Suite(
        name=name, description=description, model=model, model_config=cfg, dtype=dtype,
        device=device, variants=variants, batch_sizes=batch_sizes, seq_lens=seq_lens,
        decode_tokens=decode_tokens, warmup=warmup, repeats=repeats, prefill_chunk=prefill_chunk,
        path=path, memory=memory, execution=execution, tensor_parallel=tensor_parallel,
        link_bandwidth=link_bandwidth, allow_long_context=allow_long, rounds=rounds, threads=threads,
        serving=serving, plans=plans, **weights,
    )


def _parse_parallel(value, cfg: ModelConfig, source: str) -> tuple:
    """parallel: {tensor: N, link_bandwidth: ...} -> (N, bytes/s or None); N checked against the model."""
    from sabench.tp_shapes import check_tensor_parallel
    from sabench.units import parse_bandwidth

    if value is None:
        return 1, None
    if not isinstance(value, dict):
        raise SuiteError(source, "parallel", f"expected a mapping like {{tensor: 8}}, got {show(value)}")
    check_keys(value, PARALLEL_KEYS, ("tensor",), "parallel", source)
    tensor = int_field(value["tensor"], "parallel.tensor", 1, source)
    try:
        check_tensor_parallel(cfg, tensor)
    except PlanError as e:
        raise SuiteError(source, "parallel.tensor", str(e)) from None
    link = parsed(parse_bandwidth, value.get("link_bandwidth"), "parallel.link_bandwidth", source)
    return tensor, link


def _parse_variants(value, cfg: ModelConfig, source: str) -> dict:
    """{canonical variant: its SharingPlan}, each parsed once for this model, no two the same."""
    if not isinstance(value, list) or not value:
        raise SuiteError(source, "variants", f"expected a non-empty list of variant strings, got {show(value)}")
    canon: dict[str, str] = {}
    plans = {}
    for i, text in enumerate(value):
        key = f"variants[{i}]"
        if not isinstance(text, str):
            # `- sa: 2-3` (a space after the colon) reads as a mapping in YAML.
            raise SuiteError(source, key, f"expected a variant string like baseline, \"cla:2\" or \"sa:2-3\" "
                                          f"(quoted, no space after ':'), got {show(text)}")
        try:
            plan = plan_for(text, cfg)
        except PlanError as e:
            raise SuiteError(source, key, str(e)) from None
        v = plan.variant
        if v in canon:
            raise SuiteError(source, key, f"{text!r} duplicates {canon[v]} (both are {v!r}); list each variant once")
        canon[v], plans[v] = key, plan
    return plans

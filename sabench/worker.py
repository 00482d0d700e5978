"""Measure one benchmark point (variant, batch, seq_len) in its own process.

The runner starts `python -m sabench.worker SPEC RESULT` for every point so that
an out-of-memory error, a crash or a leaked allocation cannot touch the next
point's numbers. The worker writes RESULT (JSON: the point's two records and its
overhead) and exits 0; anything else is the runner's to classify.

Phases:
- prefill: the prompt forward that fills a fresh cache (time to first token),
  `warmup` untimed then `repeats` timed calls;
- decode: `decode_tokens` single-token steps from a cache filled to seq_len;
  `warmup` untimed sequences then `repeats` timed ones, every step a sample.

Execution (spec["execution"], every record says which ran):
- eager: plain PyTorch. On CUDA the decode step is also captured in a CUDA graph
  and replayed: graph mode is the headline, the eager step's timing is kept too.
- compiled: torch.compile (Inductor) of the decoder layers and the head, regionally
  (model.set_execution: one graph per layer kind, not per model). The first call of
  each phase compiles (or loads from TORCHINDUCTOR_CACHE_DIR); it is timed apart as
  overhead `compile_s`, never as a sample, and happens before the phase's memory window opens. On CUDA the decode
  step and the launch-bound prefills (<= PREFILL_GRAPH_MAX_TOKENS tokens) are then
  captured in CUDA graphs and replayed; a prefill whose capture fails for another
  reason than memory is timed by direct calls and says so (`prefill_mode`, a note).
  The eager decode step is not timed.

Stability: a timed set whose p90/p10 exceeds STABLE_RATIO gets up to
EXTRA_ROUNDS more rounds of samples; the record's `stability` says how it ended.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback

import torch

from sabench import accounting, flops, memory_model
from sabench.dtypes import parse_dtype
from sabench.measure import (AllocatorTracker, CudaGraphStep, current_rss_bytes, is_oom_error,
                             peak_rss_bytes, reset_peak_rss, summarize, sync, time_fn, time_steps)
from sabench.measure.energy import EnergyMeter
from sabench.measure.memory import footprint
from sabench.measure.nvml import parse_pci_bus_id
from sabench.model import load_model
from sabench.presets import ModelConfig
from sabench.runner import FAULT_ENV
from sabench.io import write_atomic
from sabench.records import point_key

STABLE_RATIO = 1.05  # p90/p10 of a point's samples above this: more rounds, then flagged
EXTRA_ROUNDS = 3  # at most this many more rounds of `repeats` when a phase is not stable
# Compiled prefills of at most this many tokens (batch x seq_len) are replayed from a CUDA graph:
# they are the launch-bound ones. Larger ones run for tens of ms or more, hide their launches, and
# a graph's private pool would hold a second copy of their activations during the measurement.
PREFILL_GRAPH_MAX_TOKENS = 8192


class _Memory:
    """One phase's memory and energy: NVML sampler window, allocator peaks, RSS, energy counter.

    `fields()` gives the record's memory_bytes (device_peak, phase_rise, the allocator's peaks,
    peak_rss), memory_source, memory_breakdown (weights + kv_cache + activations + context =
    device_peak; see measure.memory.footprint) and, on CUDA, the energy of the timed calls
    (`energy` is started and stopped around them by the caller, inside the with block).
    """

    def __init__(self, device: torch.device, sampler, *, weights: int, kv_cache: int,
                 pre_cuda_used=None, nvml_reason=None):
        self.device, self.sampler = device, sampler
        self.weights, self.kv_cache, self.pre_cuda_used = weights, kv_cache, pre_cuda_used
        self.alloc = AllocatorTracker(device)
        self.energy = EnergyMeter(sampler, device, nvml_reason)
        self.window: dict = {}

    def energy_from_call(self, k: int):
        """A time_fn `setup` that starts the energy meter right before call k (the first timed one)."""
        calls = itertools.count()

        def setup():
            if next(calls) == k:
                self.energy.start()
        return setup

    def __enter__(self):
        self.rss_reset = reset_peak_rss()
        self.rss_start = current_rss_bytes()
        self.alloc.start()
        if self.sampler is not None:
            self.sampler.read_idle()
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        self.result, notes = {}, []
        r = self.window = self.sampler.stop() if self.sampler is not None else {}
        for k, v in self.alloc.stop().items():
            if v is not None:
                self.result[k] = int(v)
        self.result["peak_rss"] = peak_rss_bytes()
        cpu = self.device.type != "cuda"
        fp = footprint(weights=self.weights, kv_cache=self.kv_cache,
                       process_peak=r.get("peak_process_bytes"), device_peak_used=r.get("peak_used_bytes"),
                       pre_cuda_used=self.pre_cuda_used, allocated_peak=self.result.get("peak_allocated"),
                       rss_peak=self.result["peak_rss"] if cpu else None,
                       rss_start=self.rss_start if cpu and self.rss_reset else None)
        if fp["device_peak"] is not None:
            self.result["device_peak"] = fp["device_peak"]
        if r.get("peak_minus_idle_bytes") is not None:  # the rise over the level just before the phase
            self.result["phase_rise"] = int(r["peak_minus_idle_bytes"])
        elif cpu and self.rss_reset and self.rss_start is not None:
            self.result["phase_rise"] = max(0, self.result["peak_rss"] - self.rss_start)
        if cpu:
            notes.append("CPU run: device_peak is the process's peak RSS; its context part is the "
                         "interpreter, torch and libraries; activations are the RSS rise over the phase")
            if not self.rss_reset:
                notes.append("the kernel refused to reset the peak-RSS mark: peak_rss is the process's "
                             "lifetime peak")
        self.source, self.breakdown, self.notes = fp["source"], fp["breakdown"], notes + fp["notes"]
        return False

    def fields(self, tokens: int, scope: str) -> dict:
        out = {"memory_bytes": self.result}
        if self.source:
            out.update(memory_source=self.source, memory_breakdown=self.breakdown)
        if self.notes:
            out["memory_notes"] = self.notes
        if self.window:
            out["nvml"] = {k: self.window.get(k) for k in (
                "idle_used_bytes", "peak_used_bytes", "n_samples", "achieved_hz", "device_mapping", "notes")}
            out["nvml"]["pre_cuda_used_bytes"] = self.pre_cuda_used
        return out | self.energy.result(self.window, tokens, scope)


def _pre_cuda_levels(device: torch.device, notes: list):
    """Used memory of every GPU, read before this process touches CUDA ({} off CUDA or without NVML)."""
    if device.type != "cuda":
        return {}
    from sabench.measure.nvml import used_bytes_by_bus

    try:
        return used_bytes_by_bus()
    except Exception as e:
        notes.append(f"NVML level before CUDA initialisation unavailable: {e}")
        return {}


def _weights_bytes(model) -> int:
    """Bytes of the model's parameters (`params` of the record, a tied weight counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _open_sampler(device: torch.device, notes: list):
    if device.type != "cuda":
        return None
    from sabench.measure.nvml import NvmlSampler

    avail = NvmlSampler.available()
    if not avail:
        notes.append(f"NVML unavailable: {getattr(avail, 'reason', avail)}")
        return None
    try:
        return NvmlSampler(device.index or 0)
    except Exception as e:  # NVML trouble must not cost the timing
        notes.append(f"NVML sampler failed to start: {e}")
        return None


def _base_record(spec, phase: str) -> dict:
    return {"variant": spec["variant"], "batch_size": spec["batch_size"], "seq_len": spec["seq_len"],
            "phase": phase, "warmup": spec["warmup"], "repeats": spec["repeats"],
            "execution": spec.get("execution") or "eager"}


def _stability(samples: list) -> dict:
    lat = summarize(samples)
    ratio = lat["p90"] / lat["p10"] if lat["p10"] > 0 else float("inf")
    return {"p90_over_p10": ratio, "stable": ratio <= STABLE_RATIO, "threshold": STABLE_RATIO}


def _timed_rounds(take, device: torch.device) -> tuple[list, dict]:
    """Samples from `take()` (one round), plus on CUDA up to EXTRA_ROUNDS more while
    p90/p10 > STABLE_RATIO (a CPU shared with other work rarely settles: no extra rounds).

    Returns (all samples, stability). A set still unstable after the extra rounds is kept as
    measured and flagged, with a note, rather than cherry-picked."""
    samples = take()
    stab = _stability(samples)
    rounds, limit = 0, EXTRA_ROUNDS if device.type == "cuda" else 0
    while not stab["stable"] and rounds < limit:
        samples = samples + take()
        stab = _stability(samples)
        rounds += 1
    stab["extra_rounds"] = rounds
    if not stab["stable"]:
        stab["note"] = (f"p90/p10 {stab['p90_over_p10']:.3f} > {STABLE_RATIO} after {rounds} extra rounds: "
                        "the samples are spread (launch-bound or a busy machine); compare with care")
    return samples, stab


def _roofline(rec: dict, flops_per_sample: float, bytes_per_sample: float, peaks: dict, metric: str):
    bw, pf = peaks.get("peak_bandwidth_bytes_per_s"), peaks.get("peak_flops_per_s")
    med_s = rec["latency_ms"]["median"] / 1e3
    floors = []
    if pf:
        floors.append(flops_per_sample / pf)
        rec["mfu"] = flops_per_sample / (med_s * pf)
    if bw:
        floors.append(bytes_per_sample / bw)
        rec["mbu"] = bytes_per_sample / (med_s * bw)
    if floors:
        rec["floor_ms"] = max(floors) * 1e3
    rec["roofline_metric"] = metric  # which of mfu/mbu is the headline for this phase


def _maybe_inject_oom(spec, where: str):
    """Fault injection for tests of OOM handling on machines that cannot run out of memory on cue."""
    keys = [k.strip() for k in (spec.get("fault_oom") or "").split(",") if k.strip()]
    if point_key(spec["variant"], spec["batch_size"], spec["seq_len"]) in keys:
        raise torch.OutOfMemoryError(f"out of memory (injected by {FAULT_ENV} at {where})")


def measure(spec: dict) -> dict:
    t_start = time.time()
    cfg = ModelConfig(**spec["model_config"])
    device = torch.device(spec["device"])
    dtype = parse_dtype(spec["dtype"])
    v, b, t, n = spec["variant"], spec["batch_size"], spec["seq_len"], spec["decode_tokens"]
    chunk = spec.get("prefill_chunk")
    peaks = spec.get("peaks") or {}
    notes: list = []
    pre_cuda = _pre_cuda_levels(device, notes)  # before anything in this process touches CUDA
    overhead = {"process_start_s": max(0.0, t_start - spec["t_spawn"]) if spec.get("t_spawn") else None}

    t0 = time.perf_counter()
    counted, overhead["flops_from_cache"] = flops.point_counts(cfg, v, b, t, n, dtype, chunk,
                                                                cache_dir=spec.get("count_cache_dir"))
    overhead["count_flops_s"] = time.perf_counter() - t0
    pre_an = accounting.prefill_flops(cfg, v, b, t)
    dec_an = accounting.decode_phase_flops(cfg, v, b, t, n)
    common = {"params": accounting.params(cfg, v),
              "kv_cache_bytes": accounting.kv_cache_bytes(cfg, v, b, t + n, dtype)}

    predicted = memory_model.predict(cfg, v, dtype, b, t, n, chunk, device.type)
    prefill = _base_record(spec, "prefill") | common | {
        "memory_predicted_bytes": predicted["prefill"].to_dict(),
        "flops": {"counted": counted["prefill"], "analytic": pre_an.total,
                  "analytic_breakdown": pre_an.to_dict()},
        "bytes_moved": accounting.prefill_bytes(cfg, v, b, t, dtype, chunk)}
    decode = _base_record(spec, "decode") | common | {
        "decode_tokens": n, "memory_predicted_bytes": predicted["decode"].to_dict(),
        "flops": {"counted": counted["decode_step"] * n, "analytic": dec_an.total,
                  "analytic_breakdown": dec_an.to_dict()},
        # every step reads all weights and, layer by layer, the whole static cache buffer it
        # attends over (t + n positions, masked ones too: what the static-shape kernel reads)
        "bytes_moved": accounting.decode_step_bytes(cfg, v, b, t + n, dtype) * n}

    execution = spec.get("execution") or "eager"
    if spec.get("inductor_cache_dir"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec["inductor_cache_dir"]
    t0 = time.perf_counter()
    try:  # the weights alone may not fit: both phases are then out of memory, and that is data
        _maybe_inject_oom(spec, "model build")
        model = load_model(cfg, v, dtype, device, weights="random", seed=spec.get("seed", 0))
        model.set_execution(execution)
        sync(device)
    except Exception as e:
        failure = _failure(e)
        failure["error"] = "building the model: " + failure["error"]
        prefill.update(failure)
        decode.update(failure)
        return {"records": [prefill, decode], "overhead": overhead}
    overhead["model_build_s"] = time.perf_counter() - t0
    sampler = _open_sampler(device, notes)
    no_nvml = notes[-1] if sampler is None and device.type == "cuda" and notes else None
    mem_kw = {"weights": _weights_bytes(model), "nvml_reason": no_nvml,
              "pre_cuda_used": pre_cuda.get(parse_pci_bus_id(sampler.nvml_pci_bus_id)) if sampler else None}
    gen = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=gen).to(device)

    cache = None
    try:  # ---- prefill
        _maybe_inject_oom(spec, "prefill")
        cache = model.new_cache(b, t + n)
        fn = lambda: model.prefill(ids, cache, chunk)  # noqa: E731
        if execution == "compiled":  # compiling (and autotuning) stays out of the phase's memory window
            _first_call(fn, device, overhead, "first_prefill_s")
            _release(device)
        with torch.no_grad(), _Memory(device, sampler, kv_cache=cache.nbytes, **mem_kw) as mem:
            if execution != "compiled":
                _first_call(fn, device, overhead, "first_prefill_s")
            capture = execution == "compiled" and device.type == "cuda" and b * t <= PREFILL_GRAPH_MAX_TOKENS
            fn, mode, graph = _maybe_graph(fn, capture, execution, device, notes)
            rounds = itertools.count()

            def one_round():  # energy is metered over the first round's timed calls
                first = next(rounds) == 0
                out = time_fn(fn, warmup=spec["warmup"], repeats=spec["repeats"], device=device,
                              setup=mem.energy_from_call(max(spec["warmup"], 1)) if first else None)
                if first:
                    mem.energy.stop()
                return out

            samples, stab = _timed_rounds(one_round, device)
            if graph is not None:
                graph.close()
        lat = summarize(samples)
        prefill.update(status="ok", latency_ms=lat, tokens_per_s=b * t / (lat["median"] / 1e3),
                       prefill_mode=mode, stability=stab)
        prefill.update(mem.fields(b * t * spec["repeats"], f"the first {spec['repeats']} timed prefill calls"))
        _roofline(prefill, pre_an.total, prefill["bytes_moved"], peaks, "mfu")
    except Exception as e:
        prefill.update(_failure(e))
    _release(device)

    try:  # ---- decode, from a cache at seq_len (filled above; zeros if prefill failed: same work)
        if cache is None:
            cache = model.new_cache(b, t + n)
        decode.update(_measure_decode(model, cache, spec, device, sampler, mem_kw, notes, overhead))
        lat = decode["latency_ms"]
        decode["tokens_per_s"] = b / (lat["median"] / 1e3)
        _roofline(decode, dec_an.total / n, decode["bytes_moved"] / n, peaks, "mbu")
    except Exception as e:
        decode.update(_failure(e))
    if sampler is not None:
        sampler.close()
    if execution == "compiled":  # the first calls compiled (or loaded the compiled artefacts)
        overhead["compile_s"] = sum(overhead.get(k) or 0.0 for k in ("first_prefill_s", "first_decode_s"))
    overhead["total_in_worker_s"] = time.time() - t_start
    if notes:
        prefill["notes"] = decode["notes"] = notes
    return {"records": [prefill, decode], "overhead": overhead}


def _first_call(fn, device: torch.device, overhead: dict, key: str) -> None:
    """A phase's first call: timed as overhead[key], never a sample. It compiles (compiled
    execution; Inductor may autotune, cloning the buffers a kernel mutates, such as the
    cache) or initialises lazily (eager: cuBLAS handles, allocator growth)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    sync(device)
    overhead[key] = time.perf_counter() - t0


def _maybe_graph(fn, capture: bool, execution: str, device: torch.device, notes: list):
    """`fn` captured in a CUDA graph -> (replay, "graph", graph); uncaptured, or when capture
    fails for another reason than memory: (fn, execution, None)."""
    if not capture:
        return fn, execution, None
    try:
        graph = CudaGraphStep(fn, device=device, warmup_iters=1)
    except Exception as e:
        if is_oom_error(e):
            raise
        notes.append(f"prefill not captured in a CUDA graph ({type(e).__name__}: {str(e)[:200]}); "
                     "timed by direct calls")
        _release(device)
        return fn, execution, None
    return graph.replay, "graph", graph


def _measure_decode(model, cache, spec, device, sampler, mem_kw, notes, overhead) -> dict:
    t, n = spec["seq_len"], spec["decode_tokens"]
    b = spec["batch_size"]
    compiled = (spec.get("execution") or "eager") == "compiled"
    tokens = torch.zeros(b, 1, dtype=torch.long, device=device)
    pos = torch.tensor([t], device=device)
    step = model.greedy_step_fn(cache, tokens, pos)

    def reset():  # the same n positions every sequence: identical work per repeat
        pos.fill_(t)
        tokens.fill_(1)

    def run_sequences(fn, energy=None):  # energy: metered over the timed sequences
        samples = []
        for i in range(spec["warmup"] + spec["repeats"]):
            if energy is not None and i == spec["warmup"]:
                energy.start()
            s = time_steps(lambda _i: fn(), n, device=device, setup=reset)
            if i >= spec["warmup"]:
                samples += s
        if energy is not None:
            energy.stop()
        return samples

    out = {}
    _maybe_inject_oom(spec, "decode")
    if compiled:  # as in prefill: compiling stays out of the memory window
        reset()
        _first_call(step, device, overhead, "first_decode_s")
        _release(device)
    with torch.no_grad(), _Memory(device, sampler, kv_cache=cache.nbytes, **mem_kw) as mem:
        if not compiled:
            reset()
            _first_call(step, device, overhead, "first_decode_s")  # never timed, even with warmup 0
        eager = None
        if not compiled:  # compiled: the uncompiled step is not what runs, and timing it costs the most
            eager = run_sequences(step)
        rounds = itertools.count()
        if device.type == "cuda":
            reset()
            graph = CudaGraphStep(step, device=device)
            samples, stab = _timed_rounds(
                lambda: run_sequences(graph.replay, mem.energy if next(rounds) == 0 else None), device)
            graph.close()
            mode = "graph"
        else:
            # no extra rounds off CUDA (see _timed_rounds), and no energy counter either
            samples, stab = _timed_rounds(lambda: eager if eager is not None else run_sequences(step), device)
            mode = "compiled" if compiled else "eager"
    out.update(latency_ms=summarize(samples), decode_mode=mode, stability=stab, status="ok")
    if eager is not None and device.type == "cuda":
        out["latency_eager_ms"] = summarize(eager)
    return out | mem.fields(b * n * spec["repeats"], f"the first {spec['repeats']} timed sequences of {n} "
                            f"{mode} decode steps")


def _failure(e: BaseException) -> dict:
    msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:500]
    if is_oom_error(e):
        return {"status": "oom", "error": msg}
    tb = traceback.format_exc(limit=3)
    return {"status": "error", "error": msg, "traceback": tb[-2000:]}


def _release(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _die_with_parent():
    """No orphan keeps measuring (and skewing the machine) after the runner is killed."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_main(spec: dict, result_path: str, stderr_path: str) -> None:
    """Entry point in the forked point process: stderr to a file the runner reads on failure."""
    _die_with_parent()
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    _write(measure(spec), result_path)


def _write(result: dict, path: str) -> None:
    write_atomic(path, json.dumps(result), fsync=False)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m sabench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(open(argv[0]).read())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    _write(measure(spec), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
- compiled: torch.compile (Inductor) of the prefill chunk and of the decode step
  (model.set_execution). The first call of each phase compiles (or loads from
  TORCHINDUCTOR_CACHE_DIR); it is timed apart as overhead `compile_s`, never as a
  sample, and happens before the phase's memory window opens. On CUDA the decode
  step and the launch-bound prefills (<= PREFILL_GRAPH_MAX_TOKENS tokens) are then
  captured in CUDA graphs and replayed; a prefill whose capture fails for another
  reason than memory is timed by direct calls and says so (`prefill_mode`, a note).
  The eager decode step is not timed.

Stability: a timed set whose p90/p10 exceeds STABLE_RATIO gets up to
EXTRA_ROUNDS more rounds of samples; the record's `stability` says how it ended.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch

from sabench import accounting, flops
from sabench.dtypes import parse_dtype
from sabench.measure import (AllocatorTracker, CudaGraphStep, is_oom_error, peak_rss_bytes,
                             reset_peak_rss, summarize, sync, time_fn, time_steps)
from sabench.model import load_model
from sabench.presets import ModelConfig
from sabench.runner import FAULT_ENV
from sabench.schema import point_key

STABLE_RATIO = 1.05  # p90/p10 of a point's samples above this: more rounds, then flagged
EXTRA_ROUNDS = 3  # at most this many more rounds of `repeats` when a phase is not stable
# Compiled prefills of at most this many tokens (batch x seq_len) are replayed from a CUDA graph:
# they are the launch-bound ones. Larger ones run for tens of ms or more, hide their launches, and
# a graph's private pool would hold a second copy of their activations during the measurement.
PREFILL_GRAPH_MAX_TOKENS = 8192


class _Memory:
    """The memory trackers of one phase: NVML device sampler, allocator peaks, process RSS."""

    def __init__(self, device: torch.device, sampler):
        self.device, self.sampler = device, sampler
        self.alloc = AllocatorTracker(device)

    def __enter__(self):
        reset_peak_rss()
        self.alloc.start()
        if self.sampler is not None:
            self.sampler.read_idle()
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        self.result = {}
        if self.sampler is not None:
            r = self.sampler.stop()
            self.nvml = r
            if r.get("peak_minus_idle_bytes") is not None:
                self.result["peak_nvml"] = int(r["peak_minus_idle_bytes"])
            if r.get("peak_process_bytes") is not None:
                self.result["peak_nvml_process"] = int(r["peak_process_bytes"])
            self.nvml_summary = {k: r.get(k) for k in ("idle_used_bytes", "peak_used_bytes", "n_samples",
                                                       "achieved_hz", "device_mapping", "notes")}
        for k, v in self.alloc.stop().items():
            if v is not None:
                self.result[k] = int(v)
        self.result["peak_rss"] = peak_rss_bytes()
        return False


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
    overhead = {"process_start_s": max(0.0, t_start - spec["t_spawn"]) if spec.get("t_spawn") else None}

    t0 = time.perf_counter()
    counted, overhead["flops_from_cache"] = flops.point_counts(cfg, v, b, t, n, dtype, chunk,
                                                                cache_dir=spec.get("count_cache_dir"))
    overhead["count_flops_s"] = time.perf_counter() - t0
    pre_an = accounting.prefill_flops(cfg, v, b, t)
    dec_an = accounting.decode_phase_flops(cfg, v, b, t, n)
    common = {"params": accounting.params(cfg, v),
              "kv_cache_bytes": accounting.kv_cache_bytes(cfg, v, b, t + n, dtype)}

    prefill = _base_record(spec, "prefill") | common | {
        "flops": {"counted": counted["prefill"], "analytic": pre_an.total,
                  "analytic_breakdown": pre_an.to_dict()},
        "bytes_moved": accounting.prefill_bytes(cfg, v, b, t, dtype)}
    decode = _base_record(spec, "decode") | common | {
        "decode_tokens": n,
        "flops": {"counted": counted["decode_step"] * n, "analytic": dec_an.total,
                  "analytic_breakdown": dec_an.to_dict()},
        # every step reads all weights and the whole static cache buffer (masked positions too)
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
        with torch.no_grad(), _Memory(device, sampler) as mem:
            if execution != "compiled":
                _first_call(fn, device, overhead, "first_prefill_s")
            capture = execution == "compiled" and device.type == "cuda" and b * t <= PREFILL_GRAPH_MAX_TOKENS
            fn, mode, graph = _maybe_graph(fn, capture, execution, device, notes)
            samples, stab = _timed_rounds(lambda: time_fn(fn, warmup=spec["warmup"], repeats=spec["repeats"],
                                                          device=device), device)
            if graph is not None:
                graph.close()
        lat = summarize(samples)
        prefill.update(status="ok", latency_ms=lat, tokens_per_s=b * t / (lat["median"] / 1e3),
                       memory_bytes=mem.result, prefill_mode=mode, stability=stab)
        if getattr(mem, "nvml_summary", None):
            prefill["nvml"] = mem.nvml_summary
        _roofline(prefill, pre_an.total, prefill["bytes_moved"], peaks, "mfu")
    except Exception as e:
        prefill.update(_failure(e))
    _release(device)

    try:  # ---- decode, from a cache at seq_len (filled above; zeros if prefill failed: same work)
        if cache is None:
            cache = model.new_cache(b, t + n)
        decode.update(_measure_decode(model, cache, spec, device, sampler, notes, overhead))
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


def _measure_decode(model, cache, spec, device, sampler, notes, overhead) -> dict:
    t, n = spec["seq_len"], spec["decode_tokens"]
    b = spec["batch_size"]
    compiled = (spec.get("execution") or "eager") == "compiled"
    tokens = torch.zeros(b, 1, dtype=torch.long, device=device)
    pos = torch.tensor([t], device=device)
    step = model.greedy_step_fn(cache, tokens, pos)

    def reset():  # the same n positions every sequence: identical work per repeat
        pos.fill_(t)
        tokens.fill_(1)

    def run_sequences(fn):
        samples = []
        for i in range(spec["warmup"] + spec["repeats"]):
            s = time_steps(lambda _i: fn(), n, device=device, setup=reset)
            if i >= spec["warmup"]:
                samples += s
        return samples

    out = {}
    _maybe_inject_oom(spec, "decode")
    if compiled:  # as in prefill: compiling stays out of the memory window
        reset()
        _first_call(step, device, overhead, "first_decode_s")
        _release(device)
    with torch.no_grad(), _Memory(device, sampler) as mem:
        if not compiled:
            reset()
            _first_call(step, device, overhead, "first_decode_s")  # never timed, even with warmup 0
        eager = None
        if not compiled:  # compiled: the uncompiled step is not what runs, and timing it costs the most
            eager = run_sequences(step)
        if device.type == "cuda":
            reset()
            graph = CudaGraphStep(step, device=device)
            samples, stab = _timed_rounds(lambda: run_sequences(graph.replay), device)
            graph.close()
            mode = "graph"
        else:
            samples, stab = _timed_rounds(lambda: eager or run_sequences(step), device)
            mode = "compiled" if compiled else "eager"
    out.update(latency_ms=summarize(samples), decode_mode=mode, stability=stab)
    if eager is not None and device.type == "cuda":
        out["latency_eager_ms"] = summarize(eager)
    out.update(status="ok", memory_bytes=mem.result)
    if getattr(mem, "nvml_summary", None):
        out["nvml"] = mem.nvml_summary
    return out


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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


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

"""Measuring a phase: prefill and decode timing, graph capture, stability rounds.

- prefill: the prompt forward that fills a fresh cache (time to first token), `warmup`
  untimed then `repeats` timed calls;
- decode: `decode_tokens` single-token steps from a cache filled to seq_len; `warmup`
  untimed sequences then `repeats` timed ones, every step a sample.

Execution (every record says which ran):
- eager: plain PyTorch. On CUDA the decode step is also captured in a CUDA graph and
  replayed: graph mode is the headline, the eager step's timing is kept too.
- compiled: torch.compile (Inductor) of the decoder layers and the head, regionally. The
  first call of each phase compiles (or loads from TORCHINDUCTOR_CACHE_DIR); it is timed apart
  as overhead, never as a sample, before the phase's memory window opens. On CUDA the decode
  step and the launch-bound prefills (<= PREFILL_GRAPH_MAX_TOKENS tokens) are then replayed
  from CUDA graphs; a prefill whose capture fails for another reason than memory is timed by
  direct calls and says so (`prefill_mode`, a note). The eager decode step is not timed.

Tensor parallelism (harness.tp_point): every rank runs these same functions on its shard,
with `barrier` (torch.distributed.barrier): all ranks pass it, untimed, before each timed
call (prefill) or sequence (decode), so every sample starts with the ranks together.

Each function takes the phase's record as the point process made it (identity and analytic
figures) and returns it measured, or failed (`failed`).

Stability: a timed set whose p90/p10 exceeds STABLE_RATIO gets up to EXTRA_ROUNDS more rounds
of samples on CUDA; the record's `stability` says how it ended.
"""
from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import replace

import torch

from sabench.constants import EXTRA_ROUNDS, STABLE_RATIO
from sabench.harness.faults import maybe_inject_oom
from sabench.harness.job import PointJob
from sabench.measure import CudaGraphStep, is_oom_error, time_fn, time_steps
from sabench.stats import summarize
from sabench.measure.timing import sync
from sabench.measure.trackers import PhaseTrackers
from sabench.records import Latency, Memory, PhaseRecord, Stability

# Compiled prefills of at most this many tokens (batch x seq_len) are replayed from a CUDA graph:
# they are the launch-bound ones. Larger ones run for tens of ms or more, hide their launches, and
# a graph's private pool would hold a second copy of their activations during the measurement.
PREFILL_GRAPH_MAX_TOKENS = 8192


def _stability(samples: list, extra_rounds: int = 0) -> Stability:
    lat = summarize(samples)
    ratio = lat["p90"] / lat["p10"] if lat["p10"] > 0 else float("inf")
    return Stability(ratio, ratio <= STABLE_RATIO, STABLE_RATIO, extra_rounds)


def timed_rounds(take, device: torch.device) -> tuple[list, Stability]:
    """Samples from `take()` (one round), plus on CUDA up to EXTRA_ROUNDS more while
    p90/p10 > STABLE_RATIO (a CPU shared with other work rarely settles: no extra rounds).

    Returns (all samples, stability). A set still unstable after the extra rounds is kept as
    measured and flagged, with a note, rather than cherry-picked."""
    samples = take()
    stab = _stability(samples)
    rounds, limit = 0, EXTRA_ROUNDS if device.type == "cuda" else 0
    while not stab.stable and rounds < limit:
        samples = samples + take()
        rounds += 1
        stab = _stability(samples, rounds)
    if not stab.stable:
        stab = replace(stab, note=f"p90/p10 {stab.p90_over_p10:.3f} > {STABLE_RATIO} after {rounds} extra rounds: "
                                  "the samples are spread (launch-bound or a busy machine); compare with care")
    return samples, stab


def first_call(fn, device: torch.device, overhead: dict, key: str) -> None:
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
        release(device)
        return fn, execution, None
    return graph.replay, "graph", graph


def _then(first, second):
    """A setup callable running `first` then `second` (either may be None)."""
    if first is None or second is None:
        return first or second

    def both():
        first()
        second()
    return both


def measured(rec: PhaseRecord, samples: list, stability: Stability, trackers: dict, **fields) -> PhaseRecord:
    """`rec` as measured: its latency over `samples`, the trackers' memory and energy readings
    (sabench.measure.trackers: typed here), and the phase's own `fields` (its mode)."""
    readings = dict(trackers)
    memory = readings.pop("memory_bytes", None)
    notes = readings.pop("memory_notes", None)
    return replace(rec, status="ok", error=None, latency_ms=Latency.of(samples), stability=stability,
                   memory_bytes=None if memory is None else Memory.of(memory),
                   memory_notes=None if notes is None else tuple(notes), **readings, **fields)


def measure_prefill(job: PointJob, rec: PhaseRecord, model, ids, cache, device, sampler, mem_kw, notes, overhead,
                    barrier=None) -> PhaseRecord:
    """`rec` (the prefill record before measurement) measured: status, latency, mode, stability,
    memory, energy. barrier: called (untimed) before every call of the phase (tensor-parallel ranks)."""
    fn = lambda: model.prefill(ids, cache, job.prefill_chunk)  # noqa: E731
    compiled = job.execution == "compiled"
    if compiled:  # compiling (and autotuning) stays out of the phase's memory window
        first_call(fn, device, overhead, "first_prefill_s")
        release(device)
    with torch.no_grad(), PhaseTrackers(device, sampler, kv_cache=cache.nbytes, **mem_kw) as mem:
        if not compiled:
            first_call(fn, device, overhead, "first_prefill_s")
        capture = compiled and device.type == "cuda" and job.batch_size * job.seq_len <= PREFILL_GRAPH_MAX_TOKENS
        fn, mode, graph = _maybe_graph(fn, capture, job.execution, device, notes)
        rounds = itertools.count()

        def one_round():  # energy is metered over the first round's timed calls
            first = next(rounds) == 0
            out = time_fn(fn, warmup=job.warmup, repeats=job.repeats, device=device,
                          setup=_then(barrier, mem.energy_from_call(max(job.warmup, 1)) if first else None))
            if first:
                mem.energy.stop()
            return out

        samples, stab = timed_rounds(one_round, device)
        if graph is not None:
            graph.close()
    return measured(rec, samples, stab, mem.fields(job.batch_size * job.seq_len * job.repeats,
                                                   f"the first {job.repeats} timed prefill calls"), prefill_mode=mode)


def measure_decode(job: PointJob, rec: PhaseRecord, model, cache, device, sampler, mem_kw, overhead,
                   barrier=None) -> PhaseRecord:
    """`rec` (the decode record before measurement) measured: every step of the timed sequences
    a sample. barrier: called (untimed) before every sequence (tensor-parallel ranks)."""
    t, n, b = job.seq_len, job.decode_tokens, job.batch_size
    compiled = job.execution == "compiled"
    tokens = torch.zeros(b, 1, dtype=torch.long, device=device)
    pos = torch.tensor([t], device=device)
    step = model.greedy_step_fn(cache, tokens, pos)

    def reset():  # the same n positions every sequence: identical work per repeat
        pos.fill_(t)
        tokens.fill_(1)

    def run_sequences(fn, energy=None):  # energy: metered over the timed sequences
        samples = []
        for i in range(job.warmup + job.repeats):
            if energy is not None and i == job.warmup:
                energy.start()
            s = time_steps(lambda _i: fn(), n, device=device, setup=_then(reset, barrier))
            if i >= job.warmup:
                samples += s
        if energy is not None:
            energy.stop()
        return samples

    maybe_inject_oom(job.fault_oom, job.variant, b, t, "decode")
    if compiled:  # as in prefill: compiling stays out of the memory window
        reset()
        first_call(step, device, overhead, "first_decode_s")
        release(device)
    with torch.no_grad(), PhaseTrackers(device, sampler, kv_cache=cache.nbytes, **mem_kw) as mem:
        if not compiled:
            reset()
            first_call(step, device, overhead, "first_decode_s")  # never timed, even with warmup 0
        eager = None
        if not compiled:  # compiled: the uncompiled step is not what runs, and timing it costs the most
            eager = run_sequences(step)
        rounds = itertools.count()
        if device.type == "cuda":
            reset()
            graph = CudaGraphStep(step, device=device)
            samples, stab = timed_rounds(
                lambda: run_sequences(graph.replay, mem.energy if next(rounds) == 0 else None), device)
            graph.close()
            mode = "graph"
        else:
            # no extra rounds off CUDA (see timed_rounds), and no energy counter either
            samples, stab = timed_rounds(lambda: eager if eager is not None else run_sequences(step), device)
            mode = "compiled" if compiled else "eager"
    eager_ms = Latency.of(eager) if eager is not None and device.type == "cuda" else None
    return measured(rec, samples, stab, mem.fields(b * n * job.repeats, f"the first {job.repeats} timed sequences "
                                                                         f"of {n} {mode} decode steps"),
                    decode_mode=mode, latency_eager_ms=eager_ms)


def failure(e: BaseException) -> dict:
    """{status, error[, traceback]} of a phase that raised `e` (oom when it ran out of memory)."""
    msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:500]
    if is_oom_error(e):
        return {"status": "oom", "error": msg}
    tb = traceback.format_exc(limit=3)
    return {"status": "error", "error": msg, "traceback": tb[-2000:]}


def failed(rec: PhaseRecord, e: BaseException, context: str = "") -> PhaseRecord:
    """`rec` (its analytic figures kept) as a phase that raised `e`; `context` prefixes the error."""
    fail = failure(e)
    return rec.with_failure(fail.pop("status"), context + fail.pop("error"), **fail)


def release(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()

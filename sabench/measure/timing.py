"""The one timing primitive of sabench (in the spirit of triton.testing.do_bench).

Why one primitive: prefill, decode and roofline calibration must be timed the
same way, or their ratios (MFU, MBU, speedups) mix methodologies.

On CUDA, kernels run asynchronously, so host wall-clock around a call measures
launch time, not execution. We record a pair of CUDA events on the current
stream around each call and synchronise once at the very end: no host sync sits
inside the timed region, so the GPU queue stays fed exactly as in production
and the event pair measures what the GPU spent between the two points of the
stream (including any idle gap while it waited for a launch-bound host, which
is real latency). On CPU everything is synchronous and perf_counter_ns is exact
enough.

The first call is never timed (lazy initialisation, cuBLAS handle creation,
autotuning, allocator growth, page faults), whatever `warmup` says.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Union

import torch

DeviceLike = Union[str, torch.device, int]


def as_device(device: DeviceLike) -> torch.device:
    """Normalise to a torch.device; a bare 'cuda' gets the current CUDA index.

    Pinning the index matters: events, streams and synchronize calls must all
    refer to the same device the work runs on.
    """
    if isinstance(device, int):
        return torch.device("cuda", device)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def is_cuda(device: DeviceLike) -> bool:
    return torch.device(device).type == "cuda" if not isinstance(device, int) else True


def sync(device: DeviceLike) -> None:
    """Wait for all queued work on a CUDA device; nothing to do on CPU."""
    if is_cuda(device):
        torch.cuda.synchronize(as_device(device))


def time_fn(fn: Callable[[], object], *, warmup: int, repeats: int, device: DeviceLike,
            setup: Optional[Callable[[], object]] = None) -> list[float]:
    """Per-call latency of `fn()` in milliseconds, `repeats` samples.

    - `max(warmup, 1)` untimed calls come first (the first call is never timed).
    - `setup()`, if given, runs before every call (warmup ones included, so the
      timed calls see the same state as the warmup ones) and is never timed. On
      CUDA, GPU work that setup enqueues lands between one call's end event and
      the next call's start event, hence outside every timed window.
    - CUDA: one start/end event pair per call on the current stream of `device`;
      all events are recorded first, then one synchronize, then elapsed_time.
    - CPU: perf_counter_ns around each call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n_warmup = max(int(warmup), 1)
    dev = as_device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            for _ in range(n_warmup):
                if setup is not None:
                    setup()
                fn()
            torch.cuda.synchronize(dev)
            stream = torch.cuda.current_stream(dev)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
            for i in range(repeats):
                if setup is not None:
                    setup()
                starts[i].record(stream)
                fn()
                ends[i].record(stream)
            torch.cuda.synchronize(dev)
            return [float(s.elapsed_time(e)) for s, e in zip(starts, ends)]

    for _ in range(n_warmup):
        if setup is not None:
            setup()
        fn()
    out = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
        out.append((t1 - t0) / 1e6)
    return out


def time_steps(step_fn: Callable[[int], object], n_steps: int, *, device: DeviceLike,
               setup: Optional[Callable[[], object]] = None) -> list[float]:
    """Per-step latencies (ms) of one sequence of `n_steps` dependent steps.

    `step_fn(i)` is called with the step index i = 0..n_steps-1 (decode: step i
    produces token i; the index lets a step update its position without keeping
    its own counter). `setup()` runs once before the sequence, untimed.

    n_steps + 1 boundary timestamps are taken (events on CUDA, all recorded on
    the current stream, one synchronize at the end; perf_counter_ns on CPU) and
    step i's latency is boundary[i+1] - boundary[i]. Steps therefore tile the
    sequence with no gaps: their sum is the sequence's total time, which is what
    tokens/s must be computed from. No warmup happens here: the caller warms the
    step function (e.g. by CUDA-graph capture or a throwaway sequence).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    dev = as_device(device)
    if setup is not None:
        setup()
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.synchronize(dev)  # setup's work must not leak into step 0
            stream = torch.cuda.current_stream(dev)
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(n_steps + 1)]
            marks[0].record(stream)
            for i in range(n_steps):
                step_fn(i)
                marks[i + 1].record(stream)
            torch.cuda.synchronize(dev)
            return [float(marks[i].elapsed_time(marks[i + 1])) for i in range(n_steps)]

    stamps = [0] * (n_steps + 1)
    stamps[0] = time.perf_counter_ns()
    for i in range(n_steps):
        step_fn(i)
        stamps[i + 1] = time.perf_counter_ns()
    return [(stamps[i + 1] - stamps[i]) / 1e6 for i in range(n_steps)]


class CudaGraphStep:
    """A zero-argument `fn` captured once into a CUDA graph and replayed.

    Why: a single-token decode step is launch-bound (hundreds of small kernels,
    microseconds each); replaying a graph removes the per-kernel host launch cost
    so the measurement reflects the GPU work. The usual graph rules apply: `fn`
    must read from and write to static tensors (update inputs in place with
    `copy_` before `replay()`), allocate its outputs deterministically, and never
    synchronise with the host (.item(), .cpu(), printing a tensor) while capturing.

    Warmup follows the documented pattern: a few eager calls on a side stream
    (so lazy initialisation and allocator growth happen outside the capture),
    then capture. `.output` is whatever `fn` returned during capture; its
    tensors are overwritten in place by every replay.
    """

    def __init__(self, fn: Callable[[], object], *, device: Optional[DeviceLike] = None,
                 warmup_iters: int = 3, pool=None):
        if device is None:
            device = "cuda"
        if not is_cuda(device):
            raise RuntimeError(f"CudaGraphStep needs a CUDA device, got {device!r}: "
                               "CUDA graphs do not exist on CPU (time the eager step instead)")
        if not torch.cuda.is_available():
            raise RuntimeError("CudaGraphStep needs CUDA, but torch.cuda.is_available() is False")
        self.device = as_device(device)
        self.fn = fn
        with torch.cuda.device(self.device):
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(max(int(warmup_iters), 1)):
                    fn()
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.output = fn()
            torch.cuda.synchronize(self.device)

    def replay(self):
        """Launch the captured graph on the current stream; returns `.output`."""
        if self.graph is None:
            raise RuntimeError("CudaGraphStep.replay() after close()")
        self.graph.replay()
        return self.output

    def __call__(self):
        return self.replay()

    def close(self) -> None:
        """Free the graph (its memory pool goes back to the caching allocator)."""
        graph = getattr(self, "graph", None)
        if graph is not None:
            graph.reset()
            self.graph = None
        self.output = None

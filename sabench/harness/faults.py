"""Fault injection: a test seam that makes chosen points run out of memory on cue.

SABENCH_FAULT_OOM holds point keys ("variant|batch|seq", comma-separated). The sweep reads it
once and hands the keys to every point process in its job (`PointJob.fault_oom`); the point
raises torch.OutOfMemoryError at the named stage, so the OOM handling is exercised on machines
that never run out. SABENCH_FAULT_KILL holds point keys the same way, each optionally followed
by "@SIGNAL" (default SIGKILL): the point process sends itself that signal before measuring,
as a user's `kill` or a scheduler would. SABENCH_FAULT_SLOWDOWN slows points down;
SABENCH_FAULT_PAUSE holds the runner at a stage (`pause_at`). Nothing here imports the rest of
the harness.
"""
from __future__ import annotations

import os
from typing import Optional

from sabench.records import point_key

FAULT_ENV = "SABENCH_FAULT_OOM"
KILL_ENV = "SABENCH_FAULT_KILL"


def fault_keys_from_env() -> Optional[str]:
    """The raw SABENCH_FAULT_OOM value (None when unset), as the sweep passes it on."""
    return os.environ.get(FAULT_ENV)


def maybe_inject_oom(fault_oom: Optional[str], variant: str, batch_size: int, seq_len: int, where: str) -> None:
    """Raise torch.OutOfMemoryError when this point's key is among `fault_oom`'s."""
    keys = [k.strip() for k in (fault_oom or "").split(",") if k.strip()]
    if point_key(variant, batch_size, seq_len) in keys:
        import torch

        raise torch.OutOfMemoryError(f"out of memory (injected by {FAULT_ENV} at {where})")


def kill_keys_from_env() -> Optional[str]:
    """The raw SABENCH_FAULT_KILL value (None when unset), as the sweep passes it on."""
    return os.environ.get(KILL_ENV)


def maybe_inject_kill(fault_kill: Optional[str], variant: str, batch_size: int, seq_len: int) -> None:
    """Send this process the named signal (SIGKILL by default) when its point is among `fault_kill`'s."""
    import signal

    key = point_key(variant, batch_size, seq_len)
    for item in (k.strip() for k in (fault_kill or "").split(",")):
        name, _, sig = item.partition("@")
        if item and name == key:
            os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))


SLOW_ENV = "SABENCH_FAULT_SLOWDOWN"


def slowdown_from_env() -> Optional[str]:
    """The raw SABENCH_FAULT_SLOWDOWN value, read once by the sweep: comma-separated items, each
    "[PHASE:]FACTOR" (every point) or "[PHASE:]KEY=FACTOR" (one point), PHASE being prefill or
    decode (default both). A test seam of the gate benchmarks: a candidate that is really FACTOR
    times slower, to measure how often the gate catches it."""
    return os.environ.get(SLOW_ENV)


PHASES = ("prefill", "decode")


def slowdown_factors(fault_slow: Optional[str], variant: str, batch_size: int, seq_len: int) -> dict:
    """This point's slowdown factor per phase ({"prefill": 1.0, "decode": 1.0}: none)."""
    key = point_key(variant, batch_size, seq_len)
    out = dict.fromkeys(PHASES, 1.0)
    for item in (x.strip() for x in (fault_slow or "").split(",") if x.strip()):
        phase, colon, rest = item.partition(":")
        if not colon or phase not in PHASES:
            phase, rest = None, item
        k, sep, factor = rest.rpartition("=")
        if not sep or k.strip() == key:
            for ph in ([phase] if phase else PHASES):
                out[ph] = float(factor)
    return out


def slowed(fn, factor: float):
    """`fn`, followed after each call by a busy wait of (factor - 1) times the call's duration:
    the CPU stays busy, so a call takes `factor` times as long (CPU execution only)."""
    import time

    def call(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        end = time.perf_counter() + (time.perf_counter() - t0) * (factor - 1)
        while time.perf_counter() < end:
            pass
        return out
    return call


def slow_down(model, factors: dict) -> None:
    """Make `model`'s prefill and decode step the given factors slower (see `slowed`)."""
    if factors["prefill"] != 1.0:
        model.prefill = slowed(model.prefill, factors["prefill"])
    if factors["decode"] != 1.0:
        step_fn, f = model.greedy_step_fn, factors["decode"]
        model.greedy_step_fn = lambda *a, **k: slowed(step_fn(*a, **k), f)


PAUSE_ENV = "SABENCH_FAULT_PAUSE"


def pause_at(stage: str) -> None:
    """SABENCH_FAULT_PAUSE="STAGE:PATH": on reaching STAGE ("report": the sweep's report and
    history), write PATH and wait there (up to 10 minutes). A test's cue to interrupt a run at
    that very stage, without guessing how long the stages before it take."""
    import time
    from pathlib import Path

    at, _, path = (os.environ.get(PAUSE_ENV) or "").partition(":")
    if at == stage and path:
        Path(path).write_text(stage)
        time.sleep(600)

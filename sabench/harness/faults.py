"""Fault injection: a test seam that makes chosen points run out of memory on cue.

SABENCH_FAULT_OOM holds point keys ("variant|batch|seq", comma-separated). The sweep reads it
once and hands the keys to every point process in its job (`PointJob.fault_oom`); the point
raises torch.OutOfMemoryError at the named stage, so the OOM handling is exercised on machines
that never run out. SABENCH_FAULT_KILL holds point keys the same way, each optionally followed
by "@SIGNAL" (default SIGKILL): the point process sends itself that signal before measuring,
as a user's `kill` or a scheduler would. Nothing here imports the rest of the harness.
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

"""Ctrl-C during a run: only the runner is interrupted; the processes it starts ignore SIGINT.

A terminal sends SIGINT to its whole foreground process group: the runner, the fork server,
every point process and a tensor-parallel point's ranks. Were each to handle it, each would
print its own KeyboardInterrupt traceback, and a child still starting could write into a work
directory the runner had already removed. So the children ignore SIGINT from their first
instruction (the fork server is started with SIGINT blocked, and ignores it before it forks a
point process, which inherits that), and the runner, the one process that handles it, ends
them (SIGTERM, then SIGKILL) and reaps them before it cleans up and prints its one line.

Python runs signal handlers in the main thread only; off it these helpers change nothing
there but the thread's signal mask (a KeyboardInterrupt is never raised in another thread).
"""
from __future__ import annotations

import contextlib
import signal
import threading


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred():
    """Ctrl-C inside the block is raised as KeyboardInterrupt when the block ends, not in it: a
    child being started is then started (its pid known) and can be ended, never half-started."""
    if not _main_thread():
        yield
        return
    hit = []
    old = signal.signal(signal.SIGINT, lambda *_: hit.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt


@contextlib.contextmanager
def ignored():
    """Ctrl-C inside the block is dropped (the runner is already stopping: a second Ctrl-C must
    not cut its cleanup short)."""
    if not _main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def blocked_for_children():
    """A process forked (and executed) inside the block starts with SIGINT blocked: the mask
    survives fork and exec, so the child cannot be interrupted before it chooses to ignore
    SIGINT (`ignore_in_this_process`). Use it inside `deferred()`: a Ctrl-C that arrives
    meanwhile is then raised after the block."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_in_this_process() -> None:
    """SIGINT ignored from now on (and by the processes forked from here), and unblocked: one
    that arrived while blocked is dropped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

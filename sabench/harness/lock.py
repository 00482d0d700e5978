"""One run per output directory: an exclusive lock held for the length of `sabench run`.

The lock is `filelock`'s (an OS advisory lock on RUN_DIR/.sabench-run.lock): the OS drops it
when its process dies, so a lock left by a killed run is simply taken over. Beside it,
RUN_DIR/.sabench-run.json names the holder (PID, host, start time) so that a second run on the
same directory can say whom it waits for; it is informative only, never what decides.

`run_suite` is decorated with `holds_run_lock` and calls `lock_run_dir(out)` once it knows its
directory; the lock is released when run_suite returns or raises.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import functools
import json
import os
import socket
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from sabench.errors import UserError

LOCK_NAME, INFO_NAME = ".sabench-run.lock", ".sabench-run.json"
_STACK: contextvars.ContextVar = contextvars.ContextVar("sabench_run_lock_stack", default=None)


class RunLocked(UserError):
    """Another run holds the output directory."""


def holder_info(out: Path) -> Optional[dict]:
    """{"pid", "host", "started"} of the run that holds (or last held) `out`; None when unknown."""
    try:
        d = json.loads((Path(out) / INFO_NAME).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _describe(info: Optional[dict]) -> str:
    if not info:
        return "another sabench run (its PID is not recorded)"
    return (f"sabench run PID {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"started {info.get('started', '?')}")


class RunLock:
    """The exclusive lock of one run directory; `acquire` raises RunLocked when it is taken."""

    def __init__(self, out):
        self.out = Path(out)
        self._lock = FileLock(str(self.out / LOCK_NAME), thread_local=False, is_singleton=False)

    def acquire(self) -> "RunLock":
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunLocked(f"{self.out} is in use by {_describe(holder_info(self.out))}, "
                            f"wait for it to finish or choose another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        try:
            (self.out / INFO_NAME).write_text(json.dumps(info) + "\n")
        except OSError:  # the lock holds without its label
            pass
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                (self.out / INFO_NAME).unlink()
            self._lock.release(force=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_run_lock(fn):
    """Decorator: a run lock taken inside `fn` by `lock_run_dir` is released when `fn` ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _STACK.set(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                _STACK.reset(token)

    return wrapper


def lock_run_dir(out) -> RunLock:
    """Take `out`'s run lock for the rest of the enclosing `holds_run_lock` function (RunLocked if taken)."""
    stack = _STACK.get()
    if stack is None:
        raise RuntimeError("lock_run_dir must be called inside a function decorated with holds_run_lock")
    lock = RunLock(out).acquire()
    stack.callback(lock.release)
    return lock

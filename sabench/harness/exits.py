"""How a process that did not deliver its result ended: "oom", "killed" or "error".

One classification for a point's process (harness.launch) and for each rank of a tensor-parallel
point (harness.tp_point): a process ended by a signal from outside (SIGKILL, SIGTERM, ... by a user
or a scheduler) is "killed", unless the signal was SIGKILL and the cgroup's OOM-kill counter rose
meanwhile (the kernel's OOM killer: "oom"); any other death (SIGSEGV, SIGABRT, ...) or exit code is
"error". A process that did deliver reports its own status (harness.phases.failure for an exception).
"""
from __future__ import annotations

import signal
from typing import Optional

# Signals a user or a scheduler sends to end a process; any other (SIGSEGV, SIGABRT, ...) is a crash.
KILL_SIGNALS = ("SIGKILL", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU")


def classify_exit(exitcode: Optional[int], stderr_tail: list, oom_killed: Optional[bool] = None,
                  who: str = "worker") -> tuple[str, str]:
    """(status, message) of a process that did not deliver its result; a negative exit code is the
    signal that ended it. oom_killed: whether the cgroup's OOM-kill counter rose while it ran (None:
    cannot tell). who: how the message names the process ("worker", "rank 1 of 2")."""
    # an empty stderr file: the process failed before its own code redirected stderr (importing or
    # unpickling its job), and Python printed the traceback on the run's stderr instead
    last = stderr_tail[-1] if stderr_tail else ("no message in its stderr file (it failed before its code ran: "
                                                "the traceback, if any, is in the run's own stderr)")
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode).name
        if sig == "SIGKILL" and oom_killed:
            return "oom", f"{who} killed by SIGKILL from the kernel's OOM killer (the cgroup's oom_kill count rose)"
        if sig in KILL_SIGNALS:
            why = ""
            if sig == "SIGKILL":
                why = (" (the cgroup's OOM-kill count did not change: not the OOM killer)" if oom_killed is False
                       else " (from outside, or the kernel's OOM killer: this platform cannot tell)")
            return "killed", f"{who} killed by {sig}{why}"
        return "error", f"{who} died of {sig}: {last}"
    return "error", f"{who} exited with code {exitcode}: {last}"

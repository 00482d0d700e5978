"""Was a point process killed by the kernel's OOM killer, or from outside? As far as the platform can tell.

A SIGKILL looks the same whoever sent it: the kernel's OOM killer, a user's `kill -9`, a
scheduler ending a job. On Linux with cgroup v2 the process's cgroup counts OOM kills
(v2 `memory.events`, v1 `memory.oom_control`: field `oom_kill`): read before the point and after, a rise means the
kernel killed something in this cgroup for memory. Without that counter the platform cannot
tell, and the launcher says so in the record rather than guessing OOM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _events_file() -> Optional[Path]:
    """The file holding this process's cgroup OOM-kill counter: cgroup v2 memory.events, or
    v1 memory.oom_control (kernel 4.13+); the cgroup's own path first, then the mount's root
    (inside a container the process's cgroup is usually mounted there)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        hier, _, rest = line.partition(":")
        ctrl, _, path = rest.partition(":")
        if hier == "0" and ctrl == "":  # the unified (v2) hierarchy
            candidates += [_CGROUP_ROOT / path.lstrip("/") / "memory.events", _CGROUP_ROOT / "memory.events"]
        elif "memory" in ctrl.split(","):  # v1's memory controller
            base = _CGROUP_ROOT / "memory"
            candidates += [base / path.lstrip("/") / "memory.oom_control", base / "memory.oom_control"]
    return next((f for f in candidates if f.is_file()), None)


def oom_kill_count(events: Optional[Path] = None) -> Optional[int]:
    """The cgroup's OOM-kill counter; None when it cannot be read on this platform."""
    f = events if events is not None else _events_file()
    if f is None:
        return None
    try:
        for line in f.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def oom_killed(before: Optional[int], after: Optional[int]) -> Optional[bool]:
    """True: the counter rose (an OOM kill happened); False: it did not; None: cannot tell."""
    if before is None or after is None:
        return None
    return after > before

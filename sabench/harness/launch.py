"""Launching a point: one process, or one process that launches N ranks; its exit classified.

Every point runs in a fresh process (its own allocator, its own CUDA context), so an
out-of-memory error, a crash or a leaked allocation cannot touch the next point's numbers.
That process runs harness.point.measure, which assembles the point's records either way: a
TP-1 point measures its phases in that process; a tensor-parallel point (`job.tensor_parallel`
N > 1) hands them to N rank processes (harness.tp_point.measure_on_ranks), so its process is
started non-daemonic (a daemonic process may not have children). The child writes its result
file and exits 0; anything else is classified (harness.exits: oom, killed, error), as each
failed rank of a tensor-parallel point is.

Ctrl-C: the fork server and the point processes ignore SIGINT (harness.interrupts); the
runner, interrupted while it starts or waits for a point process, ends and reaps that process
before the KeyboardInterrupt goes on, so nothing of it writes after the runner's cleanup.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from sabench.harness import interrupts
from sabench.harness.exits import classify_exit
from sabench.harness.job import PointJob
from sabench.harness.oom_evidence import oom_kill_count, oom_killed
from sabench.records import PHASES, PhaseRecord

_CTX = None
# Process.start() polls every other child's exit pipe (multiprocessing's _cleanup); two threads
# polling one child would read its exit code once and see 255 the other time. Starting, reaping
# and ending point processes from several threads (`run --devices`) happens under this lock.
_PROCS = threading.Lock()


def _context():
    """A forkserver that has imported torch and sabench once: each point is still a fresh
    process but starts in milliseconds, not the 1-2 s an interpreter needs to import torch.
    The server never touches CUDA; it ignores SIGINT (sabench.harness.preload)."""
    global _CTX
    if _CTX is None:
        import multiprocessing as mp

        # torch and NVML must number GPUs alike (the sampler also matches by PCI bus id)
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["sabench.harness.preload"])
    return _CTX


def _start_server() -> None:
    """The fork server, started (once) with SIGINT blocked: it cannot be interrupted before it
    ignores SIGINT. The resource tracker it needs first: it unblocks SIGINT when it has started."""
    from multiprocessing import forkserver, resource_tracker

    _context()
    resource_tracker.ensure_running()
    with interrupts.blocked_for_children():
        forkserver.ensure_running()


def _nothing() -> None:
    pass


def warm_server() -> None:
    """Start the fork server and wait until it has imported torch and sabench, by running one empty
    process through it: that one-time cost (seconds, tens of seconds on a loaded machine) then
    belongs to the run's start-up, not to its first point and the ETA computed from it."""
    proc = _context().Process(target=_nothing, daemon=True)
    try:
        with _PROCS, interrupts.deferred():
            _start_server()
            proc.start()
        proc.join()
    except BaseException:
        _stop(proc)
        raise


def run_point(job: PointJob, workdir: Path) -> tuple[dict, dict]:
    """Measure one point in its own process; returns ({phase: PhaseRecord}, overhead).

    The point process's result file is parsed here, the one edge its records cross (a result
    that does not parse is the harness's bug, raised as ResultsError)."""
    from sabench.harness.point import child_main

    on_ranks = None  # the phases are measured in the point's process ...
    if job.tensor_parallel > 1:  # ... or on the N ranks it launches: then it must not be daemonic
        from sabench.harness.tp_point import measure_on_ranks

        on_ranks = measure_on_ranks

    result_path, stderr_path = workdir / "result.json", workdir / "stderr.txt"
    for f in (result_path, stderr_path):
        if f.exists():
            f.unlink()
    job = job.replace(t_spawn=time.time())
    t0 = time.perf_counter()
    ooms_before = oom_kill_count()
    proc = _context().Process(target=child_main, args=(job, str(result_path), str(stderr_path), on_ranks),
                              daemon=on_ranks is None)
    try:
        with _PROCS, interrupts.deferred():
            _start_server()
            proc.start()
        _wait(proc)
    except BaseException:  # Ctrl-C (or a bug) in the runner: the point process must not outlive it
        _stop(proc)
        raise
    wall = time.perf_counter() - t0
    if proc.exitcode == 0 and result_path.exists():
        result = json.loads(result_path.read_text())
        overhead = dict(result["overhead"], total_s=wall)
        records = (PhaseRecord.from_dict(r, str(result_path), i) for i, r in enumerate(result["records"]))
        return {r.phase: r for r in records}, overhead
    tail = stderr_path.read_text(errors="replace").strip().splitlines() if stderr_path.exists() else []
    oom = oom_killed(ooms_before, oom_kill_count()) if proc.exitcode == -signal.SIGKILL else None
    status, msg = classify_exit(proc.exitcode, tail, oom)
    extra = {"stderr_tail": "\n".join(tail[-20:])}
    if proc.exitcode is not None and proc.exitcode < 0:
        extra["signal"] = signal.Signals(-proc.exitcode).name
    return {ph: PhaseRecord.failed(job.point, ph, status, msg, **extra) for ph in PHASES}, \
        {"total_s": wall, "point": job.key}


def _wait(proc) -> None:
    from multiprocessing.connection import wait

    wait([proc.sentinel])  # blocks without reading the exit code
    with _PROCS:
        proc.join()


# How long a point process ended by SIGTERM may take (a tensor-parallel one ends its ranks first).
STOP_GRACE_S = 30.0


def _stop(proc) -> None:
    """End and reap a point process that is still running: SIGTERM, SIGKILL after STOP_GRACE_S."""
    if proc.pid is None:  # never started
        return
    with interrupts.ignored(), _PROCS:
        if proc.exitcode is None:
            proc.terminate()
            proc.join(STOP_GRACE_S)
        if proc.exitcode is None:
            proc.kill()
            proc.join()


def end_point_processes() -> None:
    """SIGTERM every point process still running (an interrupted `run --devices`)."""
    import multiprocessing

    with _PROCS:
        for child in multiprocessing.active_children():
            child.terminate()

"""The helper process of NvmlSampler: samples NVML memory (and power), answers over a pipe.

Started by the sampler as `python .../_nvml_probe.py --device-index I --pid P ...` (run as a
file, not with -m: importing the `sabench` and `sabench.measure` packages would import torch,
and this process must start fast and stay small). It imports pynvml (or the implementation
named by --nvml "module:attribute") and the torch-free `sabench.measure.nvml_readings` (NVML's
loading, device lookup and one-off reads), through light stand-ins for the two package modules.

Protocol: one JSON object per line. First the helper writes its ready line
{"id": 0, "ok": true, "mapping": ..., "notes": [...], "bus_id": ..., "energy_error": null|why,
"power_ok": bool, "pid": ...} (or {"id": 0, "ok": false, "error": ...} and exits). Then the
parent sends commands, each with an "id" that the reply echoes:

  {"cmd": "idle"}               -> {"ok": true, "used": bytes} | {"ok": false, "error": ...}
  {"cmd": "start", "idle": b, "power": p, "avoid_cpu": cpu|null}
                                -> {"ok": true, "idle": bytes|null}; the window opens: a sample
                                   now and every interval_s until "stop" (idle read first if b;
                                   with p, every sample also reads the power draw)
  {"cmd": "stop"}               -> {"ok": true, "window": {"peak", "peak_proc", "n", "attempts",
                                   "power", "notes"}, "elapsed_s": s}
  {"cmd": "energy"}             -> {"ok": true, "mj": millijoules} (total-energy counter, any time)
  {"cmd": "quit"}               -> exits (so does EOF on stdin)

It ends with its parent: PR_SET_PDEATHSIG (Linux, when asked with --pdeathsig), EOF on stdin,
or a changed parent pid. It ignores SIGINT (a Ctrl-C is the parent's to handle). Anything
printed by the NVML implementation goes to stderr, never into the protocol.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import time
from typing import Optional


def _bootstrap() -> None:
    """Make `sabench.measure.nvml_readings` importable without running the packages' __init__ (torch)."""
    import types

    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]  # the script's own directory would shadow names like `stats`, `env`
    root = os.path.dirname(os.path.dirname(here))
    for name, path in (("sabench", os.path.join(root, "sabench")), ("sabench.measure", here)):
        if name not in sys.modules:
            mod = types.ModuleType(name, "stand-in package module of the NVML sampler helper")
            mod.__path__ = [path]
            sys.modules[name] = mod


if __name__ == "__main__":  # run as a file (never imported otherwise): the stand-ins come first
    _bootstrap()
from sabench.measure import nvml_readings as core  # noqa: E402  (torch-free; see _bootstrap)


class _Window:
    """The readings of one start()/stop() window; `summary()` is what "stop" sends back."""

    def __init__(self, nvml, handle, pid: int, track_process: bool = True, track_power: bool = False):
        self.nvml, self.handle = nvml, handle
        self.pid, self.track_process = int(pid), bool(track_process)
        # [[perf_counter s, mW], ...] when the energy counter is missing (power is integrated then)
        self.power: Optional[list] = [] if track_power else None
        self.peak: Optional[int] = None
        self.peak_proc: Optional[int] = None
        self.n = 0  # successful device readings
        self.attempts = 0  # sampling attempts of the loop: the rate at which NVML was asked
        self.errors = 0
        self.first_error: Optional[str] = None
        self.proc_empty = 0
        self.proc_foreign = 0
        self.proc_na = 0
        self.proc_error: Optional[str] = None
        self._track_proc_now = self.track_process

    def read_used(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def record_error(self, e: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = core.why_unavailable(e)

    def sample(self) -> None:
        """One reading; an NVML error is counted, never raised."""
        try:
            self._sample()
        except Exception as e:
            self.record_error(e)

    def _sample(self) -> None:
        used = self.read_used()
        if self.peak is None or used > self.peak:
            self.peak = used
        self.n += 1
        if self.power is not None:
            try:
                mw = int(self.nvml.nvmlDeviceGetPowerUsage(self.handle))
                self.power.append([time.perf_counter(), mw])
            except Exception as e:  # counted like a failed memory reading, the rest of the sample stands
                self.record_error(e)
        if not self._track_proc_now:
            return
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception as e:  # e.g. NotSupported: stop asking, once
            self.proc_error = core.why_unavailable(e)
            self._track_proc_now = False
            return
        if not procs:
            self.proc_empty += 1
            return
        mine = [p for p in procs if getattr(p, "pid", None) == self.pid]
        if not mine:
            self.proc_foreign += 1
            return
        values = [int(v) for v in (getattr(p, "usedGpuMemory", None) for p in mine) if v is not None]
        if not values:
            self.proc_na += 1
            return
        total = sum(values)
        if self.peak_proc is None or total > self.peak_proc:
            self.peak_proc = total

    def summary(self) -> dict:
        notes = []
        if self.errors:
            notes.append(f"{self.errors} NVML error(s) while sampling (those samples were skipped); "
                         f"first: {self.first_error}")
        why = self._why_no_process_peak()
        if why:
            notes.append(f"per-process memory unavailable: {why}")
        return {"peak": self.peak, "peak_proc": self.peak_proc, "n": self.n, "attempts": self.attempts,
                "power": self.power, "notes": notes}

    def _why_no_process_peak(self) -> Optional[str]:
        if not self.track_process:
            return None
        if self.proc_error is not None:
            return f"nvmlDeviceGetComputeRunningProcesses failed ({self.proc_error})"
        if self.peak_proc is not None:
            return None
        if self.proc_foreign:
            return (f"NVML lists compute processes on this GPU but none with our pid {self.pid} "
                    "(inside a container NVML reports host-namespace PIDs)")
        if self.proc_na:
            return ("NVML lists our process without a memory figure (usedGpuMemory not available, "
                    "e.g. under MIG or WDDM)")
        if self.proc_empty:
            return ("NVML lists no compute process on this GPU (typical inside a container without "
                    "the host PID namespace)")
        return None


def die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except Exception:
        pass  # not Linux: EOF on stdin and the parent-pid check still end us
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="_nvml_probe")
    ap.add_argument("--nvml", default=None, help='"module:attribute" of a pynvml-like object/factory')
    ap.add_argument("--device-index", type=int, default=0)
    ap.add_argument("--pci-bus-id", default=None, help="bus id of the device (torch's, or explicit)")
    ap.add_argument("--uuid", default=None, help="UUID torch reported in the parent")
    ap.add_argument("--pid", type=int, required=True, help="process whose memory to track")
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--interval-s", type=float, default=0.005)
    ap.add_argument("--no-track-process", action="store_true")
    ap.add_argument("--pdeathsig", action="store_true")
    args = ap.parse_args(argv)
    parent_pid = args.parent_pid if args.parent_pid is not None else os.getppid()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.pdeathsig:
        die_with_parent(parent_pid)
    elif os.getppid() != parent_pid:
        return 0

    # The protocol gets its own copy of stdout; fd 1 then points to stderr so stray prints
    # (an NVML binding's warnings, a fake's debugging) cannot corrupt it.
    fd_out = os.dup(1)
    os.dup2(2, 1)

    def send(obj) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(fd_out, data):]

    notes: list = []
    with contextlib.ExitStack() as nvml_open:  # NVML is shut down when main returns
        try:  # nvmlInit, the device and the MIG note
            nv = nvml_open.enter_context(core.nvml_initialised(args.nvml))
            handle, how = core.resolve_handle(nv, args.device_index, args.pci_bus_id, notes,
                                              uuid=args.uuid, ask_torch=False)
        except Exception as e:
            send({"id": 0, "ok": False, "error": str(e)})
            return 1
        try:
            bus_id = core.bus_id_of(nv, handle)
        except Exception:
            bus_id = None
        energy_error, power_ok = core.energy_support(nv, handle)
        try:
            send({"id": 0, "ok": True, "mapping": how, "notes": notes, "bus_id": bus_id,
                  "energy_error": energy_error, "power_ok": power_ok,
                  "pid": os.getpid(), "torch_imported": "torch" in sys.modules})
            return _serve(nv, handle, args, parent_pid, send)
        except BrokenPipeError:
            return 0  # the parent is gone


def _serve(nv, handle, args, parent_pid: int, send) -> int:
    """The command loop (stdin); samples every interval while a window is open. -> exit code."""
    interval = args.interval_s
    perf = time.perf_counter
    win = None  # the open window's _Window, or None
    t_open = next_t = 0.0
    buf = b""
    try:
        base_cpus = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        base_cpus = frozenset()

    def answer(read) -> dict:
        try:
            return {"ok": True, **read()}
        except Exception as e:
            return {"ok": False, "error": core.why_unavailable(e)}

    while True:
        if win is not None:
            now = perf()
            if now >= next_t:  # a sample is due
                win.attempts += 1
                win.sample()
                # the next is due one interval after this one's due time, or now when the loop fell
                # behind (slow NVML call, no CPU): it never bursts to catch up
                now = perf()
                next_t = max(next_t + interval, now)
            timeout = next_t - now
        else:
            timeout = 0.5  # idle: wake now and then only to check the parent is alive
        ready, _, _ = select.select([0], [], [], max(timeout, 0.0))
        if os.getppid() != parent_pid:
            return 0
        if not ready:
            continue
        data = os.read(0, 65536)
        if not data:
            return 0  # EOF: the parent closed the pipe or died
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
                cmd, rid = msg.get("cmd"), msg.get("id")
            except Exception:
                continue
            if cmd == "quit":
                return 0
            if cmd == "idle":
                reply = answer(lambda: {"used": int(nv.nvmlDeviceGetMemoryInfo(handle).used)})
            elif cmd == "energy":
                reply = answer(lambda: {"mj": int(nv.nvmlDeviceGetTotalEnergyConsumption(handle))})
            elif cmd == "start":
                _avoid_cpu(msg.get("avoid_cpu"), base_cpus)
                win = _Window(nv, handle, args.pid, not args.no_track_process,
                              track_power=bool(msg.get("power")))
                idle = None
                if msg.get("idle"):
                    try:
                        idle = win.read_used()
                    except Exception as e:
                        win.record_error(e)
                reply = {"ok": True, "idle": idle}
            elif cmd == "stop" and win is not None:
                win.sample()  # a last reading: even a window shorter than one interval has a peak
                elapsed = perf() - t_open
                reply = {"ok": True, "window": win.summary(), "elapsed_s": elapsed}
                win = None
            elif cmd == "stop":
                reply = {"ok": False, "error": "no window open"}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}"}
            send({"id": rid, **reply})
            if cmd == "start":
                t_open = next_t = perf()  # first sample at once, then every interval


def _avoid_cpu(cpu, base_cpus) -> None:
    """Keep off the CPU the measuring thread is on (when there is another one to use).

    The helper's wakeups then preempt an idle core or a helper thread (an OpenMP
    spinner), not the thread being timed: on a box where the measured process keeps
    every core busy, that is the difference between ~0% and a few % of its time.
    """
    if cpu is None or not base_cpus:
        return
    allowed = base_cpus - {int(cpu)}
    if not allowed:
        return
    try:
        if set(os.sched_getaffinity(0)) != allowed:
            os.sched_setaffinity(0, allowed)
    except (AttributeError, OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())

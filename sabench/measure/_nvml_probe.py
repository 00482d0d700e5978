"""The helper process of NvmlSampler(mode="process"): samples NVML memory, answers over a pipe.

Started by the sampler as `python .../_nvml_probe.py --device-index I --pid P ...` (run as a
file, not with -m: importing the `sabench` and `sabench.measure` packages would import torch,
and this process must start fast and stay small). It imports pynvml (or the implementation
named by --nvml "module:attribute") and the torch-free `sabench.measure.nvml`, through light
stand-ins for the two package modules.

Protocol: one JSON object per line. First the helper writes its ready line
{"id": 0, "ok": true, "mapping": ..., "notes": [...], "bus_id": ..., "energy_error": null|why,
"power_ok": bool, "pid": ...} (or
{"id": 0, "ok": false, "error": ...} and exits). Then the parent sends commands, each with an
"id" that the reply echoes:

  {"cmd": "idle"}               -> {"ok": true, "used": bytes} | {"ok": false, "error": ...}
  {"cmd": "start", "idle": b, "power": p}
                                -> {"ok": true, "idle": bytes|null}; the window opens: a sample
                                   now and every interval_s until "stop" (idle read first if b;
                                   with p, every sample also reads the power draw)
  {"cmd": "stop"}               -> {"ok": true, "window": {...}, "elapsed_s": s}
  {"cmd": "energy"}             -> {"ok": true, "mj": millijoules} (total-energy counter, any time)
  {"cmd": "quit"}               -> exits (so does EOF on stdin)

It ends with its parent: PR_SET_PDEATHSIG (Linux, when asked with --pdeathsig), EOF on stdin,
or a changed parent pid. It ignores SIGINT (a Ctrl-C is the parent's to handle). Anything
printed by the NVML implementation goes to stderr, never into the protocol.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time


def _bootstrap() -> None:
    """Make `sabench.measure.nvml` importable without running the packages' __init__ (torch)."""
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


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except Exception:
        pass  # not Linux: EOF on stdin and the parent-pid check still end us
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="_nvml_probe")
    ap.add_argument("--nvml", default=None, help='"module:attribute" of a pynvml-like object/factory')
    ap.add_argument("--device-index", type=int, default=0)
    ap.add_argument("--pci-bus-id", default=None, help="explicit bus id (overrides torch's)")
    ap.add_argument("--torch-bus-id", default=None, help="bus id torch reported in the parent")
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
        _die_with_parent(parent_pid)
    elif os.getppid() != parent_pid:
        return 0

    # The protocol gets its own copy of stdout; fd 1 then points to stderr so stray prints
    # (an NVML binding's warnings, a fake's debugging) cannot corrupt it.
    fd_out = os.dup(1)
    os.dup2(2, 1)
    fd_in = 0

    def send(obj) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(fd_out, data):]

    from sabench.measure import nvml as core  # torch-free (see _bootstrap)

    try:
        nv = core.load_nvml(args.nvml)
    except Exception as e:
        send({"id": 0, "ok": False, "error": str(e)})
        return 1
    notes: list = []
    try:  # nvmlInit, the device and the MIG note: the same code as the sampler thread's
        handle, how = core.open_device(nv, args.device_index, args.pci_bus_id, notes,
                                       ask_torch=False, torch_bus_id=args.torch_bus_id,
                                       uuid=args.uuid)
    except core.NvmlUnavailable as e:  # NVML is shut down again already
        send({"id": 0, "ok": False, "error": str(e)})
        return 1
    try:
        try:
            bus_id = core._text(nv.nvmlDeviceGetPciInfo(handle).busId).rstrip("\x00")
        except Exception:
            bus_id = None
        energy_error, power_ok = core.probe_energy(nv, handle)
        send({"id": 0, "ok": True, "mapping": how, "notes": notes, "bus_id": bus_id,
              "energy_error": energy_error, "power_ok": power_ok,
              "pid": os.getpid(), "torch_imported": "torch" in sys.modules})
        return _serve(core, nv, handle, args, parent_pid, fd_in, send)
    except BrokenPipeError:
        return 0  # the parent is gone
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def _serve(core, nv, handle, args, parent_pid: int, fd_in: int, send) -> int:
    """The command loop; samples every interval while a window is open. Returns the exit code."""
    interval = args.interval_s
    track = not args.no_track_process
    perf = time.perf_counter
    win = None  # the open window's _Window, or None
    t_open = next_t = 0.0
    buf = b""
    try:
        base_cpus = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        base_cpus = frozenset()
    while True:
        if win is not None:
            now = perf()
            if now >= next_t:  # a sample is due; paced as in the sampler thread
                next_t, now = win.paced_attempt(next_t, interval)
            timeout = next_t - now
        else:
            timeout = 0.5  # idle: wake now and then only to check the parent is alive
        ready, _, _ = select.select([fd_in], [], [], max(timeout, 0.0))
        if os.getppid() != parent_pid:
            return 0
        if not ready:
            continue
        data = os.read(fd_in, 65536)
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
                try:
                    send({"id": rid, "ok": True,
                          "used": int(nv.nvmlDeviceGetMemoryInfo(handle).used)})
                except Exception as e:
                    send({"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"})
            elif cmd == "energy":
                try:
                    send({"id": rid, "ok": True, "mj": core.energy_counter_mj(nv, handle)})
                except Exception as e:
                    send({"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"})
            elif cmd == "start":
                _avoid_cpu(msg.get("avoid_cpu"), base_cpus)
                win = core._Window(nv, handle, args.pid, track, track_power=bool(msg.get("power")))
                idle = None
                if msg.get("idle"):
                    try:
                        idle = win.read_used()
                    except Exception as e:
                        win.record_error(e)
                send({"id": rid, "ok": True, "idle": idle})
                t_open = next_t = perf()  # first sample at once, then every interval
            elif cmd == "stop":
                if win is None:
                    send({"id": rid, "ok": False, "error": "no window open"})
                    continue
                win.last()
                elapsed = perf() - t_open
                send({"id": rid, "ok": True, "window": win.state(), "elapsed_s": elapsed})
                win = None
            else:
                send({"id": rid, "ok": False, "error": f"unknown command {cmd!r}"})


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
    _bootstrap()
    sys.exit(main())

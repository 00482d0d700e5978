"""Device memory as the driver sees it, sampled by NVML in a helper process; energy readings.

Why NVML and not only torch.cuda.max_memory_allocated: the caching allocator only knows its
own blocks. The CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers, CUDA-graph pools and
anything allocated outside PyTorch are invisible to it, yet they are what makes a real
deployment run out of memory. NVML sees all of them: per process (when the driver tells us
which process is ours) and for the whole device ("used", other processes included). A window
records both peaks and the idle level read just before it.

Why a helper process (`_nvml_probe.py`: pynvml and nothing heavy, never torch): a sampler
thread at 200 Hz would cost a Python-overhead-bound loop (eager decode) several percent,
because every wakeup takes the GIL from the measuring thread. The measured process only
exchanges two short JSON lines per start()/stop(), and at each start() the helper moves off
the CPU the measuring thread is on, when it may use another, so its wakeups do not preempt
the timed thread either (benchmarks/sampler_overhead.py: under 1%). The helper (its plumbing:
nvml_process.py; device lookup and one-off reads: nvml_readings.py) is started
once per sampler (~60 ms), reused by every window, and ended by close(), __del__, atexit or
its parent's death. A forked child's copy of a sampler never touches the helper's pipe.

Pitfalls handled here:

* Device identity: torch index i is in general *not* NVML index i (NVML enumerates by PCI
  bus and ignores CUDA_VISIBLE_DEVICES; CUDA enumerates by CUDA_DEVICE_ORDER among the
  visible devices). The helper looks the device up by the PCI bus id (or UUID) torch reports
  in the measured process (`resolve_handle`), and by index only as a fallback, with a note.
* Per-process usage in containers: NVML lists PIDs of the host PID namespace (or nothing),
  so os.getpid() often matches nothing. The per-process peak is then None with a note, not a
  wrong number (the worker falls back to the device's reading minus the level before its
  process touched CUDA: `used_bytes_by_bus`).
* Failures never raise into the caller: NVML errors while sampling are counted in `notes`, a
  failed read_idle() returns None with a note, and a helper that crashes or hangs costs at
  most a short timeout and a note (it is restarted, a few times, for the next window).

Energy: `energy_mj()` reads the device's total-energy counter (Volta and later); where it is
missing, windows also sample the power draw (`power_samples`) for sabench.measure.energy.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
import weakref
from typing import Optional

from sabench.measure.nvml_process import PROBE_PATH, current_cpu, Probe
from sabench.measure import nvml_readings
from sabench.measure.nvml_readings import NvmlUnavailable, load_nvml, torch_pci_bus_id, torch_uuid

DEFAULT_INTERVAL_S = 0.005  # 200 Hz: a prefill forward of a few ms is still seen

# The helper answers a command within microseconds unless it is stuck inside an NVML call.
REPLY_TIMEOUT_S = 2.0
MAX_RESTARTS = 3  # helpers started again after one died, per sampler


class NvmlSampler:
    """Sampler of one GPU's used memory (and this process's, when visible), in a helper process.

    Usage::

        if NvmlSampler.available():
            with NvmlSampler(device_index=0) as s:
                run_the_thing()
            s.result["peak_process_bytes"], s.result["peak_minus_idle_bytes"]

    or explicitly `s = NvmlSampler(0); s.read_idle(); s.start(); ...; r = s.stop(); s.close()`.
    A sampler runs any number of start()/stop() windows before close().

    `nvml` is None (pynvml) or a "module:attribute" string naming a pynvml-like object or a
    factory of one, which the helper imports (tests: "tests.fake_nvml:make_fake"). The
    constructor starts the helper, which initialises NVML and resolves the device, and waits
    until it is ready (NvmlUnavailable if NVML cannot be used).
    """

    def __init__(self, device_index: int = 0, *, interval_s: float = DEFAULT_INTERVAL_S,
                 nvml: Optional[str] = None, pci_bus_id: Optional[str] = None, track_process: bool = True):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if nvml is not None and not isinstance(nvml, str):
            raise ValueError("nvml must be None or a 'module:attribute' string: NVML runs in the "
                             "sampler's helper process, which cannot be handed an object")
        if nvml is None:
            load_nvml(None)  # fail fast (NvmlUnavailable) where pynvml is not even importable
        self.device_index = int(device_index)
        self.interval_s = float(interval_s)
        self.track_process = bool(track_process)
        self.pid = os.getpid()
        self.result: Optional[dict] = None
        # the helper never imports torch: torch's ids of the device are taken here
        uuid = None
        if pci_bus_id is None:
            pci_bus_id, uuid = torch_pci_bus_id(self.device_index), torch_uuid(self.device_index)
        self._argv = [sys.executable, PROBE_PATH, "--device-index", str(self.device_index),
                      "--pid", str(self.pid), "--parent-pid", str(self.pid),
                      "--interval-s", repr(self.interval_s)]
        for flag, value in (("--nvml", nvml), ("--pci-bus-id", pci_bus_id), ("--uuid", uuid)):
            if value is not None:
                self._argv += [flag, str(value)]
        if not self.track_process:
            self._argv.append("--no-track-process")
        self._idle: Optional[int] = None
        self._running = False
        # notes for the open window, or the next one (a failed read_idle, a restarted helper)
        self._window_notes: list[str] = []
        self._restarts = 0
        self._probe: Optional[Probe] = Probe(self._argv)
        ready = self._probe.ready
        self.mapping: Optional[str] = ready.get("mapping")  # how the device was found: pci_bus_id|uuid|index
        self.nvml_pci_bus_id: Optional[str] = ready.get("bus_id")  # the bus id of the NVML device sampled
        # None when nvmlDeviceGetTotalEnergyConsumption works; else why not, and windows then sample
        # the power draw too where it can be read (power_sampling; result["power_samples"])
        self.energy_error: Optional[str] = ready.get("energy_error")
        self.power_sampling = bool(ready.get("power_ok"))
        self.notes: list[str] = list(ready.get("notes") or [])  # mapping caveats, MIG
        self._open = True
        _LIVE.add(self)

    available = staticmethod(nvml_readings.available)  # can a sampler be opened here? (never raises)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def child_pid(self) -> Optional[int]:
        """Pid of the helper process while it lives, else None."""
        probe = getattr(self, "_probe", None)
        return probe.proc.pid if probe is not None and probe.alive() else None

    # -- the helper ---------------------------------------------------------------------

    def _live_probe(self) -> Optional["Probe"]:
        """The helper, restarted (a few times per sampler) if it died; None if there is none."""
        if self._probe is not None:
            if self._probe.alive():
                return self._probe
            self._window_notes.append(
                f"NVML sampler process ended unexpectedly ({self._probe.describe_death()})")
            self._probe.kill()
            self._probe = None
        if self._restarts >= MAX_RESTARTS:
            return None
        self._restarts += 1
        try:
            self._probe = Probe(self._argv)
            self._window_notes.append("NVML sampler process restarted")
        except NvmlUnavailable as e:
            self._window_notes.append(f"NVML sampler process could not be restarted: {e}")
        return self._probe

    def _request(self, cmd: dict, what: str, notes: list, *, restart: bool) -> Optional[dict]:
        """The helper's ok reply to `cmd`, or None with the reason appended to `notes`.

        A helper that does not answer in time is killed: it is stuck in an NVML call. With
        restart=True a dead helper is restarted first (never inside a window: a new helper
        knows nothing of it).
        """
        probe = self._live_probe() if restart else self._probe
        if probe is None:
            notes.append(f"no NVML sampler process for {what}; no readings")
            return None
        reply = probe.request(cmd, REPLY_TIMEOUT_S)
        if reply is None:
            notes.append(f"NVML sampler process failed during {what} ({probe.failure}); "
                         "no readings from it")
            probe.kill()
            self._probe = None
            return None
        if not reply.get("ok"):
            notes.append(f"NVML sampler process could not do {what}: {reply.get('error')}")
            return None
        return reply

    def _check_usable(self, what: str) -> None:
        if not getattr(self, "_open", False):
            raise RuntimeError(f"NvmlSampler.{what}() after close()")
        if os.getpid() != self.pid:
            raise RuntimeError("NvmlSampler used in a forked child of the process that created it "
                               "(its helper is the parent's); create a new sampler there")

    # -- readings and windows -----------------------------------------------------------

    def read_idle(self) -> Optional[int]:
        """Take the idle reading now (used bytes); start() then keeps it instead of reading again.

        If the reading fails it returns None (start() then tries again) and notes why in
        the next result; it never raises an NVML error.
        """
        self._check_usable("read_idle")
        reply = self._request({"cmd": "idle"}, "read_idle()", self._window_notes,
                              restart=not self._running)
        if reply is None or reply.get("used") is None:
            return None
        self._idle = int(reply["used"])
        return self._idle

    def energy_mj(self) -> Optional[int]:
        """The device's total-energy counter now (millijoules), or None (no counter, or it failed).

        Callers synchronise the device first; the difference of two readings is the energy
        the GPU drew in between (the whole board: other processes' work counts too).
        """
        self._check_usable("energy_mj")
        if self.energy_error is not None:
            return None
        reply = self._request({"cmd": "energy"}, "energy_mj()", [], restart=not self._running)
        return int(reply["mj"]) if reply is not None else None

    def start(self) -> "NvmlSampler":
        """Take the idle reading (unless read_idle() already did) and start sampling."""
        if self._running:
            raise RuntimeError("NvmlSampler.start(): already running")
        self._check_usable("start")
        reply = self._request({"cmd": "start", "idle": self._idle is None, "avoid_cpu": current_cpu(),
                               "power": self.power_sampling}, "start()", self._window_notes, restart=True)
        if reply is not None and self._idle is None and reply.get("idle") is not None:
            self._idle = int(reply["idle"])
        self._t_start = time.perf_counter()
        self._running = True
        return self

    def stop(self) -> dict:
        """End the window and return its readings (promptly, whatever the helper's state).

        The helper takes one last reading after its loop has stopped, so even a window
        shorter than one interval has a peak.
        """
        if not self._running:
            raise RuntimeError("NvmlSampler.stop(): not running")
        self._running = False
        if os.getpid() != self.pid:
            # A forked child's copy (e.g. its atexit): the pipe is the parent's, and a "stop"
            # sent from here would take the parent's window. Drop the local state only.
            self._idle, self._window_notes = None, []
            self._check_usable("stop")
        elapsed = max(time.perf_counter() - self._t_start, 1e-9)
        notes, self._window_notes = self.notes + self._window_notes, []
        reply = self._request({"cmd": "stop"}, "the window", notes, restart=False)
        win = (reply or {}).get("window")
        if isinstance(win, dict):
            achieved_hz = win.get("attempts", 0) / max(float(reply.get("elapsed_s") or elapsed), 1e-9)
        else:
            win, achieved_hz = {}, 0.0
        notes += win.get("notes") or []
        peak, idle, delta = win.get("peak"), self._idle, None
        if peak is not None and idle is not None:
            delta = peak - idle
            if delta < 0:  # device-wide "used": another process freed memory during the window
                notes.append(f"peak used memory ({peak} B) below the idle reading ({idle} B): "
                             "NVML's used memory is device-wide, so another process freed memory "
                             "during the window; peak_minus_idle_bytes clamped to 0")
                delta = 0
        self._idle = None  # the next window takes its own idle reading
        self.result = {
            "peak_used_bytes": peak,
            "idle_used_bytes": idle,
            "peak_minus_idle_bytes": delta,
            "peak_process_bytes": win.get("peak_proc"),
            "power_samples": win.get("power"),
            "n_samples": win.get("n", 0),
            "interval_s": self.interval_s,
            "achieved_hz": achieved_hz,
            "duration_s": elapsed,
            "device_mapping": self.mapping,
            "notes": notes,
        }
        return self.result

    def close(self) -> None:
        """Stop if running and end the helper process (once; idempotent).

        In a forked child it only drops the sampler's local state: the helper and its
        pipe belong to the parent.
        """
        if getattr(self, "_running", False):
            with contextlib.suppress(Exception):
                self.stop()
        if not getattr(self, "_open", False):
            return
        self._open = False
        _LIVE.discard(self)
        probe, self._probe = self._probe, None
        if probe is not None and os.getpid() == self.pid:  # a forked child must not end it
            probe.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._running:
            self.stop()
        self.close()


# Samplers still open at interpreter exit get their helper ended by atexit (close() and
# __del__ normally do it; the helper also ends by itself on EOF and on its parent's death).
_LIVE: "weakref.WeakSet[NvmlSampler]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for s in list(_LIVE):
        with contextlib.suppress(Exception):
            s.close()

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
the timed thread either (benchmarks/sampler_overhead.py: under 1%). The helper is started
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
import functools
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Optional

DEFAULT_INTERVAL_S = 0.005  # 200 Hz: a prefill forward of a few ms is still seen

# Helper-process timeouts (seconds). The helper answers a command within microseconds unless it
# is stuck inside an NVML call; nvmlInit can take seconds on a host without persistence mode.
READY_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 2.0
MAX_RESTARTS = 3  # helpers started again after one died, per sampler

PROBE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nvml_probe.py")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (pynvml missing, no driver, no device)."""


@dataclass(frozen=True)
class Availability:
    """Truthy when NVML can be used; `reason` says why not otherwise."""

    ok: bool
    reason: Optional[str] = None

    def __bool__(self) -> bool:
        return self.ok


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _text(x) -> str:
    return x.decode(errors="replace") if isinstance(x, (bytes, bytearray)) else str(x)


def load_nvml(nvml=None):
    """The NVML implementation to use.

    None: `import pynvml` (nvidia-ml-py). A string "module:attribute" (or just
    "module"): that object, called without arguments first if it is a factory
    rather than something with the pynvml API (e.g. "tests.fake_nvml:make_fake").
    Anything else: the injected object itself.
    """
    if nvml is None:
        try:
            import pynvml  # noqa: PLC0415  (optional dependency, imported on demand)
        except Exception as e:  # ImportError, or a broken install raising something else
            raise NvmlUnavailable(f"pynvml is not importable ({_why(e)}); install nvidia-ml-py") from e
        return pynvml
    if not isinstance(nvml, str):
        return nvml
    module, _, attr = nvml.partition(":")
    try:
        obj = importlib.import_module(module.strip())
        for part in (attr.strip().split(".") if attr.strip() else []):
            obj = getattr(obj, part)
        if not hasattr(obj, "nvmlInit") and callable(obj):
            obj = obj()
    except Exception as e:
        raise NvmlUnavailable(f"cannot load the NVML implementation {nvml!r} ({_why(e)})") from e
    if not hasattr(obj, "nvmlInit"):
        raise NvmlUnavailable(f"{nvml!r} does not provide the pynvml API (no nvmlInit)")
    return obj


def _init(mod) -> None:
    try:
        mod.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"nvmlInit failed ({_why(e)})") from e


def _shutdown(mod) -> None:
    with contextlib.suppress(Exception):
        mod.nvmlShutdown()


@contextlib.contextmanager
def _initialised(nvml=None):
    """The NVML implementation (load_nvml), initialised for the with block and shut down after."""
    mod = load_nvml(nvml)
    _init(mod)
    try:
        yield mod
    finally:
        _shutdown(mod)


def _devices(nvml):
    """(parsed PCI bus id, handle) of every GPU NVML sees, in NVML's order."""
    for i in range(int(nvml.nvmlDeviceGetCount())):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        yield parse_pci_bus_id(nvml.nvmlDeviceGetPciInfo(h).busId), h


def parse_pci_bus_id(bus_id) -> Optional[tuple[int, int, int]]:
    """'00000000:1A:00.0' / '0000:1a:00.0' / '1a:00.0' -> (domain, bus, device); None if unparsable.

    NVML and CUDA print the domain with 8 or 4 hex digits and in either case,
    so ids are compared on their numeric parts (the function is always 0 for
    a GPU's compute function).
    """
    if bus_id is None:
        return None
    parts = _text(bus_id).strip().rstrip("\x00").split(":")
    if len(parts) == 2:
        parts = ["0"] + parts
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".")[0], 16)
    except ValueError:
        return None


def _torch_props(device_index: int):
    """torch's properties of CUDA device `device_index`, or None (no CUDA, or torch failed)."""
    try:
        import torch

        return torch.cuda.get_device_properties(device_index) if torch.cuda.is_available() else None
    except Exception:
        return None


def torch_pci_bus_id(device_index: int) -> Optional[str]:
    """PCI bus id 'DDDDDDDD:BB:DD.0' of torch CUDA device `device_index`, or None.

    torch exposes pciDomainID/pciBusID/pciDeviceID of cudaDeviceProp as the int
    attributes pci_domain_id/pci_bus_id/pci_device_id (recent releases; 2.11
    has them). Some builds might expose a ready string instead; accept both.
    """
    props = _torch_props(device_index)
    bus, dev = getattr(props, "pci_bus_id", None), getattr(props, "pci_device_id", None)
    if isinstance(bus, (str, bytes)) and parse_pci_bus_id(bus) is not None:
        return _text(bus)
    if isinstance(bus, int) and isinstance(dev, int):
        return f"{int(getattr(props, 'pci_domain_id', 0) or 0):08X}:{bus:02X}:{dev:02X}.0"
    return None


def torch_uuid(device_index: int) -> Optional[str]:
    """'GPU-xxxxxxxx-...' NVML-style UUID of torch CUDA device `device_index`, or None."""
    uuid = getattr(_torch_props(device_index), "uuid", None)
    if uuid is None:
        return None
    s = str(uuid)
    return s if s.startswith(("GPU-", "MIG-")) else f"GPU-{s}"


def resolve_handle(nvml, device_index: int, pci_bus_id: Optional[str] = None,
                   notes: Optional[list] = None, *, uuid: Optional[str] = None, ask_torch: bool = True):
    """NVML handle of torch CUDA device `device_index` -> (handle, how).

    `how` is 'pci_bus_id', 'uuid' or 'index': the device is looked up by `pci_bus_id`, then by
    `uuid`, then by index. Without `pci_bus_id` (and unless ask_torch=False: the sampler's
    helper, which never imports torch, gets both ids from its parent) torch is asked for
    both. The index fallback appends a warning to `notes` when NVML sees more than one GPU,
    because then it may be the wrong one.
    """
    notes = notes if notes is not None else []
    from_torch = pci_bus_id is None and ask_torch
    bus_id = torch_pci_bus_id(device_index) if from_torch else pci_bus_id
    if bus_id is not None:
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(bus_id), "pci_bus_id"
        except Exception as e:  # format quirk or old driver: compare ids ourselves
            error = e
        want = parse_pci_bus_id(bus_id)
        if want is not None:
            try:
                for bus, h in _devices(nvml):
                    if bus == want:
                        return h, "pci_bus_id"
            except Exception as e:
                error = e
        notes.append(f"NVML has no device with PCI bus id {bus_id!r} ({_why(error)})")
    if from_torch:
        uuid = torch_uuid(device_index)
    if uuid is not None and hasattr(nvml, "nvmlDeviceGetHandleByUUID"):
        try:
            return nvml.nvmlDeviceGetHandleByUUID(uuid), "uuid"
        except Exception as e:
            notes.append(f"NVML has no device with UUID {uuid!r} ({_why(e)})")
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        count = None
    handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
    if count != 1:
        notes.append(
            f"NVML device chosen by index {device_index}: the PCI bus id of torch device "
            f"{device_index} could not be resolved. NVML enumerates GPUs by PCI bus order and "
            "ignores CUDA_VISIBLE_DEVICES, CUDA by CUDA_DEVICE_ORDER (default FASTEST_FIRST), so on "
            "a multi-GPU host this may be a different GPU")
    return handle, "index"


def open_device(nvml, device_index: int, pci_bus_id: Optional[str] = None,
                notes: Optional[list] = None, **resolve_kw):
    """nvmlInit, then the handle of torch CUDA device `device_index` -> (handle, how).

    Mapping caveats and the MIG note go to `notes`. Raises NvmlUnavailable when
    nvmlInit fails or no handle can be had (NVML is shut down again then); on
    success the caller owns one nvmlInit and must call nvmlShutdown. `resolve_kw`
    is passed on to resolve_handle (uuid, ask_torch).
    """
    notes = notes if notes is not None else []
    _init(nvml)
    try:
        handle, how = resolve_handle(nvml, device_index, pci_bus_id, notes, **resolve_kw)
    except Exception as e:
        _shutdown(nvml)
        raise NvmlUnavailable(f"no NVML handle for CUDA device {device_index} ({_why(e)})") from e
    with contextlib.suppress(Exception):  # no nvmlDeviceGetMigMode, or not supported
        if nvml.nvmlDeviceGetMigMode(handle)[0] == 1:
            notes.append("MIG is enabled on this GPU: NVML device memory covers the whole GPU, "
                         "not only this process's MIG instance")
    return handle, how


def used_bytes_by_bus(nvml=None) -> dict:
    """{PCI bus id: used bytes} for every GPU NVML sees, read now; torch is not touched.

    The worker calls it before its process initialises CUDA: that level (other processes, the
    driver's own reservations) is what `nvml-device` readings subtract. Keys are normalised by
    parse_pci_bus_id so that they match whatever form torch or NVML print later.
    Raises NvmlUnavailable when NVML cannot be used.
    """
    out = {}
    with _initialised(nvml) as mod:
        try:
            for bus, h in _devices(mod):
                if bus is not None:
                    out[bus] = int(mod.nvmlDeviceGetMemoryInfo(h).used)
        except Exception as e:
            raise NvmlUnavailable(f"reading device memory failed ({_why(e)})") from e
    return out


def nvml_device_info(device_index: int = 0, nvml=None, pci_bus_id: Optional[str] = None) -> dict:
    """Static facts about torch CUDA device `device_index` for results.json's env.

    Keys (each present only when NVML answered): device_name, driver,
    memory_total_bytes, sm_clock_max_mhz, mem_clock_max_mhz, power_limit_w,
    pci_bus_id, plus `nvml_notes` when the device mapping needed a caveat.
    Raises NvmlUnavailable when NVML itself cannot be used.
    """
    mod = load_nvml(nvml)
    notes: list[str] = []
    handle, _how = open_device(mod, device_index, pci_bus_id, notes)

    def power_limit_w():
        try:
            mw = mod.nvmlDeviceGetEnforcedPowerLimit(handle)
        except Exception:
            mw = mod.nvmlDeviceGetPowerManagementLimit(handle)
        return float(mw) / 1000.0

    readers = {
        "device_name": lambda: _text(mod.nvmlDeviceGetName(handle)),
        "driver": lambda: _text(mod.nvmlSystemGetDriverVersion()),
        "memory_total_bytes": lambda: int(mod.nvmlDeviceGetMemoryInfo(handle).total),
        "sm_clock_max_mhz": lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_SM)),
        "mem_clock_max_mhz": lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_MEM)),
        "power_limit_w": power_limit_w,
        "pci_bus_id": lambda: _text(mod.nvmlDeviceGetPciInfo(handle).busId),
    }
    info: dict = {}
    try:
        for key, read in readers.items():
            with contextlib.suppress(Exception):  # a query this device or driver does not support
                value = read()
                if value is not None:
                    info[key] = value
    finally:
        _shutdown(mod)
    if notes:
        info["nvml_notes"] = notes
    return info


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
        self._probe: Optional[_Probe] = _Probe(self._argv)
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

    @staticmethod
    def available(nvml=None) -> Availability:
        """Can NVML be used here? Falsy Availability with a reason otherwise. Never raises."""
        try:
            with _initialised(nvml) as mod:
                n = int(mod.nvmlDeviceGetCount())
        except NvmlUnavailable as e:
            return Availability(False, str(e))
        except Exception as e:
            return Availability(False, f"nvmlDeviceGetCount failed ({_why(e)})")
        return Availability(True) if n >= 1 else Availability(False, "NVML reports no GPU")

    @property
    def running(self) -> bool:
        return self._running

    @property
    def child_pid(self) -> Optional[int]:
        """Pid of the helper process while it lives, else None."""
        probe = getattr(self, "_probe", None)
        return probe.proc.pid if probe is not None and probe.alive() else None

    # -- the helper ---------------------------------------------------------------------

    def _live_probe(self) -> Optional["_Probe"]:
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
            self._probe = _Probe(self._argv)
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
        reply = self._request({"cmd": "start", "idle": self._idle is None, "avoid_cpu": _current_cpu(),
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


@functools.lru_cache(maxsize=None)
def _sched_getcpu():
    """libc's sched_getcpu (Linux), or None."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).sched_getcpu
        fn.restype, fn.argtypes = ctypes.c_int, []
        return fn
    except Exception:  # not Linux
        return None


def _current_cpu() -> Optional[int]:
    """The CPU the calling thread runs on now (Linux), else None."""
    fn = _sched_getcpu()
    cpu = fn() if fn is not None else -1
    return cpu if cpu >= 0 else None


class _Probe:
    """The parent's end of one helper process: JSON lines over its stdin/stdout.

    Every command carries an id that the reply echoes, so a late reply can never be
    taken for the answer to a later command. Reads are bounded by timeouts; when one
    gets no answer, `failure` says why.
    """

    def __init__(self, argv: list):
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends: only ask for it
        # from the main thread (EOF on the pipe and the parent-pid check cover the rest).
        if threading.current_thread() is threading.main_thread():
            argv = argv + ["--pdeathsig"]
        root = os.path.dirname(os.path.dirname(os.path.dirname(PROBE_PATH)))  # holds `sabench`
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + paths))
        self._buf = b""
        self._next_id = 1
        self.failure: Optional[str] = None
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, env=env, close_fds=True, bufsize=0)
        except Exception as e:
            self._stderr.close()
            raise NvmlUnavailable(f"cannot start the NVML sampler process ({_why(e)})") from e
        ready = self._read_reply(0, READY_TIMEOUT_S)
        if ready is None or not ready.get("ok"):
            why = self.failure if ready is None else ready.get("error")
            self.kill()
            raise NvmlUnavailable(str(why))
        self.ready = ready

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, cmd: dict, timeout: float) -> Optional[dict]:
        rid, self._next_id = self._next_id, self._next_id + 1
        try:
            self.proc.stdin.write(json.dumps(dict(cmd, id=rid)).encode() + b"\n")
        except (OSError, ValueError) as e:  # BrokenPipeError: it is gone
            self.failure = f"cannot write to it ({_why(e)}); {self.describe_death()}"
            return None
        return self._read_reply(rid, timeout)

    def _read_reply(self, rid: int, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue  # not ours (the helper sends stray output to stderr, but be lenient)
                    if isinstance(msg, dict) and msg.get("id") == rid:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    self.failure = f"no answer within {timeout:.1f} s (stuck in an NVML call?); killed it"
                    return None
                try:
                    if not sel.select(left):
                        continue
                    data = os.read(self.proc.stdout.fileno(), 65536)
                except OSError as e:
                    self.failure = f"cannot read from it ({_why(e)})"
                    return None
                if not data:  # EOF: it died
                    with contextlib.suppress(Exception):
                        self.proc.wait(timeout=1.0)
                    self.failure = self.describe_death()
                    return None
                self._buf += data

    def describe_death(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            what = "it is still running"
        elif rc < 0:
            try:
                what = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                what = f"killed by signal {-rc}"
        else:
            what = f"exit code {rc}"
        try:  # the tail of its stderr; pread: the helper shares the file's offset, which must not move
            fd = self._stderr.fileno()
            tail = os.pread(fd, 400, max(0, os.fstat(fd).st_size - 400))
            tail = tail.decode(errors="replace").strip().replace("\n", " | ")
        except Exception:
            tail = ""
        return what + (f"; stderr: {tail}" if tail else "")

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=1.0)
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            with contextlib.suppress(Exception):
                f.close()

    def close(self, timeout: float = 1.0) -> None:
        """Ask it to quit (and close its stdin: EOF ends it too), then kill if it lingers."""
        with contextlib.suppress(Exception):  # a forked copy of the parent may hold the pipe: no EOF
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=timeout)
        self.kill()

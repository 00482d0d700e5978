"""Device memory as the driver sees it, sampled by NVML in a helper process; energy readings.

Why NVML and not only torch.cuda.max_memory_allocated: the caching allocator
only knows its own blocks. The CUDA context, cuBLAS/cuDNN workspaces, NCCL
buffers, CUDA-graph pools and anything allocated outside PyTorch are invisible
to it, yet they are what makes a real deployment run out of memory. NVML sees
all of them: per process (nvmlDeviceGetComputeRunningProcesses, when the driver
tells us which process is ours) and for the whole device ("used", other
processes included). A window records both peaks and the idle level read just
before it (peak - idle, the phase's rise, is clamped at 0 with a note when
another process freed memory during the window).

The sampling loop runs in a long-lived helper process (`_nvml_probe.py`, which
imports pynvml and nothing heavy, never torch) while a window is open; the
measured process only exchanges two short JSON lines per start()/stop() over a
pipe. A sampler thread at 200 Hz would cost a Python-overhead-bound loop (eager
decode) several percent, because every wakeup takes the GIL from the measuring
thread; a process shares no GIL. At each start() the helper also moves off the
CPU the measuring thread is on (when it may use another), so its wakeups do not
preempt the timed thread either (benchmarks/sampler_overhead.py: under 1%).
The helper is started once per sampler (~60 ms) and reused by every window; it
dies with its parent (PR_SET_PDEATHSIG, EOF on its command pipe, a parent-pid
check) and is ended by close(), __del__ and atexit. In a forked child the
sampler's copy never uses the helper's pipe: start()/read_idle()/stop() raise
RuntimeError there, and close() (atexit included) only drops the copy's state.

Three pitfalls this module handles:

* Device identity. NVML enumerates GPUs in PCI bus order and ignores
  CUDA_VISIBLE_DEVICES; CUDA (hence torch) enumerates by CUDA_DEVICE_ORDER
  (default FASTEST_FIRST) among the visible devices. torch index i is in
  general *not* NVML index i. We take the torch device's PCI bus id (or UUID)
  in the measured process and the helper asks NVML for that device
  (`open_device`, `resolve_handle`); only when that is impossible does it fall
  back to index i, and say so in `notes`.
* Per-process usage in containers. nvmlDeviceGetComputeRunningProcesses lists
  PIDs of the host PID namespace (or nothing at all), so os.getpid() inside a
  container often matches nothing. Then the per-process peak is None and a note
  explains why, instead of a wrong number (the worker then falls back to the
  device's reading minus the level before its process touched CUDA:
  `used_bytes_by_bus`). The pid tracked is the one of the process that created
  the sampler.
* Sampler failures. Sampling never raises into the caller: NVML errors while
  sampling are counted and reported in `notes`, a failed read_idle() returns
  None with a note; a helper that crashes or hangs costs at most a short
  timeout and leaves a note (it is restarted, a few times, for the next window).

Energy: `energy_mj()` reads the device's total-energy counter (Volta and
later); where it is missing, windows also sample the power draw
(`power_samples`) so that sabench.measure.energy can integrate it.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
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


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (pynvml missing, no driver, no device)."""


@dataclass(frozen=True)
class Availability:
    """Truthy when NVML can be used; `reason` says why not otherwise."""

    ok: bool
    reason: Optional[str] = None

    def __bool__(self) -> bool:
        return self.ok


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
            raise NvmlUnavailable(f"pynvml is not importable ({type(e).__name__}: {e}); "
                                  "install nvidia-ml-py") from e
        return pynvml
    if isinstance(nvml, str):
        return _load_spec(nvml)
    return nvml


def _load_spec(spec: str):
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module.strip())
        for part in (attr.strip().split(".") if attr.strip() else []):
            obj = getattr(obj, part)
        if not hasattr(obj, "nvmlInit") and callable(obj):
            obj = obj()
    except Exception as e:
        raise NvmlUnavailable(f"cannot load the NVML implementation {spec!r} "
                              f"({type(e).__name__}: {e})") from e
    if not hasattr(obj, "nvmlInit"):
        raise NvmlUnavailable(f"{spec!r} does not provide the pynvml API (no nvmlInit)")
    return obj


@contextlib.contextmanager
def _initialised(nvml=None):
    """The NVML implementation (load_nvml), initialised for the with block and shut down after."""
    mod = load_nvml(nvml)
    try:
        mod.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"nvmlInit failed ({type(e).__name__}: {e})") from e
    try:
        yield mod
    finally:
        try:
            mod.nvmlShutdown()
        except Exception:
            pass


def _text(x) -> str:
    return x.decode(errors="replace") if isinstance(x, (bytes, bytearray)) else str(x)


def parse_pci_bus_id(bus_id) -> Optional[tuple[int, int, int]]:
    """'00000000:1A:00.0' / '0000:1a:00.0' / '1a:00.0' -> (domain, bus, device); None if unparsable.

    NVML and CUDA print the domain with 8 or 4 hex digits and in either case,
    so ids are compared on their numeric parts (the function is always 0 for
    a GPU's compute function).
    """
    if bus_id is None:
        return None
    s = _text(bus_id).strip().rstrip("\x00")
    parts = s.split(":")
    try:
        if len(parts) == 3:
            domain, bus, devfn = parts
        elif len(parts) == 2:
            domain, (bus, devfn) = "0", parts
        else:
            return None
        dev = devfn.split(".")[0]
        return int(domain, 16), int(bus, 16), int(dev, 16)
    except ValueError:
        return None


def torch_pci_bus_id(device_index: int) -> Optional[str]:
    """PCI bus id 'DDDDDDDD:BB:DD.0' of torch CUDA device `device_index`, or None.

    torch exposes pciDomainID/pciBusID/pciDeviceID of cudaDeviceProp as the int
    attributes pci_domain_id/pci_bus_id/pci_device_id (recent releases; 2.11
    has them). Some builds might expose a ready string instead; accept both.
    """
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(device_index)
    except Exception:
        return None
    bus = getattr(props, "pci_bus_id", None)
    if isinstance(bus, (str, bytes)) and parse_pci_bus_id(bus) is not None:
        return _text(bus)
    if isinstance(bus, int):
        domain = getattr(props, "pci_domain_id", 0) or 0
        dev = getattr(props, "pci_device_id", None)
        if isinstance(dev, int):
            return f"{int(domain):08X}:{bus:02X}:{dev:02X}.0"
    return None


def torch_uuid(device_index: int) -> Optional[str]:
    """'GPU-xxxxxxxx-...' NVML-style UUID of torch CUDA device `device_index`, or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    except Exception:
        return None
    if uuid is None:
        return None
    s = str(uuid)
    return s if s.startswith(("GPU-", "MIG-")) else f"GPU-{s}"


def resolve_handle(nvml, device_index: int, pci_bus_id: Optional[str] = None,
                   notes: Optional[list] = None, *, ask_torch: bool = True,
                   torch_bus_id: Optional[str] = None, uuid: Optional[str] = None):
    """NVML handle of torch CUDA device `device_index` -> (handle, how).

    `how` is 'pci_bus_id', 'uuid' or 'index'. `pci_bus_id` overrides the
    lookup through torch (tests, or callers that already know it). The index
    fallback appends a warning to `notes` when NVML sees more than one GPU,
    because then it may be the wrong one.

    With ask_torch=False torch is not imported: `torch_bus_id` and `uuid` are
    what torch said in another process (the sampler's helper process resolves
    the device this way, with the ids its parent took from torch).
    """
    notes = notes if notes is not None else []
    bus_id = pci_bus_id
    if bus_id is None:
        bus_id = torch_pci_bus_id(device_index) if ask_torch else torch_bus_id
    if bus_id is not None:
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(bus_id), "pci_bus_id"
        except Exception as e:  # format quirk or old driver: compare ids ourselves
            first_error = e
        want = parse_pci_bus_id(bus_id)
        if want is not None:
            try:
                for i in range(int(nvml.nvmlDeviceGetCount())):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    if parse_pci_bus_id(nvml.nvmlDeviceGetPciInfo(h).busId) == want:
                        return h, "pci_bus_id"
            except Exception as e:
                first_error = e
        notes.append(f"NVML has no device with PCI bus id {bus_id!r} "
                     f"({type(first_error).__name__}: {first_error})")
    if pci_bus_id is None:
        if ask_torch:
            uuid = torch_uuid(device_index)
        if uuid is not None and hasattr(nvml, "nvmlDeviceGetHandleByUUID"):
            try:
                return nvml.nvmlDeviceGetHandleByUUID(uuid), "uuid"
            except Exception as e:
                notes.append(f"NVML has no device with UUID {uuid!r} ({type(e).__name__}: {e})")
    count = None
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        pass
    handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
    if count != 1:
        notes.append(
            f"NVML device chosen by index {device_index}: the PCI bus id of torch device "
            f"{device_index} could not be resolved. NVML enumerates GPUs by PCI bus order and "
            "ignores CUDA_VISIBLE_DEVICES, CUDA by CUDA_DEVICE_ORDER (default FASTEST_FIRST), so on "
            "a multi-GPU host this may be a different GPU")
    return handle, "index"


def _mig_note(nvml, handle) -> Optional[str]:
    fn = getattr(nvml, "nvmlDeviceGetMigMode", None)
    if fn is None:
        return None
    try:
        current = fn(handle)[0]
    except Exception:
        return None
    if current == 1:
        return ("MIG is enabled on this GPU: NVML device memory covers the whole GPU, "
                "not only this process's MIG instance")
    return None


def open_device(nvml, device_index: int, pci_bus_id: Optional[str] = None,
                notes: Optional[list] = None, **resolve_kw):
    """nvmlInit, then the handle of torch CUDA device `device_index` -> (handle, how).

    Mapping caveats and the MIG note go to `notes`. Raises NvmlUnavailable when
    nvmlInit fails or no handle can be had (NVML is shut down again then); on
    success the caller owns one nvmlInit and must call nvmlShutdown. `resolve_kw`
    is passed on to resolve_handle (ask_torch, torch_bus_id, uuid).
    """
    notes = notes if notes is not None else []
    try:
        nvml.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"nvmlInit failed ({type(e).__name__}: {e})") from e
    try:
        handle, how = resolve_handle(nvml, device_index, pci_bus_id, notes, **resolve_kw)
    except Exception as e:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
        raise NvmlUnavailable(f"no NVML handle for CUDA device {device_index} "
                              f"({type(e).__name__}: {e})") from e
    mig = _mig_note(nvml, handle)
    if mig:
        notes.append(mig)
    return handle, how


def energy_counter_mj(nvml, handle) -> int:
    """The device's total-energy counter in millijoules since the driver loaded (Volta and later)."""
    return int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))


def probe_energy(nvml, handle) -> tuple[Optional[str], bool]:
    """(why the total-energy counter cannot be read or None, whether the power draw can be read).

    Windows sample the power draw only when the counter is missing: energy is then integrated
    from those samples.
    """
    try:
        energy_counter_mj(nvml, handle)
        return None, False
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
    try:
        int(nvml.nvmlDeviceGetPowerUsage(handle))
        return why, True
    except Exception:
        return why, False


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
            for i in range(int(mod.nvmlDeviceGetCount())):
                h = mod.nvmlDeviceGetHandleByIndex(i)
                bus = parse_pci_bus_id(mod.nvmlDeviceGetPciInfo(h).busId)
                if bus is not None:
                    out[bus] = int(mod.nvmlDeviceGetMemoryInfo(h).used)
        except Exception as e:
            raise NvmlUnavailable(f"reading device memory failed ({type(e).__name__}: {e})") from e
    return out


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
        self.notes: list[str] = []
        self.result: Optional[dict] = None
        self._spec, self._pci_bus_id = nvml, pci_bus_id
        # the helper never imports torch: torch's ids of the device are taken here
        self._torch_ids = ((torch_pci_bus_id(self.device_index), torch_uuid(self.device_index))
                           if pci_bus_id is None else (None, None))
        self._idle: Optional[int] = None
        self._running = False
        self._t_start = 0.0
        self._pending: list[str] = []  # notes for the next window (a failed read_idle, a restart)
        self._window_notes: list[str] = []
        self._restarts = 0
        self._probe: Optional[_Probe] = None
        self._probe = self._spawn()
        ready = self._probe.ready
        self.mapping: Optional[str] = ready.get("mapping")  # how the device was found: pci_bus_id|uuid|index
        self.nvml_pci_bus_id: Optional[str] = ready.get("bus_id")  # the bus id of the NVML device sampled
        # None when nvmlDeviceGetTotalEnergyConsumption works; else why not, and windows then sample
        # the power draw too where it can be read (power_sampling; result["power_samples"])
        self.energy_error: Optional[str] = ready.get("energy_error")
        self.power_sampling = bool(ready.get("power_ok"))
        self.notes.extend(ready.get("notes") or [])
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
            return Availability(False, f"nvmlDeviceGetCount failed ({type(e).__name__}: {e})")
        return Availability(True) if n >= 1 else Availability(False, "NVML reports no GPU")

    @property
    def running(self) -> bool:
        return self._running

    @property
    def child_pid(self) -> Optional[int]:
        """Pid of the helper process while it lives, else None."""
        probe = getattr(self, "_probe", None)
        return probe.pid if probe is not None and probe.alive() else None

    # -- the helper ---------------------------------------------------------------------

    def _spawn(self) -> "_Probe":
        torch_bus, uuid = self._torch_ids
        return _Probe(self._spec, device_index=self.device_index, pci_bus_id=self._pci_bus_id,
                      torch_bus_id=torch_bus, uuid=uuid, pid=self.pid, interval_s=self.interval_s,
                      track_process=self.track_process)

    def _live_probe(self) -> Optional["_Probe"]:
        """The helper, restarted (a few times per sampler) if it died; None if there is none."""
        if self._probe is not None and self._probe.alive():
            return self._probe
        if self._probe is not None:
            reason = self._probe.describe_death()
            self._probe.kill()
            self._probe = None
            self._pending.append(f"NVML sampler process ended unexpectedly ({reason})")
        if self._restarts >= MAX_RESTARTS:
            return None
        self._restarts += 1
        try:
            self._probe = self._spawn()
            self._pending.append("NVML sampler process restarted")
        except NvmlUnavailable as e:
            self._pending.append(f"NVML sampler process could not be restarted: {e}")
        return self._probe

    def _request(self, cmd: dict, what: str, notes: list, *, restart: bool) -> Optional[dict]:
        """Send one command to the helper and wait (bounded) for its answer; None on failure.

        Failures go to `notes`. A helper that does not answer in time is killed: it is
        stuck (inside an NVML call) and would otherwise answer a later command with a
        stale reply. With restart=True a dead helper is restarted first (never inside a
        window: a new helper knows nothing of it).
        """
        probe = self._live_probe() if restart else self._probe
        if probe is None:
            notes.append(f"no NVML sampler process for {what}; no readings")
            return None
        reply = probe.request(cmd, REPLY_TIMEOUT_S)
        if reply is None:
            notes.append(f"NVML sampler process failed during {what} ({probe.describe_failure()}); "
                         "no readings from it")
            probe.kill()
            self._probe = None
        elif not reply.get("ok"):
            notes.append(f"NVML sampler process could not do {what}: {reply.get('error')}")
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
        notes: list = []
        reply = self._request({"cmd": "idle"}, "read_idle()", notes, restart=not self._running)
        if self._running:
            self._window_notes.extend(self._pending + notes)
            self._pending = []
        else:
            self._pending.extend(notes)
        if reply is not None and reply.get("ok") and reply.get("used") is not None:
            self._idle = int(reply["used"])
            return self._idle
        return None

    def energy_mj(self) -> Optional[int]:
        """The device's total-energy counter now (millijoules), or None (no counter, or it failed).

        Callers synchronise the device first; the difference of two readings is the energy
        the GPU drew in between (the whole board: other processes' work counts too).
        """
        self._check_usable("energy_mj")
        if self.energy_error is not None:
            return None
        reply = self._request({"cmd": "energy"}, "energy_mj()", [], restart=not self._running)
        return int(reply["mj"]) if reply is not None and reply.get("ok") else None

    def start(self) -> "NvmlSampler":
        """Take the idle reading (unless read_idle() already did) and start sampling."""
        if self._running:
            raise RuntimeError("NvmlSampler.start(): already running")
        self._check_usable("start")
        notes, self._pending = self._pending, []
        reply = self._request({"cmd": "start", "idle": self._idle is None, "avoid_cpu": _current_cpu(),
                               "power": self.power_sampling}, "start()", notes, restart=True)
        notes.extend(self._pending)  # a restart's notes
        self._pending = []
        self._window_notes = notes
        if reply is not None and reply.get("ok") and self._idle is None and reply.get("idle") is not None:
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
        notes, self._window_notes = list(self.notes) + self._window_notes, []
        reply = self._request({"cmd": "stop"}, "the window", notes, restart=False)
        ok = reply is not None and reply.get("ok") and isinstance(reply.get("window"), dict)
        win = reply["window"] if ok else {}
        hz = win.get("attempts", 0) / max(float(reply.get("elapsed_s") or elapsed), 1e-9) if ok else 0.0
        result = self._result(win, notes + list(win.get("notes") or []), hz, elapsed)
        self._idle = None  # the next window takes its own idle reading
        self.result = result
        return result

    def _result(self, win: dict, notes: list, achieved_hz: float, elapsed: float) -> dict:
        peak, idle = win.get("peak"), self._idle
        delta = None
        if peak is not None and idle is not None:
            delta = peak - idle
            if delta < 0:  # device-wide "used": another process freed memory during the window
                notes = notes + [f"peak used memory ({peak} B) below the idle reading ({idle} B): "
                                 "NVML's used memory is device-wide, so another process freed memory "
                                 "during the window; peak_minus_idle_bytes clamped to 0"]
                delta = 0
        return {
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

    def close(self) -> None:
        """Stop if running and end the helper process (once; idempotent).

        In a forked child it only drops the sampler's local state: the helper and its
        pipe belong to the parent.
        """
        if getattr(self, "_running", False):
            try:
                self.stop()
            except Exception:
                pass
        if not getattr(self, "_open", False):
            return
        self._open = False
        _LIVE.discard(self)
        probe, self._probe = self._probe, None
        if probe is not None and os.getpid() == self.pid:  # a forked child must not end it
            probe.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

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
        try:
            s.close()
        except Exception:
            pass


_SCHED_GETCPU = None


def _current_cpu() -> Optional[int]:
    """The CPU the calling thread runs on now (Linux), else None."""
    global _SCHED_GETCPU
    if _SCHED_GETCPU is None:
        _SCHED_GETCPU = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sched_getcpu
                fn.restype, fn.argtypes = ctypes.c_int, []
                _SCHED_GETCPU = fn
            except Exception:
                pass
    if not _SCHED_GETCPU:
        return None
    try:
        cpu = int(_SCHED_GETCPU())
    except Exception:
        return None
    return cpu if cpu >= 0 else None


def _package_root() -> str:
    """The directory that holds the `sabench` package (the repository root in a checkout)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PROBE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nvml_probe.py")


def _wait_readable(fd: int, timeout: float) -> bool:
    import select

    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(p.poll(max(0.0, timeout) * 1000.0))
    r, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(r)


class _Probe:
    """The parent's end of one helper process: JSON lines over its stdin/stdout.

    Every command carries an id that the reply echoes, so a late reply can never be
    taken for the answer to a later command. Reads are bounded by poll() timeouts.
    """

    def __init__(self, spec: Optional[str], *, device_index: int, pci_bus_id: Optional[str],
                 torch_bus_id: Optional[str], uuid: Optional[str], pid: int, interval_s: float,
                 track_process: bool):
        argv = [sys.executable, PROBE_PATH, "--device-index", str(device_index),
                "--pid", str(pid), "--parent-pid", str(os.getpid()), "--interval-s", repr(interval_s)]
        for flag, value in (("--nvml", spec), ("--pci-bus-id", pci_bus_id),
                            ("--torch-bus-id", torch_bus_id), ("--uuid", uuid)):
            if value is not None:
                argv += [flag, str(value)]
        if not track_process:
            argv.append("--no-track-process")
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends: only ask for it
        # from the main thread (EOF on the pipe and the parent-pid check cover the rest).
        if threading.current_thread() is threading.main_thread():
            argv.append("--pdeathsig")
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and p != root])
        self._buf = b""
        self._next_id = 1
        self.failure: Optional[str] = None
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, env=env, close_fds=True, bufsize=0)
        except Exception as e:
            self._stderr.close()
            raise NvmlUnavailable(f"cannot start the NVML sampler process ({type(e).__name__}: {e})") from e
        self.pid = self.proc.pid
        self._fd_in = self.proc.stdout.fileno()
        ready = self._read_reply(0, READY_TIMEOUT_S)
        if ready is None or not ready.get("ok"):
            why = ready.get("error") if ready is not None else self.describe_failure()
            self.kill()
            raise NvmlUnavailable(str(why))
        self.ready = ready

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, cmd: dict, timeout: float) -> Optional[dict]:
        rid = self._next_id
        self._next_id += 1
        try:
            self.proc.stdin.write(json.dumps(dict(cmd, id=rid)).encode() + b"\n")
        except (OSError, ValueError) as e:  # BrokenPipeError: it is gone
            self.failure = f"cannot write to it ({type(e).__name__}: {e}); {self.describe_death()}"
            return None
        return self._read_reply(rid, timeout)

    def _read_reply(self, rid: int, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
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
                if not _wait_readable(self._fd_in, left):
                    continue
                data = os.read(self._fd_in, 65536)
            except OSError as e:
                self.failure = f"cannot read from it ({type(e).__name__}: {e})"
                return None
            if not data:
                try:
                    self.proc.wait(timeout=1.0)
                except Exception:
                    pass
                self.failure = self.describe_death()
                return None
            self._buf += data

    def describe_failure(self) -> str:
        return self.failure or self.describe_death()

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
        tail = self.stderr_tail()
        return what + (f"; stderr: {tail}" if tail else "")

    def stderr_tail(self, n: int = 400) -> str:
        try:  # pread: the helper shares this file's offset, which must not move under it
            fd = self._stderr.fileno()
            size = os.fstat(fd).st_size
            data = os.pread(fd, n, max(0, size - n))
            return data.decode(errors="replace").strip().replace("\n", " | ")
        except Exception:
            return ""

    def kill(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=1.0)
        except Exception:
            pass
        self._close_files()

    def close(self, timeout: float = 1.0) -> None:
        """Ask it to quit (and close its stdin: EOF ends it too), then kill if it lingers."""
        try:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.write(b'{"cmd": "quit", "id": -1}\n')
                except Exception:
                    pass
                try:
                    self.proc.stdin.close()
                except Exception:
                    pass
                self.proc.wait(timeout=timeout)
        except Exception:
            pass
        self.kill()

    def _close_files(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


def nvml_device_info(device_index: int = 0, nvml=None, pci_bus_id: Optional[str] = None) -> dict:
    """Static facts about torch CUDA device `device_index` for results.json's env.

    Keys (each present only when NVML answered): device_name, driver,
    memory_total_bytes, sm_clock_max_mhz, mem_clock_max_mhz, power_limit_w,
    pci_bus_id, plus `nvml_notes` when the device mapping needed a caveat.
    Raises NvmlUnavailable when NVML itself cannot be used.
    """
    mod = load_nvml(nvml)
    info: dict = {}
    notes: list[str] = []
    handle, _how = open_device(mod, device_index, pci_bus_id, notes)
    try:
        def put(key, fn):
            try:
                value = fn()
            except Exception:
                return
            if value is not None:
                info[key] = value

        put("device_name", lambda: _text(mod.nvmlDeviceGetName(handle)))
        put("driver", lambda: _text(mod.nvmlSystemGetDriverVersion()))
        put("memory_total_bytes", lambda: int(mod.nvmlDeviceGetMemoryInfo(handle).total))
        put("sm_clock_max_mhz", lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_SM)))
        put("mem_clock_max_mhz", lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_MEM)))

        def power_w():
            try:
                mw = mod.nvmlDeviceGetEnforcedPowerLimit(handle)
            except Exception:
                mw = mod.nvmlDeviceGetPowerManagementLimit(handle)
            return float(mw) / 1000.0

        put("power_limit_w", power_w)
        put("pci_bus_id", lambda: _text(mod.nvmlDeviceGetPciInfo(handle).busId))
    finally:
        try:
            mod.nvmlShutdown()
        except Exception:
            pass
    if notes:
        info["nvml_notes"] = notes
    return info

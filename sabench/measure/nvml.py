"""Device memory as the driver sees it, sampled by NVML in a background thread.

Why NVML and not only torch.cuda.max_memory_allocated: the caching allocator
only knows its own blocks. The CUDA context, cuBLAS/cuDNN workspaces, NCCL
buffers, CUDA-graph pools and anything allocated outside PyTorch are invisible
to it, yet they are what makes a real deployment run out of memory. NVML's
"used" memory of the device includes all of them. It is a device-wide figure
(other processes count too), so we also record an idle reading taken before the
measured work starts and report peak - idle, and the per-process figure when
the driver tells us which process is ours.

Two pitfalls this module handles:

* Device identity. NVML enumerates GPUs in PCI bus order and ignores
  CUDA_VISIBLE_DEVICES; CUDA (hence torch) enumerates by CUDA_DEVICE_ORDER
  (default FASTEST_FIRST) among the visible devices. torch index i is in
  general *not* NVML index i. We resolve the torch device's PCI bus id (or
  UUID) and ask NVML for that device; only when that is impossible do we fall
  back to index i, and say so in `notes`.
* Per-process usage in containers. nvmlDeviceGetComputeRunningProcesses lists
  PIDs of the host PID namespace (or nothing at all), so os.getpid() inside a
  container often matches nothing. Then the per-process peak is None and a note
  explains why, instead of a wrong number.

The sampler thread never raises into the caller: NVML errors while sampling are
counted and reported in `notes`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

DEFAULT_INTERVAL_S = 0.005  # 200 Hz: a prefill forward of a few ms is still seen


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
    """The NVML module to use: the injected one, else `import pynvml` (nvidia-ml-py)."""
    if nvml is not None:
        return nvml
    try:
        import pynvml  # noqa: PLC0415  (optional dependency, imported on demand)
    except Exception as e:  # ImportError, or a broken install raising something else
        raise NvmlUnavailable(f"pynvml is not importable ({type(e).__name__}: {e}); "
                              "install nvidia-ml-py") from e
    return pynvml


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
                   notes: Optional[list] = None):
    """NVML handle of torch CUDA device `device_index` -> (handle, how).

    `how` is 'pci_bus_id', 'uuid' or 'index'. `pci_bus_id` overrides the
    lookup through torch (tests, or callers that already know it). The index
    fallback appends a warning to `notes` when NVML sees more than one GPU,
    because then it may be the wrong one.
    """
    notes = notes if notes is not None else []
    bus_id = pci_bus_id if pci_bus_id is not None else torch_pci_bus_id(device_index)
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


class NvmlSampler:
    """Background sampler of one GPU's used memory (and this process's, when visible).

    Usage::

        if NvmlSampler.available():
            with NvmlSampler(device_index=0) as s:
                run_the_thing()
            s.result["peak_minus_idle_bytes"]

    or explicitly `s = NvmlSampler(0); s.read_idle(); s.start(); ...; r = s.stop(); s.close()`.

    The constructor initialises NVML and resolves the device (raising
    NvmlUnavailable if NVML cannot be used); `close()` shuts NVML down (NVML
    counts init/shutdown pairs, so other users in the process are unaffected).
    A sampler can run several start()/stop() windows before close().
    """

    def __init__(self, device_index: int = 0, *, interval_s: float = DEFAULT_INTERVAL_S,
                 nvml=None, pci_bus_id: Optional[str] = None, track_process: bool = True):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.device_index = int(device_index)
        self.interval_s = float(interval_s)
        self.track_process = bool(track_process)
        self.pid = os.getpid()
        self.notes: list[str] = []
        self.result: Optional[dict] = None
        self._nvml = load_nvml(nvml)
        try:
            self._nvml.nvmlInit()
        except Exception as e:
            raise NvmlUnavailable(f"nvmlInit failed ({type(e).__name__}: {e})") from e
        self._initialized = True
        try:
            self.handle, self.mapping = resolve_handle(self._nvml, self.device_index, pci_bus_id,
                                                       self.notes)
        except Exception as e:
            self.close()
            raise NvmlUnavailable(f"no NVML handle for CUDA device {device_index} "
                                  f"({type(e).__name__}: {e})") from e
        mig = _mig_note(self._nvml, self.handle)
        if mig:
            self.notes.append(mig)
        self._thread: Optional[threading.Thread] = None
        self._stop_evt = threading.Event()
        self._idle: Optional[int] = None
        self._reset_window()

    # -- availability -------------------------------------------------------------------

    @staticmethod
    def available(nvml=None) -> Availability:
        """Can NVML be used here? Falsy Availability with a reason otherwise. Never raises."""
        try:
            mod = load_nvml(nvml)
        except NvmlUnavailable as e:
            return Availability(False, str(e))
        try:
            mod.nvmlInit()
        except Exception as e:
            return Availability(False, f"nvmlInit failed ({type(e).__name__}: {e})")
        try:
            n = int(mod.nvmlDeviceGetCount())
            if n < 1:
                return Availability(False, "NVML reports no GPU")
            return Availability(True, None)
        except Exception as e:
            return Availability(False, f"nvmlDeviceGetCount failed ({type(e).__name__}: {e})")
        finally:
            try:
                mod.nvmlShutdown()
            except Exception:
                pass

    # -- readings -----------------------------------------------------------------------

    def _read_used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def read_idle(self) -> int:
        """Take the idle reading now (used bytes); start() then keeps it instead of reading again."""
        self._idle = self._read_used()
        return self._idle

    def _reset_window(self) -> None:
        self._peak: Optional[int] = None
        self._peak_proc: Optional[int] = None
        self._n = 0
        self._n_thread = 0
        self._errors = 0
        self._first_error: Optional[str] = None
        self._proc_empty = 0
        self._proc_foreign = 0
        self._proc_na = 0
        self._proc_error: Optional[str] = None
        self._track_proc_now = self.track_process
        self._t_start = 0.0
        self._t_stop = 0.0

    def _sample(self) -> None:
        used = self._read_used()
        if self._peak is None or used > self._peak:
            self._peak = used
        self._n += 1
        if not self._track_proc_now:
            return
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception as e:  # e.g. NotSupported: stop asking, once
            self._proc_error = f"{type(e).__name__}: {e}"
            self._track_proc_now = False
            return
        if not procs:
            self._proc_empty += 1
            return
        mine = [p for p in procs if getattr(p, "pid", None) == self.pid]
        if not mine:
            self._proc_foreign += 1
            return
        values = [getattr(p, "usedGpuMemory", None) for p in mine]
        values = [int(v) for v in values if v is not None]
        if not values:
            self._proc_na += 1
            return
        total = sum(values)
        if self._peak_proc is None or total > self._peak_proc:
            self._peak_proc = total

    def _record_error(self, e: BaseException) -> None:
        self._errors += 1
        if self._first_error is None:
            self._first_error = f"{type(e).__name__}: {e}"

    def _run(self) -> None:
        interval = self.interval_s
        next_t = time.perf_counter()
        while not self._stop_evt.is_set():
            self._n_thread += 1  # attempts: the rate at which NVML was asked
            try:
                self._sample()
            except Exception as e:
                self._record_error(e)
            next_t += interval
            delay = next_t - time.perf_counter()
            if delay < 0:  # fell behind (slow NVML call, GIL): don't burst to catch up
                next_t = time.perf_counter()
                delay = 0.0
            if self._stop_evt.wait(delay):
                break

    # -- window control -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> "NvmlSampler":
        """Take the idle reading (unless read_idle() already did) and start sampling."""
        if self._thread is not None:
            raise RuntimeError("NvmlSampler.start(): already running")
        if not getattr(self, "_initialized", False):
            raise RuntimeError("NvmlSampler.start() after close()")
        self._reset_window()
        if self._idle is None:
            try:
                self.read_idle()
            except Exception as e:
                self._record_error(e)
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._run, name="sabench-nvml-sampler", daemon=True)
        self._t_start = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop the thread (promptly: it waits on an Event) and return the window's readings.

        One last reading is taken after the thread has stopped, so even a window
        shorter than one interval has a peak.
        """
        if self._thread is None:
            raise RuntimeError("NvmlSampler.stop(): not running")
        self._stop_evt.set()
        join_timeout = max(2.0, 4 * self.interval_s)
        self._thread.join(timeout=join_timeout)
        self._t_stop = time.perf_counter()
        alive = self._thread.is_alive()
        self._thread = None
        notes = list(self.notes)
        if alive:
            notes.append(f"sampler thread still inside an NVML call {join_timeout:.1f} s after stop(); "
                         "readings may miss its last sample")
        else:
            try:
                self._sample()
            except Exception as e:
                self._record_error(e)
        if self._errors:
            notes.append(f"{self._errors} NVML error(s) while sampling (those samples were skipped); "
                         f"first: {self._first_error}")
        notes.extend(self._process_notes())
        elapsed = max(self._t_stop - self._t_start, 1e-9)
        peak, idle = self._peak, self._idle
        result = {
            "peak_used_bytes": peak,
            "idle_used_bytes": idle,
            "peak_minus_idle_bytes": (peak - idle) if peak is not None and idle is not None else None,
            "peak_process_bytes": self._peak_proc,
            "n_samples": self._n,
            "interval_s": self.interval_s,
            "achieved_hz": self._n_thread / elapsed,
            "duration_s": elapsed,
            "device_mapping": self.mapping,
            "notes": notes,
        }
        self._idle = None  # the next window takes its own idle reading
        self.result = result
        return result

    def _process_notes(self) -> list[str]:
        if not self.track_process:
            return []
        if self._proc_error is not None:
            return [f"per-process memory unavailable: nvmlDeviceGetComputeRunningProcesses failed "
                    f"({self._proc_error})"]
        if self._peak_proc is not None:
            return []
        if self._proc_foreign:
            return [f"per-process memory unavailable: NVML lists compute processes on this GPU but "
                    f"none with our pid {self.pid} (inside a container NVML reports host-namespace "
                    "PIDs)"]
        if self._proc_na:
            return ["per-process memory unavailable: NVML lists our process without a memory figure "
                    "(usedGpuMemory not available, e.g. under MIG or WDDM)"]
        if self._proc_empty:
            return ["per-process memory unavailable: NVML lists no compute process on this GPU "
                    "(typical inside a container without the host PID namespace)"]
        return []

    def close(self) -> None:
        """Stop if running and shut NVML down (once)."""
        if getattr(self, "_thread", None) is not None:
            try:
                self.stop()
            except Exception:
                pass
        if getattr(self, "_initialized", False):
            self._initialized = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is not None:
            self.stop()
        self.close()


def nvml_device_info(device_index: int = 0, nvml=None, pci_bus_id: Optional[str] = None) -> dict:
    """Static facts about torch CUDA device `device_index` for results.json's env.

    Keys (each present only when NVML answered): device_name, driver,
    memory_total_bytes, sm_clock_max_mhz, mem_clock_max_mhz, power_limit_w,
    pci_bus_id, plus `nvml_notes` when the device mapping needed a caveat.
    Raises NvmlUnavailable when NVML itself cannot be used.
    """
    mod = load_nvml(nvml)
    try:
        mod.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"nvmlInit failed ({type(e).__name__}: {e})") from e
    info: dict = {}
    notes: list[str] = []
    try:
        try:
            handle, _how = resolve_handle(mod, device_index, pci_bus_id, notes)
        except Exception as e:
            raise NvmlUnavailable(f"no NVML handle for CUDA device {device_index} "
                                  f"({type(e).__name__}: {e})") from e

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
        mig = _mig_note(mod, handle)
        if mig:
            notes.append(mig)
    finally:
        try:
            mod.nvmlShutdown()
        except Exception:
            pass
    if notes:
        info["nvml_notes"] = notes
    return info

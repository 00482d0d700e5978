"""The one home of NVML outside the sampler's loop: loading it, the init/shutdown guard, finding
a GPU in it, and every one-off read (a GPU's facts, its run conditions, used memory before CUDA,
whether energy can be read). The sampler (nvml.py), its helper (_nvml_probe.py) and the harness
ask here; nothing else calls nvmlInit.

Torch-free unless asked (torch_pci_bus_id, torch_uuid import it lazily): the sampler's helper
process (_nvml_probe.py) imports this module without torch. See nvml.py for why NVML.

Device identity: torch index i is in general *not* NVML index i (NVML enumerates by PCI bus
and ignores CUDA_VISIBLE_DEVICES; CUDA enumerates by CUDA_DEVICE_ORDER among the visible
devices). `resolve_handle` looks the device up by the PCI bus id (or UUID) torch reports,
and by index only as a fallback, with a note.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from typing import Optional


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (pynvml missing, no driver, no device)."""


@dataclass(frozen=True)
class Availability:
    """Truthy when NVML can be used; `reason` says why not otherwise."""

    ok: bool
    reason: Optional[str] = None

    def __bool__(self) -> bool:
        return self.ok


def why_unavailable(e: BaseException) -> str:
    """An NVML failure in words: the exception's type and message."""
    return f"{type(e).__name__}: {e}"


def nvml_text(x) -> str:
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
            raise NvmlUnavailable(f"pynvml is not importable ({why_unavailable(e)}); install nvidia-ml-py") from e
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
        raise NvmlUnavailable(f"cannot load the NVML implementation {nvml!r} ({why_unavailable(e)})") from e
    if not hasattr(obj, "nvmlInit"):
        raise NvmlUnavailable(f"{nvml!r} does not provide the pynvml API (no nvmlInit)")
    return obj


def _init(mod) -> None:
    try:
        mod.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"nvmlInit failed ({why_unavailable(e)})") from e


@contextlib.contextmanager
def nvml_initialised(nvml=None):
    """The NVML implementation (load_nvml), initialised for the with block and shut down after:
    the one init/shutdown guard (NvmlUnavailable when NVML cannot be loaded or initialised)."""
    mod = load_nvml(nvml)
    _init(mod)
    try:
        yield mod
    finally:
        with contextlib.suppress(Exception):
            mod.nvmlShutdown()


def available(nvml=None) -> Availability:
    """Can NVML be used here (it loads, initialises and sees a GPU)? Falsy with a reason otherwise.
    Never raises."""
    try:
        with nvml_initialised(nvml) as mod:
            n = int(mod.nvmlDeviceGetCount())
    except NvmlUnavailable as e:
        return Availability(False, str(e))
    except Exception as e:
        return Availability(False, f"nvmlDeviceGetCount failed ({why_unavailable(e)})")
    return Availability(True) if n >= 1 else Availability(False, "NVML reports no GPU")


def nvml_handle(nvml, gpu):
    """NVML's handle of `gpu`: an index (int, or digits) or a UUID, as CUDA_VISIBLE_DEVICES names GPUs."""
    text = str(gpu).strip()
    return nvml.nvmlDeviceGetHandleByIndex(int(text)) if text.isdigit() else nvml.nvmlDeviceGetHandleByUUID(text)


def _devices(nvml):
    """(parsed PCI bus id, handle) of every GPU NVML sees, in NVML's order."""
    for i in range(int(nvml.nvmlDeviceGetCount())):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        yield parse_pci_bus_id(nvml.nvmlDeviceGetPciInfo(h).busId), h


def bus_id_of(nvml, handle) -> str:
    """The PCI bus id NVML gives the GPU of `handle`, as text."""
    return nvml_text(nvml.nvmlDeviceGetPciInfo(handle).busId).rstrip("\x00")


def parse_pci_bus_id(bus_id) -> Optional[tuple[int, int, int]]:
    """'00000000:1A:00.0' / '0000:1a:00.0' / '1a:00.0' -> (domain, bus, device); None if unparsable.

    NVML and CUDA print the domain with 8 or 4 hex digits and in either case,
    so ids are compared on their numeric parts (the function is always 0 for
    a GPU's compute function).
    """
    if bus_id is None:
        return None
    parts = nvml_text(bus_id).strip().rstrip("\x00").split(":")
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
        return nvml_text(bus)
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
    """NVML handle of torch CUDA device `device_index`, in an initialised NVML -> (handle, how).

    `how` is 'pci_bus_id', 'uuid' or 'index': the device is looked up by `pci_bus_id`, then by
    `uuid`, then by index. Without `pci_bus_id` (and unless ask_torch=False: the sampler's
    helper, which never imports torch, gets both ids from its parent) torch is asked for
    both. The index fallback appends a warning to `notes` when NVML sees more than one GPU,
    because then it may be the wrong one; MIG appends a note too. Raises NvmlUnavailable
    when no handle can be had.
    """
    notes = notes if notes is not None else []
    handle, how = _lookup(nvml, device_index, pci_bus_id, notes, uuid, ask_torch)
    with contextlib.suppress(Exception):  # no nvmlDeviceGetMigMode, or not supported
        if nvml.nvmlDeviceGetMigMode(handle)[0] == 1:
            notes.append("MIG is enabled on this GPU: NVML device memory covers the whole GPU, "
                         "not only this process's MIG instance")
    return handle, how


def _lookup(nvml, device_index: int, pci_bus_id: Optional[str], notes: list, uuid: Optional[str],
            ask_torch: bool):
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
        notes.append(f"NVML has no device with PCI bus id {bus_id!r} ({why_unavailable(error)})")
    if from_torch:
        uuid = torch_uuid(device_index)
    if uuid is not None and hasattr(nvml, "nvmlDeviceGetHandleByUUID"):
        try:
            return nvml.nvmlDeviceGetHandleByUUID(uuid), "uuid"
        except Exception as e:
            notes.append(f"NVML has no device with UUID {uuid!r} ({why_unavailable(e)})")
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        count = None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception as e:
        raise NvmlUnavailable(f"no NVML handle for CUDA device {device_index} ({why_unavailable(e)})") from e
    if count != 1:
        notes.append(
            f"NVML device chosen by index {device_index}: the PCI bus id of torch device "
            f"{device_index} could not be resolved. NVML enumerates GPUs by PCI bus order and "
            "ignores CUDA_VISIBLE_DEVICES, CUDA by CUDA_DEVICE_ORDER (default FASTEST_FIRST), so on "
            "a multi-GPU host this may be a different GPU")
    return handle, "index"


def used_bytes_by_bus(nvml=None) -> dict:
    """{PCI bus id: used bytes} for every GPU NVML sees, read now; torch is not touched.

    The worker calls it before its process initialises CUDA: that level (other processes, the
    driver's own reservations) is what `nvml-device` readings subtract. Keys are normalised by
    parse_pci_bus_id so that they match whatever form torch or NVML print later.
    Raises NvmlUnavailable when NVML cannot be used.
    """
    out = {}
    with nvml_initialised(nvml) as mod:
        try:
            for bus, h in _devices(mod):
                if bus is not None:
                    out[bus] = int(mod.nvmlDeviceGetMemoryInfo(h).used)
        except Exception as e:
            raise NvmlUnavailable(f"reading device memory failed ({why_unavailable(e)})") from e
    return out


@dataclass(frozen=True)
class GpuFacts:
    """What NVML says of one GPU's board; None where this device or driver does not answer."""

    device_name: Optional[str] = None
    driver: Optional[str] = None
    memory_total_bytes: Optional[int] = None
    sm_clock_max_mhz: Optional[int] = None
    mem_clock_max_mhz: Optional[int] = None
    power_limit_w: Optional[float] = None
    pci_bus_id: Optional[str] = None
    notes: tuple = ()  # caveats of finding the device (index fallback, MIG)

    def env_fields(self) -> dict:
        """The facts NVML gave, under results.json env's keys (the notes as `nvml_notes`)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "notes"}
        out = {k: v for k, v in out.items() if v is not None}
        if self.notes:
            out["nvml_notes"] = list(self.notes)
        return out


def gpu_facts(device_index: int = 0, nvml=None, pci_bus_id: Optional[str] = None) -> GpuFacts:
    """The facts of torch CUDA device `device_index` (found by its PCI bus id: resolve_handle).
    Raises NvmlUnavailable when NVML itself cannot be used."""
    with nvml_initialised(nvml) as mod:
        notes: list = []
        handle, _how = resolve_handle(mod, device_index, pci_bus_id, notes)
        return _read_facts(mod, handle, notes)


def gpu_facts_by_id(gpu, nvml=None) -> GpuFacts:
    """The facts of GPU `gpu` as CUDA_VISIBLE_DEVICES names it (an NVML index or a UUID), read
    without a CUDA context. Raises NvmlUnavailable or NVML's error when it cannot be read."""
    with nvml_initialised(nvml) as mod:
        return _read_facts(mod, nvml_handle(mod, gpu), [])


def _read_facts(mod, handle, notes: list) -> GpuFacts:
    def power_limit_w():
        try:
            mw = mod.nvmlDeviceGetEnforcedPowerLimit(handle)
        except Exception:
            mw = mod.nvmlDeviceGetPowerManagementLimit(handle)
        return float(mw) / 1000.0

    readers = {
        "device_name": lambda: nvml_text(mod.nvmlDeviceGetName(handle)),
        "driver": lambda: nvml_text(mod.nvmlSystemGetDriverVersion()),
        "memory_total_bytes": lambda: int(mod.nvmlDeviceGetMemoryInfo(handle).total),
        "sm_clock_max_mhz": lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_SM)),
        "mem_clock_max_mhz": lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_MEM)),
        "power_limit_w": power_limit_w,
        "pci_bus_id": lambda: bus_id_of(mod, handle),
    }
    values = {}
    for key, read in readers.items():
        with contextlib.suppress(Exception):  # a query this device or driver does not support
            values[key] = read()
    return GpuFacts(**values, notes=tuple(notes))


def gpu_conditions(gpu, nvml=None) -> dict:
    """What explains noise on GPU `gpu` now (an NVML index or a UUID, read without a CUDA
    context): clocks (MHz), the names of the active throttle reasons, the other processes and the
    temperature, each present only when NVML answered. Raises NvmlUnavailable or NVML's error
    when the GPU cannot be read at all."""
    with nvml_initialised(nvml) as mod:
        h = nvml_handle(mod, gpu)
        prefix = "nvmlClocksThrottleReason"

        def throttle_reasons():
            mask = int(mod.nvmlDeviceGetCurrentClocksThrottleReasons(h))
            return [n[len(prefix):] for n in dir(mod) if n.startswith(prefix) and n != prefix + "All"
                    and isinstance(getattr(mod, n), int) and getattr(mod, n) & mask]

        def other_processes():
            procs = list(mod.nvmlDeviceGetComputeRunningProcesses(h)) + list(mod.nvmlDeviceGetGraphicsRunningProcesses(h))
            return [{"pid": int(p.pid), "used_bytes": getattr(p, "usedGpuMemory", None)}
                    for p in procs if int(p.pid) != os.getpid()]

        readers = {
            "sm_clock_mhz": lambda: int(mod.nvmlDeviceGetClockInfo(h, mod.NVML_CLOCK_SM)),
            "mem_clock_mhz": lambda: int(mod.nvmlDeviceGetClockInfo(h, mod.NVML_CLOCK_MEM)),
            "throttle_reasons": throttle_reasons,
            "other_processes": other_processes,
            "temperature_c": lambda: int(mod.nvmlDeviceGetTemperature(h, mod.NVML_TEMPERATURE_GPU)),
        }
        out: dict = {}
        for key, read in readers.items():
            with contextlib.suppress(Exception):  # a query this device or driver does not support
                out[key] = read()
        return out


def energy_support(nvml, handle) -> tuple[Optional[str], bool]:
    """(why the total-energy counter cannot be read, or None; whether the power draw can be read).

    The sampler's windows sample the power draw only when the counter is missing: energy is
    then integrated from those samples.
    """
    try:
        int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        return None, False
    except Exception as e:
        why = why_unavailable(e)
    try:
        int(nvml.nvmlDeviceGetPowerUsage(handle))
        return why, True
    except Exception:
        return why, False

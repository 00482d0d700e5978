"""NVML readings: loading NVML, finding torch's device in it, and one-off device reads.

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


def shutdown(mod) -> None:
    with contextlib.suppress(Exception):
        mod.nvmlShutdown()


@contextlib.contextmanager
def nvml_initialised(nvml=None):
    """The NVML implementation (load_nvml), initialised for the with block and shut down after."""
    mod = load_nvml(nvml)
    _init(mod)
    try:
        yield mod
    finally:
        shutdown(mod)


def nvml_handle(nvml, gpu):
    """NVML's handle of `gpu`: an index (int, or digits) or a UUID, as CUDA_VISIBLE_DEVICES names GPUs."""
    text = str(gpu).strip()
    return nvml.nvmlDeviceGetHandleByIndex(int(text)) if text.isdigit() else nvml.nvmlDeviceGetHandleByUUID(text)


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
        shutdown(nvml)
        raise NvmlUnavailable(f"no NVML handle for CUDA device {device_index} ({why_unavailable(e)})") from e
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
    with nvml_initialised(nvml) as mod:
        try:
            for bus, h in _devices(mod):
                if bus is not None:
                    out[bus] = int(mod.nvmlDeviceGetMemoryInfo(h).used)
        except Exception as e:
            raise NvmlUnavailable(f"reading device memory failed ({why_unavailable(e)})") from e
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
        "device_name": lambda: nvml_text(mod.nvmlDeviceGetName(handle)),
        "driver": lambda: nvml_text(mod.nvmlSystemGetDriverVersion()),
        "memory_total_bytes": lambda: int(mod.nvmlDeviceGetMemoryInfo(handle).total),
        "sm_clock_max_mhz": lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_SM)),
        "mem_clock_max_mhz": lambda: int(mod.nvmlDeviceGetMaxClockInfo(handle, mod.NVML_CLOCK_MEM)),
        "power_limit_w": power_limit_w,
        "pci_bus_id": lambda: nvml_text(mod.nvmlDeviceGetPciInfo(handle).busId),
    }
    info: dict = {}
    try:
        for key, read in readers.items():
            with contextlib.suppress(Exception):  # a query this device or driver does not support
                value = read()
                if value is not None:
                    info[key] = value
    finally:
        shutdown(mod)
    if notes:
        info["nvml_notes"] = notes
    return info

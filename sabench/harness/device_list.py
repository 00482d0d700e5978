"""`sabench run --devices 0,1,3|all`: the GPUs a run's point processes are spread over.

Parsed at the edge (`parse_devices`: the text -> a tuple of ids, or ALL), resolved against the
suite and this machine once (`resolve_pins`) before anything is written. An id is a position
among the GPUs this process sees: with CUDA_VISIBLE_DEVICES=4,5,6,7 in the environment, id 1
is GPU 5, and the point processes of that slot get CUDA_VISIBLE_DEVICES=5 (they run on cuda:0).
Point processes number GPUs in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID, harness.launch),
as NVML does.

On a CPU suite the ids cannot be checked against GPUs: they only label the concurrent slots
(and set CUDA_VISIBLE_DEVICES, which CPU points ignore), and concurrent CPU points share the
cores, so a warning says their timings disturb each other.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from sabench import devices
from sabench.errors import UserError

ALL = "all"
_WHERE = "in 'sabench run --devices'"


@dataclass(frozen=True)
class Pin:
    """One slot of a run: the id the user gave and the CUDA_VISIBLE_DEVICES of its point processes."""
    id: int
    gpu: str  # the physical id (or UUID) the parent's CUDA_VISIBLE_DEVICES names at position `id`


def parse_devices(text: str) -> Union[Tuple[int, ...], str]:
    """'0,1,3' -> (0, 1, 3); 'all' -> ALL. ValueError (one line) for anything else."""
    t = str(text).strip()
    if t.lower() == ALL:
        return ALL
    if not t:
        raise UserError("--devices is empty: give GPU ids like 0,1,3 or 'all'")
    ids = []
    for part in t.split(","):
        p = part.strip()
        if not (p.isascii() and p.isdigit()):
            what = "is negative" if p.startswith("-") and p[1:].isdigit() else "is not a GPU id"
            raise UserError(f"--devices {t!r}: {p!r} {what}: give non-negative integers like 0,1,3 or 'all'")
        ids.append(int(p))
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise UserError(f"--devices {t!r}: GPU {', '.join(map(str, dups))} given twice: name each GPU once")
    return tuple(ids)


def visible_gpus(count: Optional[int] = None) -> list:
    """The physical ids of the GPUs this process sees, in CUDA's order: CUDA_VISIBLE_DEVICES's
    entries (as many as CUDA found), else 0..count-1."""
    n = devices.gpu_count() if count is None else count
    named = _cuda_visible_devices()
    return [str(i) for i in range(n)] if named is None else named[:n]


def _cuda_visible_devices() -> Optional[list]:
    """CUDA_VISIBLE_DEVICES's entries, None when it is not set."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if env is None else [x.strip() for x in env.split(",") if x.strip()]


def physical_gpu(index: int) -> str:
    """The GPU that this process's CUDA index `index` names, as NVML knows it (an index or UUID),
    from CUDA_VISIBLE_DEVICES alone: nothing here touches CUDA."""
    named = _cuda_visible_devices() or []
    return named[index] if index < len(named) else str(index)


def resolve_pins(spec, device: str, tensor_parallel: int = 1, warn: bool = True) -> Tuple[Pin, ...]:
    """The slots of `spec` (parse_devices's) for a suite run on `device` ('cpu', 'cuda[:N]').
    UserError (exit 2) for a TP suite, `all` without a GPU, or an id beyond the visible GPUs on CUDA."""
    if tensor_parallel > 1:
        raise UserError(f"--devices with a {tensor_parallel}-way tensor-parallel suite: each point needs "
                        f"{tensor_parallel} GPUs, not one, {_WHERE}; run it without --devices")
    visible = visible_gpus()
    if spec == ALL:
        if not visible:
            raise UserError(f"--devices all: this machine shows no GPU, {_WHERE}; give ids like 0,1 or drop --devices")
        spec = tuple(range(len(visible)))
    if device.startswith("cuda"):
        beyond = [i for i in spec if i >= len(visible)]
        if beyond:
            seen = f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})" \
                if "CUDA_VISIBLE_DEVICES" in os.environ else ""
            raise UserError(f"--devices: GPU {beyond[0]} does not exist, this process sees {len(visible)} GPU(s)"
                            f"{seen}, {_WHERE}; ids are positions 0..{len(visible) - 1} among them")
    elif len(spec) > 1 and warn:
        print(f"sabench: warning: --devices on a CPU suite: {len(spec)} points run at once and share the "
              "CPU cores, so they disturb each other's timings; use it to test, not to measure", file=sys.stderr)
    return tuple(Pin(i, visible[i] if i < len(visible) else str(i)) for i in spec)


def devices_text(pins) -> str:
    """The --devices value that gives `pins` again (for the resume command)."""
    return ",".join(str(p.id) for p in pins)


def device_facts(pins, device: str) -> list:
    """env["devices"]: each slot's id, physical GPU and, on CUDA where NVML answers, its name and
    PCI bus id (read without a CUDA context; NVML numbers GPUs in PCI bus order, as the points do)."""
    out = []
    for p in pins:
        entry = {"id": p.id, "gpu": p.gpu}
        if device.startswith("cuda"):
            entry.update(_nvml_facts(p.gpu))
        out.append(entry)
    return out


def _nvml_facts(gpu: str) -> dict:
    from sabench.measure.nvml_readings import gpu_facts_by_id, why_unavailable  # (sabench.measure imports torch)

    try:
        facts = gpu_facts_by_id(gpu)
    except Exception as e:  # NVML missing or failing must not cost the run
        return {"nvml_unavailable": why_unavailable(e)[:200]}
    named = {"name": facts.device_name, "pci_bus_id": facts.pci_bus_id}
    return {k: v for k, v in named.items() if v is not None}


def merge_device_facts(old: Optional[list], new: list) -> list:
    """env["devices"] of a resumed run: the earlier entries, then the new run's not already listed."""
    old = list(old or [])
    known = {(d.get("id"), d.get("gpu")) for d in old}
    return old + [d for d in new if (d["id"], d["gpu"]) not in known]

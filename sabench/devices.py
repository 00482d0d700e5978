"""The one device resolver (a device name as a user writes it -> the device that runs), the one GPU
count, and what a device implies for a point: its execution and its threads."""
from __future__ import annotations

import re

from typing import Optional

from sabench.errors import UserError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")  # ASCII digits only
EXECUTION_CHOICES = ("auto", "eager", "compiled")


def gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA); the seam tests patch to fake GPUs."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - a broken CUDA install is no GPU
        return 0


def resolve_device(device) -> str:
    """'auto' -> 'cuda' or 'cpu'; 'cpu'; 'cuda[:N]' checked against this machine. UserError
    (one line: what, and what to use instead) otherwise. Accepts a torch.device too.

    Suite validation only checks the spelling (DEVICE_PATTERN): a suite written for a GPU box
    must still validate on a laptop; only running it needs the device.
    """
    d = str(device).strip().lower()
    if not DEVICE_PATTERN.match(d):
        raise UserError(f"unsupported device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    count = gpu_count()
    if d == "auto":
        return "cuda" if count else "cpu"
    if d == "cpu":
        return d
    if not count:
        raise UserError(f"device {str(device)!r} requested but CUDA is not available here; use auto or cpu")
    index = int(d.split(":")[1]) if ":" in d else 0
    if index >= count:
        raise UserError(f"device {str(device)!r} requested but this machine has {count} CUDA device(s)")
    return d


def resolve_execution(execution: str, device: str) -> str:
    """'auto' -> 'compiled' on CUDA, 'eager' on CPU; 'eager' and 'compiled' as given."""
    if execution not in EXECUTION_CHOICES:
        raise UserError(f"unsupported execution {execution!r}: use {', '.join(EXECUTION_CHOICES)}")
    if execution == "auto":
        return "compiled" if str(device).startswith("cuda") else "eager"
    return execution


def resolve_threads(threads: Optional[int], device: str) -> Optional[int]:
    """The torch intra-op threads of a point process: the suite's (or --threads), else 1 on CPU
    and torch's own choice (None) on CUDA.

    One thread on CPU because torch's default (a thread per core, spinning while it waits) turns
    any other work on the machine into 10-30x slower and erratic steps: the `tiny` decode step at
    b=4 s=128 measured 1.45-1.58 ms a round with one thread and 26-40 ms with two (prefill 19-32 ms
    vs 430-918 ms) on 2 cores at a 1-minute load average of 6 to 10 (docs/methodology.md,
    "Threads"). On CUDA the host threads only launch kernels."""
    if threads is not None:
        return threads
    return None if str(device).startswith("cuda") else 1

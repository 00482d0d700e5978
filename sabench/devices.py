"""The one device resolver (a device name as a user writes it -> the device that runs) and the one GPU count."""
from __future__ import annotations

import re

from sabench.errors import UserError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")  # ASCII digits only


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

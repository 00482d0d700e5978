"""The one device resolver: a device name as a user writes it -> the device that runs."""
from __future__ import annotations

import re

from sabench.errors import UserError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")  # ASCII digits only


def resolve_device(device) -> str:
    """'auto' -> 'cuda' or 'cpu'; 'cpu'; 'cuda[:N]' checked against this machine. UserError
    (one line: what, and what to use instead) otherwise. Accepts a torch.device too.

    Suite validation only checks the spelling (DEVICE_PATTERN): a suite written for a GPU box
    must still validate on a laptop; only running it needs the device.
    """
    import torch

    d = str(device).strip().lower()
    if not DEVICE_PATTERN.match(d):
        raise UserError(f"unsupported device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return d
    if not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} requested but CUDA is not available here; use auto or cpu")
    index = int(d.split(":")[1]) if ":" in d else 0
    if index >= torch.cuda.device_count():
        raise UserError(
            f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return d

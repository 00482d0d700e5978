"""Sizes and bandwidths as users write them: '80GiB', '16 GB', '512MiB' or plain bytes; '450GB/s'."""
from __future__ import annotations

import re

from sabench.errors import UserError
from sabench.values import is_int

KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40
_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "kib": KiB, "m": 10 ** 6, "mb": 10 ** 6, "mib": MiB,
          "g": 10 ** 9, "gb": 10 ** 9, "gib": GiB, "t": 10 ** 12, "tb": 10 ** 12, "tib": TiB}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
MAX_SIZE = 2 ** 60  # an exbibyte: larger is a typo, not a device


def parse_size(text) -> int:
    """'80GiB', '16 GB', '512MiB' or plain bytes '85520809984' -> bytes; ValueError otherwise."""
    if is_int(text) and 0 < text <= MAX_SIZE:
        return text
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"bad memory size {text!r}: expected a number with B, KB/KiB, MB/MiB, GB/GiB or "
                         f"TB/TiB (e.g. 80GiB), or plain bytes")
    n = float(m.group(1)) * _UNITS[unit]
    if not 0 < n <= MAX_SIZE:
        raise UserError(f"bad memory size {text!r}: must be more than 0 bytes and at most 1 EiB")
    n = int(n)
    if n <= 0:
        raise UserError(f"bad memory size {text!r}: must be more than 0 bytes")
    return n


def parse_bandwidth(value) -> float:
    """'450GB/s', '900 GiB/s' or a plain number of bytes per second -> bytes/s; UserError otherwise."""
    if isinstance(value, str):
        try:  # YAML reads 4.5e11 (no sign in the exponent) as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and value != float("inf"):
            return float(value)
        raise UserError(f"bad bandwidth {value!r}: must be more than 0 bytes/s")
    text = str(value).strip()
    if not text.lower().endswith("/s"):
        raise UserError(f"bad bandwidth {value!r}: expected bytes per second, e.g. 450GB/s or 4.5e11")
    try:
        return float(parse_size(text[:-2]))
    except ValueError:
        raise UserError(f"bad bandwidth {value!r}: expected a number with B, KB/KiB, MB/MiB, GB/GiB or TB/TiB "
                         "and /s, e.g. 450GB/s") from None

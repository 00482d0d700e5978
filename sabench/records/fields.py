"""The numeric fields a phase record holds, derived from the record types (not a hand list).

`numeric_fields()` maps a dotted name ("joules_per_token", "latency_ms.median",
"memory_bytes.device_peak", "flops.analytic", ...) to a function reading it from a PhaseRecord
(None where the record lacks it). A field added to the types appears here, and so in
`sabench history --metric`, without a change here.
"""
from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Callable, Dict, Optional

from sabench.records.codec import optional_type
from sabench.records.types import PhaseRecord

_NUMBER_TYPES = (int, float)
_SKIP = {"batch_size", "seq_len", "max_attempt"}  # the point's coordinates, and sweep bookkeeping


def _unwrap(tp):
    """Optional[X] -> X; anything else as is."""
    return optional_type(tp)[1]


@lru_cache(maxsize=None)
def numeric_fields() -> Dict[str, Callable[[PhaseRecord], Optional[float]]]:
    out: Dict[str, Callable] = {}
    for f in fields(PhaseRecord):
        tp = _unwrap(typing.get_type_hints(PhaseRecord)[f.name])
        if f.name in _SKIP:
            continue
        if tp in _NUMBER_TYPES:
            out[f.name] = _getter(f.name)
        elif is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            for g in fields(tp):
                if _unwrap(hints[g.name]) in _NUMBER_TYPES:
                    out[f"{f.name}.{g.name}"] = _getter(f.name, g.name)
    return out


def _getter(name: str, sub: Optional[str] = None):
    def get(r: PhaseRecord):
        v = getattr(r, name, None)
        if sub is not None and v is not None:
            v = getattr(v, sub, None)
        return None if v is None or isinstance(v, bool) else float(v)
    return get

"""Checks of results.json values that name the file, the record and the field in one line."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

from sabench.errors import UserError
from sabench.values import is_number, is_whole, located, show


class ResultsError(UserError):
    """A results file (or a pair of them) that cannot be used; the message is one line."""


class Where:
    """Names a place in a file for error messages: '<file>: record 'decode cla:2 b=4 s=512''."""

    def __init__(self, file: str, what: str):
        self.file, self.what = file, what

    def fail(self, name: str, msg: str):
        raise ResultsError(located(self.file, self.what, f"{name} {msg}") if name
                           else located(self.file, f"{self.what} {msg}"))


def present(w: Where, name: str, v, optional: bool) -> bool:
    """False for an absent value (None) that may be absent; a missing required one fails."""
    if v is None and not optional:
        w.fail(name, "is missing")
    return v is not None


def number(w: Where, name: str, v, *, integer=False, lo=None, positive=False, optional=True):
    if not present(w, name, v, optional):
        return None
    if not is_number(v) or (integer and not is_whole(v)):
        w.fail(name, f"must be {'an integer' if integer else 'a number'}, got {show(v)}")
    if not math.isfinite(v):
        w.fail(name, f"must be a finite number, got {v!r}")
    if positive and v <= 0:
        w.fail(name, f"must be > 0, got {v!r}")
    if lo is not None and v < lo:
        w.fail(name, f"must be >= {lo}, got {v!r}")
    return int(v) if integer else v


def text(w: Where, name: str, v, *, choices=None, optional=True):
    if not present(w, name, v, optional):
        return None
    if not isinstance(v, str):
        w.fail(name, f"must be a string, got {show(v)}")
    if choices is not None and v not in choices:
        w.fail(name, f"must be one of {', '.join(choices)}, got {v!r}")
    return v


def mapping(w: Where, name: str, v, optional=True) -> Optional[dict]:
    if not present(w, name, v, optional):
        return None
    if not isinstance(v, dict):
        w.fail(name, f"must be a mapping, got {show(v)}")
    return v


def numbers(w: Where, name: str, v) -> Optional[Dict[str, float]]:
    """A mapping of name -> number (memory_breakdown, memory_predicted_bytes, ...)."""
    m = mapping(w, name, v)
    return None if m is None else {str(k): number(w, f"{name}.{k}", x) for k, x in m.items()}


def strings(w: Where, name: str, v) -> Optional[Tuple[str, ...]]:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        w.fail(name, f"must be a list of strings, got {show(v)}")
    return tuple(v)

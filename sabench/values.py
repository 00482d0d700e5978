"""The value tests and message shape shared by the suite checks (suite_fields.py, YAML) and the
results checks (records/checks.py, JSON): one meaning of "an integer", "a number", how a value is
shown, and one line naming the file, the place and the problem.
"""
from __future__ import annotations

import json
import math


def is_int(v) -> bool:
    """An int; a bool is not one (`warmup: yes` is a typo, not 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_positive(v) -> bool:
    """A finite number > 0."""
    return is_number(v) and math.isfinite(v) and v > 0


def is_whole(v) -> bool:
    """An integer, or a float with an integral value (a JSON writer may write 3 as 3.0)."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def spell(v) -> str:
    """A scalar as the file spells it: true, false, null (YAML and JSON alike); anything else by repr."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else repr(v)


def show(v) -> str:
    """A value in a one-line message, as the file spells it and cut to 60 characters: 'true', 'null',
    '-1.0', "'abc'", 'a list [1, 2]', 'a mapping {"a": 1}' (suites and results alike)."""
    if isinstance(v, (dict, list)):
        kind = "a mapping" if isinstance(v, dict) else "a list"
        s = f"{kind} {json.dumps(v, default=repr)}"
    else:
        s = spell(v)
    return s if len(s) <= 60 else s[:57] + "..."


def located(*parts) -> str:
    """'FILE: place: problem' from the parts given, on one line (a quoted value may wrap)."""
    return " ".join(": ".join(str(p) for p in parts if p).split())

"""Whether two suites as run (the `suite` echo of results.json) are one: the fields that must
agree for records to belong to one run. `sabench merge` (the shards of one run) and
`sabench run --resume` (a run completed later) both ask here.

IDENTITY says which points a run holds, of which model: a suite with another name, model,
variant list or sweep is another suite. SETTINGS change what a number means. Neither holds
`rounds` (`--rounds K --resume` adds rounds to a run), `threads` (merge lets shards differ;
`--resume` keeps the run's unless `--threads` asks otherwise), `path`, `description` or `device`.
"""
from __future__ import annotations

from typing import Sequence

IDENTITY = ("name", "model", "model_config", "variants", "sweep")
SETTINGS = ("dtype", "decode_tokens", "warmup", "repeats", "prefill_chunk", "memory", "execution", "weights",
            "quality", "parallel", "allow_long_context")
FIELDS = IDENTITY + SETTINGS

# what a run ran with when its (older) results.json lacks the key: runs before execution modes
# were eager, before checkpoint weights random; allow_long_context is written only when true
_MISSING = {"execution": "eager", "weights": "random", "allow_long_context": False}


def value(suite: dict, key: str):
    """`suite[key]` as compared: a key an older results.json lacks as it then was; the variants as
    a set (their order changes no point)."""
    v = suite.get(key, _MISSING.get(key))
    return sorted(v) if key == "variants" and isinstance(v, list) else v


def differences(a: dict, b: dict, fields: Sequence[str] = FIELDS) -> list:
    """The fields, in the order of `fields`, where suite echoes `a` and `b` differ."""
    return [k for k in fields if value(a, k) != value(b, k)]

"""FLOPs counted by fvcore over the runtime's real trace, with the operators it skips handled.

Out of the box fvcore reports `aten::scaled_dot_product_attention` as unsupported
and leaves it out: the attention term, which is where baseline, CLA and SA
differ. We register handles for it and for sabench's own `attn_probs` /
`attn_apply` ops, and refuse to return a number if any other matrix-class
operator is unhandled. Elementwise operators are listed apart, by name.

fvcore counts one multiply-add as one "flop"; we report 2 FLOPs per multiply-add
(the accounting.py convention), so every fvcore figure is doubled.

Tracing runs on meta tensors: no memory, no weights, any model size.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from sabench import ops  # noqa: F401  (registers sabench:: ops)
from sabench.model import SharedLlama, build_model

_MATRIX_OPS = re.compile(r"attention|matmul|mm$|bmm|linear|einsum|conv|sabench::")


def _shape(v) -> list:
    return v.type().sizes()


def _const(v):
    return v.toIValue()


def _pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """Query-key pairs a kernel works on: the lower triangle when causal (top-left aligned,
    as SDPA's is_causal), the whole rectangle under an explicit mask (it computes it all)."""
    if not causal:
        return q_len * kv_len
    return sum(min(i + 1, kv_len) for i in range(q_len)) if q_len != kv_len else q_len * (q_len + 1) // 2


def _sdpa_macs(inputs, outputs) -> int:
    b, h, t, d = _shape(inputs[0])
    s = _shape(inputs[1])[-2]
    dv = _shape(inputs[2])[-1]
    causal = bool(_const(inputs[5])) if len(inputs) > 5 else False
    return b * h * _pairs(t, s, causal) * (d + dv)


def _probs_macs(inputs, outputs) -> int:
    b, h, t, d = _shape(inputs[0])
    s = _shape(inputs[1])[-2]
    return b * h * _pairs(t, s, bool(_const(inputs[3]))) * d


def _apply_macs(inputs, outputs) -> int:
    b, h, t, s = _shape(inputs[0])
    dv = _shape(inputs[1])[-1]
    return b * h * _pairs(t, s, bool(_const(inputs[2]))) * dv


HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_macs,
    "sabench::attn_probs": _probs_macs,
    "sabench::attn_apply": _apply_macs,
}


@dataclass
class FlopCount:
    total: int  # FLOPs (2 per multiply-add) of every matrix-class operator
    by_operator: dict  # op -> FLOPs
    elementwise_ops: dict  # op -> occurrences; not in `total`, by convention
    fvcore_alone: int | None  # fvcore without sabench's handles (it misses attention); None: not run

    def to_dict(self) -> dict:
        return {"total": self.total, "by_operator": self.by_operator,
                "elementwise_ops": self.elementwise_ops, "fvcore_alone": self.fvcore_alone}


class UncountedOperatorError(RuntimeError):
    pass


def _analyse(module: nn.Module, inputs: tuple, with_handles: bool):
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(module, inputs)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    if with_handles:
        fa.set_op_handle(**HANDLES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = fa.total()
    return fa, total


def count(module: nn.Module, inputs: tuple, compare_alone: bool = True) -> FlopCount:
    fa, total = _analyse(module, inputs, with_handles=True)
    unsupported = Counter(fa.unsupported_ops())
    missed = sorted(op for op in unsupported if _MATRIX_OPS.search(op))
    if missed:
        raise UncountedOperatorError(f"fvcore has no handle for matrix operators {missed}: "
                                     "the count would silently leave them out")
    alone = _analyse(module, inputs, with_handles=False)[1] if compare_alone else None
    return FlopCount(total=2 * int(total), by_operator={k: 2 * int(v) for k, v in fa.by_operator().items()},
                     elementwise_ops=dict(sorted(unsupported.items())),
                     fvcore_alone=None if alone is None else 2 * int(alone))


class _Prefill(nn.Module):
    def __init__(self, model: SharedLlama, batch_size: int, seq_len: int, chunk):
        super().__init__()
        self.m, self.chunk = model, chunk
        self.cache = model.new_cache(batch_size, seq_len)

    def forward(self, ids):
        return self.m.prefill(ids, self.cache, self.chunk)


class _Decode(nn.Module):
    def __init__(self, model: SharedLlama, batch_size: int, cache_len: int):
        super().__init__()
        self.m = model
        self.cache = model.new_cache(batch_size, cache_len)

    def forward(self, tokens, pos):
        return self.m.decode_step(tokens, pos, self.cache)


def _model(source, variant, dtype) -> SharedLlama:
    return source if isinstance(source, SharedLlama) else build_model(source, variant, dtype, "meta")


def count_prefill(source, variant="baseline", batch_size=1, seq_len=128, dtype="bfloat16",
                  chunk_size=None, compare_alone=True) -> FlopCount:
    """FLOPs of the prefill the harness times (logits for the last position only)."""
    m = _model(source, variant, dtype)
    dev = m.inv_freq.device
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=dev)
    return count(_Prefill(m, batch_size, seq_len, chunk_size), (ids,), compare_alone)


def count_decode_step(source, variant="baseline", batch_size=1, cache_len=129, dtype="bfloat16",
                      compare_alone=True) -> FlopCount:
    """FLOPs of one decode step over a static cache of `cache_len` positions (all attended,
    masked or not: that is what the kernel executes)."""
    m = _model(source, variant, dtype)
    dev = m.inv_freq.device
    tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
    pos = torch.tensor([cache_len - 1], device=dev)
    return count(_Decode(m, batch_size, cache_len), (tokens, pos), compare_alone)


# ---------------------------------------------------------------- counts of a benchmark point, cached
def _fingerprint() -> str:
    """The code a count depends on: a change to any of it invalidates every cached count."""
    import fvcore

    here = Path(__file__).parent
    h = hashlib.sha256(f"{torch.__version__} {getattr(fvcore, '__version__', '?')}".encode())
    for name in ("flops.py", "model.py", "layers.py", "ops.py", "plan.py", "presets.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


def point_counts(cfg, plan, batch_size: int, seq_len: int, decode_tokens: int, dtype,
                 chunk_size=None, cache_dir=None) -> tuple[dict, bool]:
    """fvcore totals of one point: {"prefill": FLOPs of the prefill, "decode_step": FLOPs of one
    step over the static cache of seq_len + decode_tokens positions}, and whether they came
    from `cache_dir`.

    Tracing a large model takes seconds and the counts are a pure function of the code,
    the config, the variant and the shapes, so they are kept as JSON under `cache_dir`
    (None: always traced), keyed by all of these.
    """
    from sabench.dtypes import dtype_name
    from sabench.plan import as_plan
    from sabench.presets import resolve_config

    cfg = resolve_config(cfg)
    plan = as_plan(plan, cfg)
    key = json.dumps([_fingerprint(), cfg.to_dict(), plan.variant, batch_size, seq_len, decode_tokens,
                      dtype_name(dtype), chunk_size], sort_keys=True, default=str)
    path = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()}.json" if cache_dir else None
    if path is not None and path.exists():
        try:
            cached = _valid_counts(json.loads(path.read_text()))
        except (OSError, ValueError):
            cached = None  # a torn, unreadable or wrong-shaped entry is counted again and rewritten
        if cached is not None:
            return cached, True
    counts = {"prefill": count_prefill(cfg, plan, batch_size, seq_len, dtype, chunk_size=chunk_size,
                                       compare_alone=False).total,
              "decode_step": count_decode_step(cfg, plan, batch_size, seq_len + decode_tokens, dtype,
                                               compare_alone=False).total}
    if path is not None:
        try:  # an unusable cache costs the saving, never the point
            path.parent.mkdir(parents=True, exist_ok=True)
            from sabench.io import write_atomic
            write_atomic(path, json.dumps(counts), fsync=False)
        except OSError:
            pass
    return counts, False


def _valid_counts(d) -> Optional[dict]:
    """A cache entry's counts when it has exactly the shape point_counts writes, else None."""
    if not isinstance(d, dict) or set(d) != {"prefill", "decode_step"}:
        return None
    if not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in d.values()):
        return None
    return d

"""dtype names accepted everywhere (CLI, suites, Python API)."""
from __future__ import annotations

import torch

from sabench.errors import UserError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
CANONICAL = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_dtype(value) -> torch.dtype:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; ValueError otherwise."""
    if isinstance(value, torch.dtype):
        if value in CANONICAL:
            return value
    elif isinstance(value, str) and value.strip().lower() in DTYPES:
        return DTYPES[value.strip().lower()]
    raise UserError(f"unsupported dtype {value!r}: use float32, bfloat16 or float16 (fp32, bf16, fp16)")


def dtype_name(dtype) -> str:
    return CANONICAL[parse_dtype(dtype)]


def dtype_bytes(dtype) -> int:
    return parse_dtype(dtype).itemsize

"""dtype names accepted everywhere (CLI, suites, Python API).

The table is torch-free: accounting, the memory model and suite validation need a dtype's
canonical name and size, not torch. `parse_dtype` (the torch.dtype) imports torch when called.
"""
from __future__ import annotations

# accepted spelling -> canonical name
ALIASES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
}
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}  # canonical name -> bytes per element


def _error(value) -> ValueError:
    from sabench.errors import UserError

    return UserError(f"unsupported dtype {value!r}: use float32, bfloat16 or float16 (fp32, bf16, fp16)")


def dtype_name(dtype) -> str:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> 'bfloat16'; ValueError otherwise. No torch import."""
    if isinstance(dtype, str):
        name = ALIASES.get(dtype.strip().lower())
        if name is None:
            raise _error(dtype)
        return name
    if type(dtype).__name__ == "dtype" and type(dtype).__module__ == "torch":  # a torch.dtype
        name = str(dtype).removeprefix("torch.")
        if name in ITEMSIZE:
            return name
    raise _error(dtype)


def dtype_bytes(dtype) -> int:
    """Bytes per element of a dtype given by name or torch.dtype. No torch import."""
    return ITEMSIZE[dtype_name(dtype)]


def parse_dtype(value):
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; ValueError otherwise."""
    import torch

    return getattr(torch, dtype_name(value))


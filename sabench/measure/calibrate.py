"""Roofline ceilings of the device, measured once per run.

MFU/MBU and roofline floors need a peak compute rate and a peak memory
bandwidth. Datasheet numbers are not reachable in practice (a large
device-to-device copy typically gets 80-90% of HBM bandwidth; a large bf16 GEMM
70-85% of dense peak, lower when power- or clock-capped), so ratios against
them understate how close a kernel is to what the device can do. We measure
both ceilings with the same timing primitive as the benchmark and keep the
datasheet figures alongside for reference.

Both measurements use time_fn (first call untimed, CUDA events, one sync) and
the median sample.
"""
from __future__ import annotations

import math
import re
from typing import Optional

import torch

from sabench.dtypes import dtype_name, parse_dtype
from sabench.measure.timing import DeviceLike, as_device, is_cuda, time_fn
from sabench.stats import median

GIB = 1 << 30
MIB = 1 << 20
WARMUP = 3
REPEATS = 10

# Dense (no sparsity) bf16 tensor-core FLOP/s and HBM/GDDR bandwidth, bytes/s.
DATASHEET = {
    "H100 SXM": {"peak_flops_per_s": 989e12, "peak_bandwidth_bytes_per_s": 3.35e12},
    "H100 PCIe": {"peak_flops_per_s": 756e12, "peak_bandwidth_bytes_per_s": 2.0e12},
    "H200": {"peak_flops_per_s": 989e12, "peak_bandwidth_bytes_per_s": 4.8e12},
    "A100 80GB": {"peak_flops_per_s": 312e12, "peak_bandwidth_bytes_per_s": 2.039e12},
    "A100 80GB PCIe": {"peak_flops_per_s": 312e12, "peak_bandwidth_bytes_per_s": 1.935e12},
    "A100 40GB": {"peak_flops_per_s": 312e12, "peak_bandwidth_bytes_per_s": 1.555e12},
    "L40S": {"peak_flops_per_s": 362e12, "peak_bandwidth_bytes_per_s": 0.864e12},
}

# (pattern on the CUDA/NVML device name, DATASHEET key), first match wins. Variants
# with different figures (H100 NVL, H200 NVL, GH200, L40 without S) match nothing:
# no datasheet is better than a wrong one.
_MATCHERS = [
    (r"\bGH200\b|\bH100\s*NVL\b|\bH200\s*NVL\b", None),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe"),
    (r"\bH100\b.*(\bSXM|\bHBM3\b)", "H100 SXM"),
    (r"\bA100\b.*\b80\s*GB\b.*\bPCIE\b|\bA100\b.*\bPCIE\b.*\b80\s*GB\b", "A100 80GB PCIe"),
    (r"\bA100\b.*\b80\s*GB\b", "A100 80GB"),
    (r"\bA100\b.*\b40\s*GB\b", "A100 40GB"),
    (r"\bL40S\b", "L40S"),
]


def datasheet_for(device_name: Optional[str]) -> Optional[dict]:
    """Datasheet ceilings for a CUDA device name, or None when unknown.

    'NVIDIA H100 80GB HBM3' -> H100 SXM, 'NVIDIA H100 PCIe' -> H100 PCIe,
    'NVIDIA H200' -> H200, 'NVIDIA A100-SXM4-80GB' -> A100 80GB, ... The
    returned dict carries the matched `name` and the `dtype` the FLOP/s refer to.
    """
    if not device_name:
        return None
    name = device_name.upper().replace("-", " ").replace("_", " ")
    for pattern, key in _MATCHERS:
        if re.search(pattern, name):
            if key is None:
                return None
            return {"name": key, "dtype": "bfloat16", **DATASHEET[key]}
    return None


def _finite_positive(x: float, what: str) -> float:
    if not (math.isfinite(x) and x > 0):
        raise RuntimeError(f"calibration produced a non-positive or non-finite {what}: {x}")
    return x


def measure_copy_bandwidth(device: DeviceLike, nbytes: Optional[int] = None, *,
                           warmup: int = WARMUP, repeats: int = REPEATS) -> dict:
    """Device-to-device copy bandwidth: 2 * nbytes / median time (every byte is read and written).

    Default size: 1 GiB on CUDA (far beyond L2, so HBM is measured), 256 MiB on CPU
    (beyond any LLC). The source is filled so that no untouched zero pages flatter a
    CPU measurement.
    """
    cuda = is_cuda(device)
    dev = as_device(device) if cuda else torch.device(device)
    if nbytes is None:
        nbytes = GIB if cuda else 256 * MIB
    nbytes = int(nbytes)
    if nbytes < 1:
        raise ValueError(f"nbytes must be >= 1, got {nbytes}")
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    src.fill_(1)
    dst = torch.empty_like(src)
    try:
        samples = time_fn(lambda: dst.copy_(src), warmup=warmup, repeats=repeats, device=dev)
    finally:
        del src, dst
        if cuda:
            torch.cuda.empty_cache()
    median_s = median(samples) / 1e3
    return {"bytes_per_s": _finite_positive(2 * nbytes / median_s, "bandwidth"),
            "nbytes": nbytes, "samples_ms": samples}


def measure_matmul_peak(device: DeviceLike, dtype=torch.bfloat16, n: Optional[int] = None, *,
                        warmup: int = WARMUP, repeats: int = REPEATS) -> dict:
    """Square GEMM rate: 2 n^3 / median time.

    Default: n=8192 in `dtype` on CUDA (large enough to saturate the tensor cores);
    on CPU n=1024 in float32 whatever `dtype` says (CPU bf16 GEMMs are emulated on
    most hosts and would not describe a ceiling). Inputs are random normal: all-zero
    operands draw less power and can run faster than real data.
    """
    cuda = is_cuda(device)
    dev = as_device(device) if cuda else torch.device(device)
    dt = parse_dtype(dtype) if cuda else torch.float32
    if n is None:
        n = 8192 if cuda else 1024
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dt, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dt, generator=gen)
    c = torch.empty(n, n, device=dev, dtype=dt)
    try:
        samples = time_fn(lambda: torch.matmul(a, b, out=c), warmup=warmup, repeats=repeats,
                          device=dev)
    finally:
        del a, b, c
        if cuda:
            torch.cuda.empty_cache()
    flops = 2 * n ** 3
    median_s = median(samples) / 1e3
    out = {"flops_per_s": _finite_positive(flops / median_s, "FLOP rate"), "n": n,
           "dtype": dtype_name(dt), "flops": flops, "samples_ms": samples}
    if dt == torch.float32:
        out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return out


def calibrate(device: DeviceLike, dtype=torch.bfloat16) -> dict:
    """Measured ceilings for `device` (+ datasheet when the GPU is known).

    Returns {"peak_bandwidth_bytes_per_s", "peak_flops_per_s", "peak_source": "measured",
    "datasheet": {...} | None, "calibration": {"copy": {...}, "matmul": {...}}} where
    the calibration entries keep the raw samples. On CPU this takes well under 3 s.
    """
    copy = measure_copy_bandwidth(device)
    mm = measure_matmul_peak(device, dtype)
    datasheet = None
    if is_cuda(device):
        try:
            datasheet = datasheet_for(torch.cuda.get_device_name(as_device(device)))
        except Exception:
            datasheet = None
    return {
        "peak_bandwidth_bytes_per_s": copy["bytes_per_s"],
        "peak_flops_per_s": mm["flops_per_s"],
        "peak_source": "measured",
        "datasheet": datasheet,
        "calibration": {"copy": copy, "matmul": mm},
    }

"""Roofline calibration: measured ceilings are sane numbers, fast on CPU; datasheet matching."""
from __future__ import annotations

import math

import pytest
import torch

from sabench.measure.calibrate import (DATASHEET, calibrate, datasheet_for, measure_copy_bandwidth,
                                       measure_matmul_peak)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pos(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_copy_bandwidth_cpu_small():
    r = measure_copy_bandwidth("cpu", nbytes=8 << 20)
    assert _pos(r["bytes_per_s"]) and r["nbytes"] == 8 << 20
    assert len(r["samples_ms"]) == 10
    with pytest.raises(ValueError):
        measure_copy_bandwidth("cpu", nbytes=0)


def test_matmul_peak_cpu_small_uses_float32():
    r = measure_matmul_peak("cpu", "bf16", n=128)
    assert _pos(r["flops_per_s"]) and r["n"] == 128 and r["flops"] == 2 * 128 ** 3
    assert r["dtype"] == "float32" and len(r["samples_ms"]) == 10


def test_calibrate_cpu_quick():
    r = calibrate("cpu", torch.bfloat16)
    assert _pos(r["peak_bandwidth_bytes_per_s"]) and _pos(r["peak_flops_per_s"])
    assert r["peak_source"] == "measured" and r["datasheet"] is None
    assert r["calibration"]["copy"]["nbytes"] == 256 << 20
    assert r["calibration"]["matmul"]["n"] == 1024
    assert r["peak_bandwidth_bytes_per_s"] == r["calibration"]["copy"]["bytes_per_s"]


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 SXM5 80GB", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA L40", None),
    ("Tesla T4", None),
    ("", None),
    (None, None),
])
def test_datasheet_for(name, key):
    d = datasheet_for(name)
    if key is None:
        assert d is None
    else:
        assert d["name"] == key
        assert d["peak_flops_per_s"] == DATASHEET[key]["peak_flops_per_s"]
        assert d["peak_bandwidth_bytes_per_s"] == DATASHEET[key]["peak_bandwidth_bytes_per_s"]


def test_datasheet_values():
    assert DATASHEET["H100 SXM"] == {"peak_flops_per_s": 989e12, "peak_bandwidth_bytes_per_s": 3.35e12}
    assert DATASHEET["H200"]["peak_bandwidth_bytes_per_s"] == 4.8e12
    assert DATASHEET["A100 40GB"]["peak_bandwidth_bytes_per_s"] == 1.555e12


@cuda
def test_calibrate_cuda():
    r = calibrate("cuda", torch.bfloat16)
    assert _pos(r["peak_bandwidth_bytes_per_s"]) and _pos(r["peak_flops_per_s"])
    assert r["calibration"]["copy"]["nbytes"] == 1 << 30 and r["calibration"]["matmul"]["n"] == 8192
    ds = r["datasheet"]
    if ds is not None:  # measured ceilings sit below the datasheet, and not absurdly far
        assert 0.3 * ds["peak_bandwidth_bytes_per_s"] < r["peak_bandwidth_bytes_per_s"] \
            <= 1.05 * ds["peak_bandwidth_bytes_per_s"]
        assert 0.3 * ds["peak_flops_per_s"] < r["peak_flops_per_s"] <= 1.05 * ds["peak_flops_per_s"]

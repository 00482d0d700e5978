"""device_peak and its breakdown, and energy per token, against the scripted fake NVML (no GPU).

The sampler runs its helper process with tests/fake_nvml.py (see test_measure_nvml_process.py);
the GPU-only test at the end runs a real point in its own process and skips without CUDA.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fake_nvml import FAKE_ENV, SPEC, device, script  # tests/ is on sys.path under pytest
from sabench.measure.energy import EnergyMeter, integrate_power
from sabench.measure.memory import footprint
from sabench.measure.nvml import NvmlSampler
from sabench.measure.nvml_readings import parse_pci_bus_id, used_bytes_by_bus

MY_PID = os.getpid()
BUS0 = "00000000:19:00.0"
GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process tests")


def _window(monkeypatch, dev, work=None):
    """One sampler window over the scripted device -> (pre-CUDA level, window result, meter)."""
    monkeypatch.setenv(FAKE_ENV, script([dev]))
    pre = used_bytes_by_bus(SPEC)[parse_pci_bus_id(BUS0)]  # its own fake: reading 0
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001)
    meter = EnergyMeter(s, torch.device("cpu"))
    s.start()
    time.sleep(0.02)
    meter.start()
    time.sleep(0.05)  # "the timed calls"
    meter.stop()
    time.sleep(0.02)
    r = s.stop()
    s.close()
    return pre, r, meter


def test_device_peak_from_the_per_process_reading_and_a_breakdown_that_adds_up(monkeypatch):
    dev = device(BUS0, readings=[3 * GIB, 30 * GIB, 36 * GIB, 33 * GIB],
                 procs=[(MY_PID, 34 * GIB), (MY_PID + 1, 2 * GIB)], energy_mj=[999_000, 1_000_000, 1_012_345])  # probe, start, stop
    pre, r, meter = _window(monkeypatch, dev)
    fp = footprint(weights=16 * GIB, kv_cache=8 * GIB, process_peak=r["peak_process_bytes"],
                   device_peak_used=r["peak_used_bytes"], pre_cuda_used=pre, allocated_peak=31 * GIB)
    assert fp["source"] == "nvml-process" and fp["device_peak"] == 34 * GIB  # not the device's 36 GiB
    assert fp["breakdown"] == {"weights": 16 * GIB, "kv_cache": 8 * GIB, "activations": 7 * GIB,
                               "context": 3 * GIB}
    assert sum(fp["breakdown"].values()) == fp["device_peak"] and fp["notes"] == []
    # the energy counter around the timed part: 12.345 J over 1000 tokens
    e = meter.result(r, tokens=1000, scope="5 timed prefill calls")
    assert e["energy_source"] == "nvml-energy-counter" and e["energy_j"] == pytest.approx(12.345)
    assert e["joules_per_token"] == pytest.approx(0.012345) and e["energy_window_s"] >= 0.05
    assert e["energy_scope"] == "5 timed prefill calls" and "energy_note" not in e
    assert r["power_samples"] is None  # a counter: no power sampling


def test_no_per_process_reading_falls_back_to_device_minus_pre_cuda_level(monkeypatch):
    dev = device(BUS0, readings=[3 * GIB, 30 * GIB, 36 * GIB, 33 * GIB], procs=[],
                 energy_mj=None, power_mw=[250_000])
    pre, r, meter = _window(monkeypatch, dev)
    assert pre == 3 * GIB and r["peak_process_bytes"] is None
    fp = footprint(weights=16 * GIB, kv_cache=8 * GIB, process_peak=None,
                   device_peak_used=r["peak_used_bytes"], pre_cuda_used=pre, allocated_peak=31 * GIB)
    assert fp["source"] == "nvml-device" and fp["device_peak"] == 33 * GIB
    assert sum(fp["breakdown"].values()) == 33 * GIB and fp["breakdown"]["context"] == 2 * GIB
    assert any("before this process initialised CUDA" in n for n in fp["notes"])
    # no energy counter: the window's power samples (250 W) integrated over the timed part
    assert len(r["power_samples"]) >= 2
    e = meter.result(r, tokens=50, scope="1 timed sequence")
    assert e["energy_source"] == "nvml-power-samples"
    assert e["energy_j"] == pytest.approx(250.0 * e["energy_window_s"], rel=1e-6)
    assert e["joules_per_token"] == pytest.approx(e["energy_j"] / 50)
    assert "Not Supported" in e["energy_note"]


def test_neither_energy_counter_nor_power_leaves_energy_null_with_a_note(monkeypatch):
    dev = device(BUS0, readings=[GIB, 2 * GIB], energy_mj=None, power_mw=None)
    _, r, meter = _window(monkeypatch, dev)
    e = meter.result(r, tokens=10, scope="x")
    assert e["energy_j"] is None and e["joules_per_token"] is None and e["energy_source"] is None
    assert "no power readings" in e["energy_note"]
    assert not any("NVML error" in n for n in r["notes"])  # a missing power reading is not an error


def test_energy_fields_absent_on_cpu_and_null_with_a_reason_without_nvml():
    assert EnergyMeter(None, torch.device("cpu")).result({}, 10, "x") == {}
    e = EnergyMeter(None, torch.device("cuda", 0), "NVML unavailable: no driver").result({}, 10, "x")
    assert e["energy_j"] is None and e["energy_note"] == "NVML unavailable: no driver"


def test_integrate_power():
    samples = [[0.0, 100_000], [1.0, 300_000], [2.0, 300_000]]  # W: 100 -> 300 (linear), then flat
    assert integrate_power(samples, 0.0, 2.0) == pytest.approx(200.0 + 300.0)
    assert integrate_power(samples, 0.5, 1.5) == pytest.approx(0.5 * (200 + 300) / 2 + 0.5 * 300)
    assert integrate_power(samples, 1.5, 3.0) == pytest.approx(1.5 * 300)  # held past the last sample
    assert integrate_power(samples[:1], 0.0, 1.0) is None and integrate_power(samples, 5.0, 6.0) is None


def test_breakdown_context_below_zero_is_clamped_with_a_note():
    fp = footprint(weights=10, kv_cache=5, process_peak=12, allocated_peak=15)
    assert fp["device_peak"] == 12 and fp["breakdown"]["context"] == 0
    assert any("exceed the measured peak by 3 B" in n for n in fp["notes"])
    assert footprint(weights=1, kv_cache=1)["device_peak"] is None  # nothing measured: no figure


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_real_gpu_point_device_peak_breakdown_and_energy(tmp_path):
    from sabench.presets import resolve_config

    spec = {"model_config": resolve_config("tiny").to_dict(), "device": "cuda", "dtype": "float32",
            "variant": "cla:2", "batch_size": 2, "seq_len": 64, "decode_tokens": 8, "warmup": 1,
            "repeats": 3, "prefill_chunk": None, "peaks": {}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "sabench.harness.point", str(tmp_path / "spec.json"),
                    str(tmp_path / "out.json")], check=True, cwd=str(ROOT), timeout=600,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    records = json.loads((tmp_path / "out.json").read_text())["records"]
    for r in records:
        assert r["status"] == "ok", r
        if "memory_source" not in r:
            pytest.skip(f"NVML unavailable: {r.get('notes')}")
        mem, bd = r["memory_bytes"], r["memory_breakdown"]
        assert r["memory_source"] in ("nvml-process", "nvml-device")
        assert mem["device_peak"] >= bd["weights"] + bd["kv_cache"] and bd["kv_cache"] == r["kv_cache_bytes"]
        assert sum(bd.values()) == mem["device_peak"] or "clamped" in " ".join(r.get("memory_notes", []))
        assert mem["device_peak"] >= mem["peak_reserved"]  # context included
        if r.get("energy_j") is not None:
            assert r["energy_j"] >= 0 and r["energy_source"].startswith("nvml-")
        else:
            assert r["energy_note"]

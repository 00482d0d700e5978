"""NVML's one-off readings (sabench.measure.nvml_readings) against the fake NVML in this process:
availability, finding torch's device, a GPU's facts, its run conditions (no GPU needed)."""
from __future__ import annotations

import sys

import pytest

import sabench.measure.nvml_readings as readings_mod
from fake_nvml import FakeNVMLError, FakeNvml, device, fake  # tests/ is on sys.path under pytest
from sabench.measure.nvml import NvmlSampler
from sabench.measure.nvml_readings import (Availability, GpuFacts, NvmlUnavailable, available, gpu_conditions,
                                           gpu_facts, gpu_facts_by_id, parse_pci_bus_id, resolve_handle)

BUS0 = "00000000:19:00.0"
BUS1 = "00000000:3B:00.0"


def test_pci_lookup_falls_back_to_scan_then_index_with_note():
    class NoByBus(FakeNvml):
        def nvmlDeviceGetHandleByPciBusId(self, bus_id):
            raise FakeNVMLError("Function Not Found")

    two = [device(BUS0), device(BUS1)]
    notes: list = []
    assert resolve_handle(NoByBus({"devices": two}), 0, BUS1, notes) == (1, "pci_bus_id") and notes == []

    notes = []
    assert resolve_handle(fake(*two), 1, "00000000:AA:00.0", notes) == (1, "index")
    assert any("AA:00.0" in n for n in notes) and any("CUDA_DEVICE_ORDER" in n for n in notes)
    with pytest.raises(NvmlUnavailable, match="no NVML handle for CUDA device 2"):
        resolve_handle(fake(*two), 2, "00000000:AA:00.0")


def test_parse_pci_bus_id():
    assert parse_pci_bus_id("00000000:3B:00.0") == (0, 0x3B, 0)
    assert parse_pci_bus_id(b"0000:3b:00.0\x00") == (0, 0x3B, 0)
    assert parse_pci_bus_id("3b:01.0") == (0, 0x3B, 1)
    assert parse_pci_bus_id("garbage") is None


def test_missing_pynvml_and_init_failure(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    a = available()
    assert isinstance(a, Availability) and not a and "pynvml" in a.reason
    assert NvmlSampler.available is available  # the sampler asks the same question, in one place
    with pytest.raises(NvmlUnavailable):
        NvmlSampler(0)
    with pytest.raises(NvmlUnavailable):
        gpu_facts(0)

    broken = fake(device(BUS0), init_error="Driver Not Loaded")
    a = available(nvml=broken)
    assert not a and "Driver Not Loaded" in a.reason
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        gpu_facts(0, nvml=broken)

    assert not available(nvml=fake())
    ok = fake(device(BUS0))
    assert available(nvml=ok)
    assert ok.init_calls == ok.shutdown_calls == 1


def test_gpu_facts_of_torchs_device_found_by_bus():
    nvml = fake(device(BUS1, name="Other"), device(BUS0, name="NVIDIA H100 80GB HBM3", total=85520809984))
    facts = gpu_facts(0, nvml=nvml, pci_bus_id=BUS0)  # torch's device 0 is NVML's 1
    assert facts == GpuFacts(device_name="NVIDIA H100 80GB HBM3", driver="570.86.15",
                             memory_total_bytes=85520809984, sm_clock_max_mhz=1980, mem_clock_max_mhz=2619,
                             power_limit_w=700.0, pci_bus_id=BUS0)
    assert nvml.init_calls == nvml.shutdown_calls == 1
    assert facts.env_fields() == {"device_name": "NVIDIA H100 80GB HBM3", "driver": "570.86.15",
                                  "memory_total_bytes": 85520809984, "sm_clock_max_mhz": 1980,
                                  "mem_clock_max_mhz": 2619, "power_limit_w": 700.0, "pci_bus_id": BUS0}


def test_gpu_facts_leave_out_what_the_device_does_not_answer_and_carry_the_notes():
    nvml = fake(device(BUS0, max_clocks=None, power_limit_mw=None), device(BUS1, mig=True))
    facts = gpu_facts(0, nvml=nvml, pci_bus_id=BUS0)
    assert facts.sm_clock_max_mhz is facts.power_limit_w is None and facts.notes == ()
    assert "sm_clock_max_mhz" not in facts.env_fields() and "nvml_notes" not in facts.env_fields()
    facts = gpu_facts(1, nvml=nvml, pci_bus_id="00000000:AA:00.0")  # unknown bus: index 1, which has MIG
    assert facts.pci_bus_id == BUS1 and len(facts.notes) == 3  # no such bus, chosen by index, MIG
    assert "MIG is enabled" in facts.env_fields()["nvml_notes"][-1]


def test_gpu_facts_by_nvml_index_or_uuid():
    nvml = fake(device(BUS0, name="A"), device(BUS1, name="B", uuid="GPU-b"))
    assert gpu_facts_by_id("1", nvml=nvml).device_name == "B"
    assert gpu_facts_by_id("GPU-b", nvml=nvml).pci_bus_id == BUS1
    with pytest.raises(FakeNVMLError):
        gpu_facts_by_id("GPU-x", nvml=nvml)


def test_gpu_conditions_read_the_named_gpu():
    nvml = fake(device(BUS0, clocks=(1000, 2000)),
                device(BUS1, clocks=(1410, 2619), throttle=0x20 | 0x1, temperature=71, procs=[(1, 5 << 20)]))
    assert gpu_conditions("1", nvml=nvml) == {
        "sm_clock_mhz": 1410, "mem_clock_mhz": 2619, "throttle_reasons": ["GpuIdle", "SwThermalSlowdown"],
        "other_processes": [{"pid": 1, "used_bytes": 5 << 20}], "temperature_c": 71}
    assert "throttle_reasons" not in gpu_conditions("0", nvml=fake(device(BUS0, throttle=None)))


def test_pci_bus_id_mapping_when_nvml_order_differs():
    # NVML enumerates by PCI bus: index 0 = bus 0x19, index 1 = bus 0x3B. Suppose torch's
    # device 0 (FASTEST_FIRST / CUDA_VISIBLE_DEVICES=1) is the board on bus 0x3B.
    nvml = fake(device(BUS0), device(BUS1))
    notes: list = []
    assert resolve_handle(nvml, 0, "0000:3b:00.0", notes) == (1, "pci_bus_id")  # 4-digit domain, lower case
    assert resolve_handle(nvml, 1, BUS0, notes) == (0, "pci_bus_id") and notes == []


def test_no_torch_bus_id_falls_back_to_index(monkeypatch):
    # When torch cannot tell the bus id or UUID (a CPU-only torch; faked here so that a GPU box,
    # whose real ids the fake NVML does not know, takes the same path): index fallback, noted
    # on a multi-GPU host.
    monkeypatch.setattr(readings_mod, "torch_pci_bus_id", lambda index: None)
    monkeypatch.setattr(readings_mod, "torch_uuid", lambda index: None)
    notes: list = []
    assert resolve_handle(fake(device(BUS0), device(BUS1)), 1, notes=notes) == (1, "index")
    assert any("by index" in n for n in notes)
    notes = []
    assert resolve_handle(fake(device(BUS0)), 0, notes=notes)[1] == "index"
    assert notes == []  # single GPU: unambiguous, no warning

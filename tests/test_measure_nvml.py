"""Device resolution, availability, nvml_device_info against an in-process fake NVML, and the
sampler's window bookkeeping against the scripted fake in its helper process (no GPU needed)."""
from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import pytest

import sabench.measure.nvml_readings as readings_mod
from fake_nvml import FAKE_ENV, SPEC, device, script  # tests/ is on sys.path under pytest
from sabench.measure.nvml import (Availability, NvmlSampler, NvmlUnavailable, nvml_device_info,
                                  open_device, parse_pci_bus_id, resolve_handle)

MY_PID = os.getpid()


class FakeNVMLError(Exception):
    pass


class FakeDevice:
    def __init__(self, bus_id, name="Fake GPU", total=80 << 30):
        self.bus_id, self.name, self.total = bus_id, name, total


class FakeNvml:
    """The subset of the pynvml API that device resolution and nvml_device_info use, in-process."""

    NVMLError = FakeNVMLError
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, devices, init_error=None):
        self.devices = devices
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error
        self.init_calls += 1

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.devices):
            raise FakeNVMLError("Invalid Argument")
        return self.devices[i]

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        want = parse_pci_bus_id(bus_id)
        for d in self.devices:
            if parse_pci_bus_id(d.bus_id) == want:
                return d
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=h.bus_id.encode())

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=1 << 30, total=h.total, free=h.total - (1 << 30))

    def nvmlDeviceGetName(self, h):
        return h.name

    def nvmlSystemGetDriverVersion(self):
        return b"570.86.15"

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return {1: 1980, 2: 2619}[kind]

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700000


BUS0 = "00000000:19:00.0"
BUS1 = "00000000:3B:00.0"


def test_pci_lookup_falls_back_to_scan_then_index_with_note():
    d19 = FakeDevice(BUS0)
    d3b = FakeDevice(BUS1)

    class NoByBus(FakeNvml):
        def nvmlDeviceGetHandleByPciBusId(self, bus_id):
            raise FakeNVMLError("Function Not Found")

    notes: list = []
    h, how = resolve_handle(NoByBus([d19, d3b]), 0, BUS1, notes)
    assert h is d3b and how == "pci_bus_id" and notes == []

    notes = []
    h, how = resolve_handle(FakeNvml([d19, d3b]), 1, "00000000:AA:00.0", notes)
    assert h is d3b and how == "index"
    assert any("AA:00.0" in n for n in notes) and any("CUDA_DEVICE_ORDER" in n for n in notes)


def test_parse_pci_bus_id():
    assert parse_pci_bus_id("00000000:3B:00.0") == (0, 0x3B, 0)
    assert parse_pci_bus_id(b"0000:3b:00.0\x00") == (0, 0x3B, 0)
    assert parse_pci_bus_id("3b:01.0") == (0, 0x3B, 1)
    assert parse_pci_bus_id("garbage") is None


def test_missing_pynvml_and_init_failure(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    a = NvmlSampler.available()
    assert isinstance(a, Availability) and not a and "pynvml" in a.reason
    with pytest.raises(NvmlUnavailable):
        NvmlSampler(0)
    with pytest.raises(NvmlUnavailable):
        nvml_device_info(0)

    broken = FakeNvml([FakeDevice(BUS0)], init_error=FakeNVMLError("Driver Not Loaded"))
    a = NvmlSampler.available(nvml=broken)
    assert not a and "Driver Not Loaded" in a.reason
    with pytest.raises(NvmlUnavailable):
        nvml_device_info(0, nvml=broken)

    assert not NvmlSampler.available(nvml=FakeNvml([]))
    ok = FakeNvml([FakeDevice(BUS0)])
    assert NvmlSampler.available(nvml=ok)
    assert ok.init_calls == ok.shutdown_calls == 1


def test_nvml_device_info():
    d0 = FakeDevice(BUS0, name="NVIDIA H100 80GB HBM3", total=85520809984)
    d1 = FakeDevice(BUS1, name=b"Other")
    fake = FakeNvml([d1, d0])
    info = nvml_device_info(0, nvml=fake, pci_bus_id=BUS0)
    assert info["device_name"] == "NVIDIA H100 80GB HBM3"
    assert info["driver"] == "570.86.15"
    assert info["memory_total_bytes"] == 85520809984
    assert info["sm_clock_max_mhz"] == 1980 and info["mem_clock_max_mhz"] == 2619
    assert info["power_limit_w"] == 700.0
    assert parse_pci_bus_id(info["pci_bus_id"]) == parse_pci_bus_id(BUS0)
    assert fake.init_calls == fake.shutdown_calls == 1

    class NoClocks(FakeNvml):
        def nvmlDeviceGetMaxClockInfo(self, h, kind):
            raise FakeNVMLError("Not Supported")

    info = nvml_device_info(0, nvml=NoClocks([d0]), pci_bus_id=BUS0)
    assert "sm_clock_max_mhz" not in info and info["power_limit_w"] == 700.0


def test_pci_bus_id_mapping_when_nvml_order_differs():
    # NVML enumerates by PCI bus: index 0 = bus 0x19, index 1 = bus 0x3B. Suppose torch's
    # device 0 (FASTEST_FIRST / CUDA_VISIBLE_DEVICES=1) is the board on bus 0x3B.
    d19, d3b = FakeDevice(BUS0), FakeDevice(BUS1)
    fake = FakeNvml([d19, d3b])
    notes: list = []
    assert open_device(fake, 0, "0000:3b:00.0", notes) == (d3b, "pci_bus_id")  # 4-digit domain, lower case
    assert open_device(fake, 1, BUS0, notes) == (d19, "pci_bus_id") and notes == []


def test_no_torch_bus_id_falls_back_to_index(monkeypatch):
    # When torch cannot tell the bus id or UUID (a CPU-only torch; faked here so that a GPU box,
    # whose real ids the fake NVML does not know, takes the same path): index fallback, noted
    # on a multi-GPU host.
    monkeypatch.setattr(readings_mod, "torch_pci_bus_id", lambda index: None)
    monkeypatch.setattr(readings_mod, "torch_uuid", lambda index: None)
    d0, d1 = FakeDevice(BUS0), FakeDevice(BUS1)
    notes: list = []
    assert resolve_handle(FakeNvml([d0, d1]), 1, notes=notes) == (d1, "index")
    assert any("by index" in n for n in notes)
    notes = []
    assert resolve_handle(FakeNvml([FakeDevice(BUS0)]), 0, notes=notes)[1] == "index"
    assert notes == []  # single GPU: unambiguous, no warning


# -- window bookkeeping (the sampler's helper process runs the scripted fake) --------------


def test_sampler_reusable_windows_and_misuse(monkeypatch):
    monkeypatch.setenv(FAKE_ENV, script([device(BUS0, readings=[1, 5, 2])]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    with pytest.raises(RuntimeError):
        s.stop()
    s.start()
    with pytest.raises(RuntimeError):
        s.start()
    time.sleep(0.02)
    assert s.stop()["peak_used_bytes"] == 5
    s.start()  # second window: fresh idle and peak (script now stays at 2)
    r = s.stop()
    assert r["idle_used_bytes"] == 2 and r["peak_used_bytes"] == 2
    s.close()
    s.close()  # idempotent
    for call in (s.start, s.read_idle, s.energy_mj):
        with pytest.raises(RuntimeError, match="after close"):
            call()


def test_read_idle_failure_returns_none_with_a_note_in_its_window_only(monkeypatch):
    monkeypatch.setenv(FAKE_ENV, script([device(BUS0, readings=[999, 100, 300], errors_at=[0])]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    assert s.read_idle() is None  # no NVML error raised into the caller
    s.start()  # takes the idle reading again
    time.sleep(0.02)
    r = s.stop()
    assert r["idle_used_bytes"] == 100 and r["peak_used_bytes"] == 300
    assert any("read_idle" in n and "Unknown Error at reading 0" in n for n in r["notes"]), r["notes"]
    s.start()
    assert s.stop()["notes"] == []  # the note belonged to that window only
    s.close()


def test_peak_below_idle_is_clamped_to_zero_with_note(monkeypatch):
    # device-wide "used": another process freed memory after the idle reading
    monkeypatch.setenv(FAKE_ENV, script([device(BUS0, readings=[500, 300, 200], procs=[(MY_PID, 64)])]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    time.sleep(0.02)
    r = s.stop()
    s.close()
    assert r["idle_used_bytes"] == 500 and r["peak_used_bytes"] == 300
    assert r["peak_minus_idle_bytes"] == 0 and r["peak_process_bytes"] == 64
    assert any("clamped to 0" in n for n in r["notes"]), r["notes"]

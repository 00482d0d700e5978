"""NvmlSampler and nvml_device_info against a scripted fake NVML module (no GPU needed)."""
from __future__ import annotations

import gc
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

import sabench.measure.nvml as nvml_mod
from sabench.measure.nvml import (Availability, NvmlSampler, NvmlUnavailable, nvml_device_info,
                                  parse_pci_bus_id, resolve_handle)

MY_PID = os.getpid()


class FakeNVMLError(Exception):
    pass


class FakeDevice:
    def __init__(self, bus_id, readings=(1000,), procs=None, name="Fake GPU", total=80 << 30,
                 errors_at=(), block_at=None):
        self.bus_id = bus_id
        self.readings = list(readings)
        self.procs = procs  # None -> [] ; list of (pid, used) ; callable -> raises
        self.name = name
        self.total = total
        self.errors_at = set(errors_at)
        self.calls = 0
        self.exhausted = threading.Event()
        self.block_at = block_at  # reading k == block_at waits for `release` (a stuck driver call)
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.blocked_thread: "threading.Thread | None" = None


class FakeNvml:
    """The subset of the pynvml API the sampler uses; memory readings follow a script.

    Reading k (k = 0, 1, ...) of device d returns d.readings[k], then the last value
    forever; k in d.errors_at raises FakeNVMLError instead. `exhausted` is set once
    the script has been fully served, so tests can wait on it instead of sleeping.
    Reading k == d.block_at sets d.blocked and waits for d.release first.
    """

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
        k = h.calls
        h.calls += 1
        if k == h.block_at:
            h.blocked_thread = threading.current_thread()
            h.blocked.set()
            h.release.wait()
        if k >= len(h.readings) - 1:
            h.exhausted.set()
        if k in h.errors_at:
            raise FakeNVMLError(f"Unknown Error at reading {k}")
        used = h.readings[min(k, len(h.readings) - 1)]
        return SimpleNamespace(used=used, total=h.total, free=h.total - used)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if callable(h.procs):
            return h.procs()
        return [SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in (h.procs or [])]

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


def _wait(dev, timeout=5.0):
    assert dev.exhausted.wait(timeout), "sampler never consumed the scripted readings"


def test_peak_and_idle_subtraction():
    dev = FakeDevice(BUS0, readings=[100, 200, 500, 300], procs=[(MY_PID, 64)])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    _wait(dev)
    r = s.stop()
    s.close()
    assert r["idle_used_bytes"] == 100  # taken at start(), before the thread
    assert r["peak_used_bytes"] == 500
    assert r["peak_minus_idle_bytes"] == 400
    assert r["peak_process_bytes"] == 64
    assert r["n_samples"] >= 3
    assert r["interval_s"] == 0.001
    assert r["device_mapping"] == "pci_bus_id"
    assert r["notes"] == []


def test_read_idle_explicit_and_context_manager():
    dev = FakeDevice(BUS0, readings=[10, 70, 40])
    fake = FakeNvml([dev])
    with NvmlSampler(0, nvml=fake, pci_bus_id=BUS0, interval_s=0.001, track_process=False) as s:
        _wait(dev)
    r = s.result
    assert r["idle_used_bytes"] == 10 and r["peak_used_bytes"] == 70
    assert fake.shutdown_calls == 1  # __exit__ closed NVML

    dev2 = FakeDevice(BUS0, readings=[5, 50, 20])
    s2 = NvmlSampler(0, nvml=FakeNvml([dev2]), pci_bus_id=BUS0, interval_s=0.001)
    assert s2.read_idle() == 5
    s2.start()  # keeps the explicit idle reading
    _wait(dev2)
    r2 = s2.stop()
    s2.close()
    assert r2["idle_used_bytes"] == 5 and r2["peak_minus_idle_bytes"] == 45


def test_per_process_empty_list_is_none_with_note():
    dev = FakeDevice(BUS0, readings=[1, 2, 3], procs=[])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    _wait(dev)
    r = s.stop()
    assert r["peak_process_bytes"] is None
    assert any("no compute process" in n for n in r["notes"])


def test_per_process_foreign_pids_only_is_none_with_note():
    dev = FakeDevice(BUS0, readings=[1, 2, 3], procs=[(MY_PID + 1, 10 << 20), (1, 5 << 20)])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    _wait(dev)
    r = s.stop()
    assert r["peak_process_bytes"] is None
    assert any(str(MY_PID) in n and "host" in n for n in r["notes"])


def test_per_process_query_error_disables_it_with_note():
    def boom():
        raise FakeNVMLError("Not Supported")

    dev = FakeDevice(BUS0, readings=[1, 9, 3], procs=boom)
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    _wait(dev)
    r = s.stop()
    assert r["peak_used_bytes"] == 9 and r["peak_process_bytes"] is None
    assert any("Not Supported" in n for n in r["notes"])


def test_nvml_error_mid_run_is_recorded_not_raised():
    dev = FakeDevice(BUS0, readings=[100, 150, 999, 400, 200], errors_at={2})
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001,
                    track_process=False)
    s.start()
    _wait(dev)
    r = s.stop()  # must not raise
    assert r["peak_used_bytes"] == 400  # the failed reading (999) is skipped, not invented
    assert any("NVML error" in n and "Unknown Error" in n for n in r["notes"])


def test_stop_is_prompt_at_200hz_and_with_long_interval():
    dev = FakeDevice(BUS0, readings=[1])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.005)
    s.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    s.stop()
    assert time.perf_counter() - t0 < 10.0  # liveness, not speed: it must not hang
    # a 30 s interval would block stop() for up to 30 s with time.sleep; Event.wait returns at once
    s2 = NvmlSampler(0, nvml=FakeNvml([FakeDevice(BUS0)]), pci_bus_id=BUS0, interval_s=30.0)
    s2.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    s2.stop()
    assert time.perf_counter() - t0 < 10.0  # a third of the interval it must not wait out


def test_achieved_rate_at_least_100hz():
    dev = FakeDevice(BUS0, readings=[1], procs=[(MY_PID, 1)])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0)  # default 5 ms = 200 Hz
    assert s.interval_s <= 0.01
    s.start()
    time.sleep(0.3)
    r = s.stop()
    assert r["achieved_hz"] >= 100, r
    assert r["n_samples"] >= 30


def test_pci_bus_id_mapping_when_nvml_order_differs():
    # NVML enumerates by PCI bus: index 0 = bus 0x19, index 1 = bus 0x3B. Suppose torch's
    # device 0 (FASTEST_FIRST / CUDA_VISIBLE_DEVICES=1) is the board on bus 0x3B.
    d19 = FakeDevice(BUS0, readings=[111])
    d3b = FakeDevice(BUS1, readings=[222])
    fake = FakeNvml([d19, d3b])
    s = NvmlSampler(0, nvml=fake, pci_bus_id="0000:3b:00.0")  # 4-digit domain, lower case
    assert s.handle is d3b and s.mapping == "pci_bus_id"
    assert s.read_idle() == 222
    s.close()
    # and the other way round
    s = NvmlSampler(1, nvml=fake, pci_bus_id=BUS0)
    assert s.handle is d19
    s.close()


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


def test_no_torch_bus_id_falls_back_to_index(monkeypatch):
    # When torch cannot tell the bus id or UUID (a CPU-only torch; faked here so that a GPU box,
    # whose real ids the fake NVML does not know, takes the same path): index fallback, noted
    # on a multi-GPU host.
    monkeypatch.setattr(nvml_mod, "torch_pci_bus_id", lambda index: None)
    monkeypatch.setattr(nvml_mod, "torch_uuid", lambda index: None)
    d0, d1 = FakeDevice(BUS0), FakeDevice(BUS1)
    s = NvmlSampler(1, nvml=FakeNvml([d0, d1]))
    assert s.handle is d1 and s.mapping == "index"
    assert any("by index" in n for n in s.notes)
    s.close()
    s = NvmlSampler(0, nvml=FakeNvml([FakeDevice(BUS0)]))  # single GPU: unambiguous, no warning
    assert s.mapping == "index" and s.notes == []
    s.close()


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
        NvmlSampler(0, nvml=broken)

    assert not NvmlSampler.available(nvml=FakeNvml([]))
    ok = FakeNvml([FakeDevice(BUS0)])
    assert NvmlSampler.available(nvml=ok)
    assert ok.init_calls == ok.shutdown_calls == 1


def test_sampler_reusable_windows_and_misuse():
    dev = FakeDevice(BUS0, readings=[1, 5, 2])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001)
    with pytest.raises(RuntimeError):
        s.stop()
    s.start()
    with pytest.raises(RuntimeError):
        s.start()
    _wait(dev)
    assert s.stop()["peak_used_bytes"] == 5
    s.start()  # second window: fresh idle and peak (script now stays at 2)
    r = s.stop()
    assert r["idle_used_bytes"] == 2 and r["peak_used_bytes"] == 2
    s.close()
    s.close()  # idempotent


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


def test_thread_stuck_past_stop_is_not_revived_by_the_next_window(monkeypatch):
    # Each window has its own stop event: the thread stop() gave up on (stuck in an NVML call)
    # must end once the call returns, not resume sampling beside the next window's thread.
    monkeypatch.setattr(nvml_mod, "THREAD_JOIN_TIMEOUT_S", 0.05)
    dev = FakeDevice(BUS0, readings=[10, 20, 30, 40], block_at=2)  # 0: idle, 1: sample, 2: stuck
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    s.start()
    assert dev.blocked.wait(10.0)
    r1 = s.stop()  # gives up on the stuck thread
    assert any("still inside an NVML call" in n for n in r1["notes"]), r1["notes"]
    stuck = dev.blocked_thread
    s.start()  # the next window, with a thread of its own
    dev.release.set()  # the stuck call returns
    stuck.join(10.0)
    try:
        assert not stuck.is_alive(), "the abandoned sampler thread went on sampling"
    finally:
        s.stop()
        s.close()
        stuck.join(10.0)


def test_thread_read_idle_failure_returns_none_with_note():
    dev = FakeDevice(BUS0, readings=[999, 100, 300], errors_at={0})
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    assert s.read_idle() is None  # like process mode: no NVML error raised into the caller
    s.start()  # takes the idle reading again
    _wait(dev)
    r = s.stop()
    s.close()
    assert r["idle_used_bytes"] == 100 and r["peak_used_bytes"] == 300
    assert any("read_idle" in n and "Unknown Error at reading 0" in n for n in r["notes"]), r["notes"]
    # the note belongs to that window only
    s2 = NvmlSampler(0, nvml=FakeNvml([FakeDevice(BUS0)]), pci_bus_id=BUS0, track_process=False)
    with s2:
        pass
    assert s2.result["notes"] == []


def test_peak_below_idle_is_clamped_to_zero_with_note():
    # device-wide "used": another process freed memory after the idle reading
    dev = FakeDevice(BUS0, readings=[500, 300, 200], procs=[(MY_PID, 64)])
    s = NvmlSampler(0, nvml=FakeNvml([dev]), pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    _wait(dev)
    r = s.stop()
    s.close()
    assert r["idle_used_bytes"] == 500 and r["peak_used_bytes"] == 300
    assert r["peak_minus_idle_bytes"] == 0
    assert any("clamped to 0" in n for n in r["notes"]), r["notes"]


def test_thread_mode_del_shuts_nvml_down():
    fake = FakeNvml([FakeDevice(BUS0, readings=[1, 2])])
    s = NvmlSampler(0, nvml=fake, pci_bus_id=BUS0, interval_s=0.001)
    del s  # never closed
    gc.collect()
    assert fake.init_calls == fake.shutdown_calls == 1  # NVML's init count does not leak

    fake = FakeNvml([FakeDevice(BUS0, readings=[1, 2])])
    s = NvmlSampler(0, nvml=fake, pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    s.stop()
    del s
    gc.collect()
    assert fake.init_calls == fake.shutdown_calls == 1

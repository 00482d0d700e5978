"""The one fake of the pynvml API: scripted GPUs, in this process or across a process boundary.

In this process: `fake(device(...), ...)` is the pynvml-like object itself, for the readings of
sabench.measure.nvml_readings (`gpu_facts(0, nvml=fake(...))`). Across a process boundary:
NvmlSampler runs NVML in a helper process, which cannot receive a Python object; it imports
"tests.fake_nvml:make_fake" instead, and make_fake() reads the same script from the environment
variable SABENCH_FAKE_NVML (JSON), which the helper inherits:

    monkeypatch.setenv(FAKE_ENV, script([device(BUS0, readings=[100, 500, 300])]))
    NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0)

Handles are NVML indices. Memory reading k (k = 0, 1, ...) of a device returns readings[k], then
the last value forever; k in errors_at raises FakeNVMLError; k == hang_at blocks forever (a driver
call that never returns); k == exit_at ends the process (a crash). benchmarks/sampler_overhead.py
scripts a slow query (query_s, hold_gil) to stand in for a real GPU's NVML on machines without one.
Imports nothing from sabench or torch, so the helper stays light.
"""
from __future__ import annotations

import json
import os
import sys
import time

FAKE_ENV = "SABENCH_FAKE_NVML"
SPEC = "tests.fake_nvml:make_fake"


class FakeNVMLError(Exception):
    pass


class _NS:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def device(bus_id, readings=(1000,), procs=None, *, procs_error=None, errors_at=(), hang_at=None,
           exit_at=None, name="Fake GPU", total=80 << 30, energy_mj=None, power_mw=None, uuid=None,
           clocks=(1410, 2619), max_clocks=(1980, 2619), power_limit_mw=700_000, throttle=0,
           temperature=50, mig=False) -> dict:
    """One scripted device; procs is a list of (pid, usedGpuMemory or None) or None for [].

    energy_mj: readings of the total-energy counter (call k gets energy_mj[k], then the last
    one); None: the counter raises NotSupported (pre-Volta). power_mw: the same for
    nvmlDeviceGetPowerUsage; None: it raises NotSupported. clocks, max_clocks: (SM, memory) MHz
    now and at most, None: NotSupported. throttle: the mask of active throttle reasons.
    """
    return {"bus_id": bus_id, "readings": list(readings),
            "procs": [list(p) for p in procs] if procs is not None else None,
            "procs_error": procs_error, "errors_at": list(errors_at), "hang_at": hang_at,
            "exit_at": exit_at, "name": name, "total": total,
            "energy_mj": list(energy_mj) if energy_mj is not None else None,
            "power_mw": list(power_mw) if power_mw is not None else None,
            "uuid": uuid, "clocks": clocks, "max_clocks": max_clocks, "power_limit_mw": power_limit_mw,
            "throttle": throttle, "temperature": temperature, "mig": mig}


def script(devices, *, init_error=None, noisy=False, driver="570.86.15", query_s=0.0, hold_gil=False) -> str:
    """The JSON value of SABENCH_FAKE_NVML. noisy=True prints junk to stdout on every call.
    query_s: how long each memory reading takes, sleeping (a ctypes call into libnvidia-ml
    releases the GIL) or, with hold_gil, spinning."""
    return json.dumps({"devices": list(devices), "init_error": init_error, "noisy": noisy, "driver": driver,
                       "query_s": query_s, "hold_gil": hold_gil})


def fake(*devices, **kw) -> "FakeNvml":
    """The fake in this process, scripted as `script(devices, **kw)` scripts it across processes."""
    return FakeNvml(json.loads(script(devices, **kw)))


def _parse_bus(bus_id):
    s = bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)
    parts = s.strip().rstrip("\x00").split(":")
    if len(parts) == 2:
        parts = ["0"] + parts
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".")[0], 16)
    except (ValueError, IndexError):
        return None


class FakeNvml:
    NVMLError = FakeNVMLError
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    nvmlClocksThrottleReasonGpuIdle = 0x1
    nvmlClocksThrottleReasonSwPowerCap = 0x4
    nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
    nvmlClocksThrottleReasonAll = 0x1FF

    def __init__(self, cfg: dict):
        self.devices = cfg.get("devices") or []
        for d in self.devices:
            d["calls"] = d["energy_calls"] = d["power_calls"] = 0
        self.init_error = cfg.get("init_error")
        self.noisy = bool(cfg.get("noisy"))
        self.driver = cfg.get("driver")
        self.query_s, self.hold_gil = float(cfg.get("query_s") or 0.0), bool(cfg.get("hold_gil"))
        self.init_calls = self.shutdown_calls = 0

    def _noise(self):
        if self.noisy:
            print("fake NVML: a stray line on stdout", flush=True)
            sys.stdout.write("{\"id\": 1, \"ok\": false, \"error\": \"forged\"}\n")
            sys.stdout.flush()

    def _query_time(self):
        if self.hold_gil:
            t = time.perf_counter() + self.query_s
            while time.perf_counter() < t:
                pass
        elif self.query_s:
            time.sleep(self.query_s)

    def nvmlInit(self):
        self._noise()
        if self.init_error:
            raise FakeNVMLError(self.init_error)
        self.init_calls += 1

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self):
        return self.driver.encode()

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.devices):
            raise FakeNVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        want = _parse_bus(bus_id)
        for i, d in enumerate(self.devices):
            if _parse_bus(d["bus_id"]) == want:
                return i
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for i, d in enumerate(self.devices):
            if d.get("uuid") == uuid:
                return i
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetPciInfo(self, h):
        return _NS(busId=self.devices[h]["bus_id"].encode())

    def nvmlDeviceGetMigMode(self, h):
        if not self.devices[h].get("mig"):
            raise FakeNVMLError("Not Supported")
        return [1, 1]

    def nvmlDeviceGetMemoryInfo(self, h):
        self._noise()
        self._query_time()
        d = self.devices[h]
        k = d["calls"]
        d["calls"] += 1
        if d.get("exit_at") is not None and k >= d["exit_at"]:
            os._exit(3)
        if d.get("hang_at") is not None and k >= d["hang_at"]:
            while True:
                time.sleep(3600)
        if k in d["errors_at"]:
            raise FakeNVMLError(f"Unknown Error at reading {k}")
        used = d["readings"][min(k, len(d["readings"]) - 1)]
        return _NS(used=used, total=d["total"], free=d["total"] - used)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        d = self.devices[h]
        if d.get("procs_error"):
            raise FakeNVMLError(d["procs_error"])
        return [_NS(pid=p, usedGpuMemory=u) for p, u in (d["procs"] or [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def _scripted(self, h, key):
        d = self.devices[h]
        values = d.get(key)
        if values is None:
            raise FakeNVMLError("Not Supported")
        calls = key.split("_")[0] + "_calls"
        k = d[calls]
        d[calls] += 1
        return values[min(k, len(values) - 1)]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self._scripted(h, "energy_mj")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._scripted(h, "power_mw")

    def _fact(self, h, key, index=None):
        value = self.devices[h].get(key)
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value if index is None else value[index]

    def nvmlDeviceGetName(self, h):
        return self._fact(h, "name")

    def nvmlDeviceGetClockInfo(self, h, clock):
        return self._fact(h, "clocks", clock - 1)

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        return self._fact(h, "max_clocks", clock - 1)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._fact(h, "power_limit_mw")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return self._fact(h, "throttle")

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._fact(h, "temperature")


def make_fake() -> FakeNvml:
    """The fake scripted by $SABENCH_FAKE_NVML (one default device if unset)."""
    raw = os.environ.get(FAKE_ENV)
    return FakeNvml(json.loads(raw) if raw else json.loads(script([device("00000000:19:00.0")])))

"""A scripted fake of the pynvml API that works across a process boundary.

NvmlSampler(mode="process") runs NVML in a helper process, which cannot receive
a Python object; it imports "tests.fake_nvml:make_fake" instead, and make_fake()
reads its script from the environment variable SABENCH_FAKE_NVML (JSON), which
the helper inherits. Build the value with `script(...)`:

    monkeypatch.setenv(FAKE_ENV, script([device(BUS0, readings=[100, 500, 300])]))
    NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0)

Reading k (k = 0, 1, ...) of a device returns readings[k], then the last value
forever; k in errors_at raises FakeNVMLError; k == hang_at blocks forever (a
driver call that never returns); k == exit_at ends the process (a crash).
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
           exit_at=None, name="Fake GPU", total=80 << 30, energy_mj=None, power_mw=None) -> dict:
    """One scripted device; procs is a list of (pid, usedGpuMemory or None) or None for [].

    energy_mj: readings of the total-energy counter (call k gets energy_mj[k], then the last
    one); None: the counter raises NotSupported (pre-Volta). power_mw: the same for
    nvmlDeviceGetPowerUsage; None: it raises NotSupported.
    """
    return {"bus_id": bus_id, "readings": list(readings),
            "procs": [list(p) for p in procs] if procs is not None else None,
            "procs_error": procs_error, "errors_at": list(errors_at), "hang_at": hang_at,
            "exit_at": exit_at, "name": name, "total": total,
            "energy_mj": list(energy_mj) if energy_mj is not None else None,
            "power_mw": list(power_mw) if power_mw is not None else None}


def script(devices, *, init_error=None, noisy=False) -> str:
    """The JSON value of SABENCH_FAKE_NVML. noisy=True prints junk to stdout on every call."""
    return json.dumps({"devices": list(devices), "init_error": init_error, "noisy": noisy})


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

    def __init__(self, cfg: dict):
        self.devices = cfg.get("devices") or []
        for d in self.devices:
            d["calls"] = d["energy_calls"] = d["power_calls"] = 0
        self.init_error = cfg.get("init_error")
        self.noisy = bool(cfg.get("noisy"))

    def _noise(self):
        if self.noisy:
            print("fake NVML: a stray line on stdout", flush=True)
            sys.stdout.write("{\"id\": 1, \"ok\": false, \"error\": \"forged\"}\n")
            sys.stdout.flush()

    def nvmlInit(self):
        self._noise()
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self):
        pass

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

    def nvmlDeviceGetPciInfo(self, h):
        return _NS(busId=self.devices[h]["bus_id"].encode())

    def nvmlDeviceGetMigMode(self, h):
        raise FakeNVMLError("Not Supported")

    def nvmlDeviceGetMemoryInfo(self, h):
        self._noise()
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

    def nvmlDeviceGetName(self, h):
        return self.devices[h]["name"]


def make_fake() -> FakeNvml:
    """The fake scripted by $SABENCH_FAKE_NVML (one default device if unset)."""
    raw = os.environ.get(FAKE_ENV)
    cfg = json.loads(raw) if raw else json.loads(script([device("00000000:19:00.0")]))
    return FakeNvml(cfg)

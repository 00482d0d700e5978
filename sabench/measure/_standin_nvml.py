"""A stand-in for pynvml on machines without a GPU (benchmarks/sampler_overhead.py).

Just enough of the pynvml API for NvmlSampler; each memory query takes ~20 us, either
sleeping (`nogil`: a real query is a ctypes call into libnvidia-ml, which releases the GIL)
or spinning (`gil`: keeps a CPU busy meanwhile). The sampler's helper process imports it:
`NvmlSampler(nvml="sabench.measure._standin_nvml:nogil")` (`instant` answers at once).
Imports nothing heavy.
"""
import time


class _Info:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class StandInNvml:
    """One GPU on bus 00000000:00:00.0 with 1 GiB used, drawing 300 W; no compute processes listed."""

    class NVMLError(Exception):
        pass

    def __init__(self, hold_gil: bool = False, query_s: float = 20e-6):
        self.hold_gil = hold_gil
        self.query_s = query_s

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return "h0"
    def nvmlDeviceGetHandleByPciBusId(self, bus): return "h0"
    def nvmlDeviceGetPciInfo(self, h): return _Info(busId=b"00000000:00:00.0")
    def nvmlDeviceGetComputeRunningProcesses(self, h): return []
    def nvmlDeviceGetMigMode(self, h): raise self.NVMLError("not supported")
    def nvmlDeviceGetPowerUsage(self, h): return 300_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        """mJ: a steady 300 W since the first call (a counter that only grows)."""
        now = time.monotonic()
        self.__dict__.setdefault("_t0", now)
        return int((now - self._t0) * 300_000)

    def nvmlDeviceGetMemoryInfo(self, h):
        if self.hold_gil:
            t = time.perf_counter() + self.query_s
            while time.perf_counter() < t:
                pass
        else:
            time.sleep(self.query_s)  # releases the GIL, like a ctypes call into libnvidia-ml
        return _Info(used=1 << 30, total=80 << 30, free=79 << 30)


def nogil() -> StandInNvml:
    return StandInNvml(hold_gil=False)


def gil() -> StandInNvml:
    return StandInNvml(hold_gil=True)


def instant() -> StandInNvml:
    """A query that returns at once: the cost of the sampling loop alone."""
    return StandInNvml(hold_gil=True, query_s=0.0)

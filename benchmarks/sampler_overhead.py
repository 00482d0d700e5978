"""What the NVML sampler thread costs a measured phase: decode steps with and without it.

    python benchmarks/sampler_overhead.py [--blocks 20] [--hz 200]

On a GPU box the real NVML is sampled; elsewhere a stand-in NVML whose memory
query takes ~20 us, either releasing the GIL as a real query does (pynvml is a
ctypes call; `--stand-in nogil`, the default) or holding it (`gil`, a pessimistic bound). Blocks of decode steps alternate
with/without the sampler; the headline is the median per-block time ratio.
"""
import argparse
import statistics
import time

import torch

from sabench import load_model
from sabench.measure.nvml import NvmlSampler
from sabench.measure.timing import time_steps


class _StandInNvml:
    """Just enough of pynvml for NvmlSampler; each memory query takes ~20 us."""

    def __init__(self, hold_gil: bool):
        self.hold_gil = hold_gil

    class NVMLError(Exception):
        pass

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return "h0"
    def nvmlDeviceGetHandleByPciBusId(self, bus): return "h0"
    def nvmlDeviceGetPciInfo(self, h): return type("P", (), {"busId": b"00000000:00:00.0"})()
    def nvmlDeviceGetComputeRunningProcesses(self, h): return []
    def nvmlDeviceGetMigMode(self, h): raise self.NVMLError("not supported")

    def nvmlDeviceGetMemoryInfo(self, h):
        if self.hold_gil:
            t = time.perf_counter() + 20e-6
            while time.perf_counter() < t:
                pass
        else:
            time.sleep(20e-6)  # releases the GIL, like a ctypes call into libnvidia-ml
        return type("M", (), {"used": 1 << 30, "total": 80 << 30, "free": 79 << 30})()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--hz", type=float, default=200.0)
    ap.add_argument("--stand-in", choices=["nogil", "gil"], default="nogil")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    m = load_model("tiny", "baseline", torch.float32, device)
    cache = m.new_cache(1, 64 + args.steps + 1)
    m.prefill(torch.zeros(1, 64, dtype=torch.long, device=device), cache)
    tokens = torch.ones(1, 1, dtype=torch.long, device=device)
    pos = torch.tensor([64], device=device)
    step = m.greedy_step_fn(cache, tokens, pos)
    sampler = NvmlSampler(0, interval_s=1 / args.hz, nvml=None if cuda else _StandInNvml(args.stand_in == "gil"),
                          pci_bus_id=None if cuda else "00000000:00:00.0")

    def block():
        return sum(time_steps(lambda _i: step(), args.steps, device=device, setup=lambda: pos.fill_(64)))

    with torch.no_grad():
        block()
        off, on, ratios = [], [], []
        for i in range(args.blocks):
            for with_sampler in ((False, True) if i % 2 == 0 else (True, False)):
                if with_sampler:
                    sampler.start()
                    on.append(block())
                    r = sampler.stop()
                else:
                    off.append(block())
            ratios.append(on[-1] / off[-1])
    sampler.close()
    med = statistics.median
    print(f"{'real NVML on ' + torch.cuda.get_device_name() if cuda else f'stand-in NVML (20 us, {args.stand_in})'}, "
          f"{args.hz:.0f} Hz requested, {r['achieved_hz']:.0f} Hz achieved")
    print(f"{args.steps} eager decode steps per block: without sampler {med(off):.2f} ms, with {med(on):.2f} ms")
    print(f"sampler cost: {100 * (med(ratios) - 1):+.2f}% (median of {args.blocks} interleaved block ratios)")


if __name__ == "__main__":
    main()

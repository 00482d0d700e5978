"""What the NVML sampler costs a measured phase: decode steps with and without it.

    python benchmarks/sampler_overhead.py [--stand-in nogil|gil] [--blocks 100] [--hz 200]

The sampler samples in a helper process. On a GPU box the real NVML is sampled; elsewhere
the tests' fake NVML (tests/fake_nvml.py) scripted so that its memory query takes ~20 us, either
sleeping (`--stand-in nogil`, the default, as a ctypes call into libnvidia-ml does) or
spinning (`gil`: the helper then keeps a CPU busy for the query's duration). Blocks of
decode steps alternate with/without the sampler (a window open around the block, as the
worker does per phase); the headline is the median per-block time ratio.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fake_nvml  # noqa: E402
from sabench import load_model  # noqa: E402
from sabench.measure.nvml import NvmlSampler  # noqa: E402
from sabench.measure.timing import time_steps  # noqa: E402

BUS = "00000000:00:00.0"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=100)
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
    if not cuda:  # the sampler's helper process inherits the script and imports the fake
        gpu = fake_nvml.device(BUS, readings=[1 << 30], energy_mj=[0])
        os.environ[fake_nvml.FAKE_ENV] = fake_nvml.script([gpu], query_s=20e-6, hold_gil=args.stand_in == "gil")
    sampler = NvmlSampler(0, interval_s=1 / args.hz, nvml=None if cuda else fake_nvml.SPEC,
                          pci_bus_id=None if cuda else BUS)

    def block():
        return sum(time_steps(lambda _i: step(), args.steps, device=device, setup=lambda: pos.fill_(64)))

    hz = []
    with torch.no_grad():
        block()
        off, on, ratios = [], [], []
        for i in range(args.blocks):
            for with_sampler in ((False, True) if i % 2 == 0 else (True, False)):
                if with_sampler:
                    sampler.start()
                    on.append(block())
                    hz.append(sampler.stop()["achieved_hz"])
                else:
                    off.append(block())
            ratios.append(on[-1] / off[-1])
    sampler.close()
    med = statistics.median
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), 0, max(ratios)]
    where = f"real NVML on {torch.cuda.get_device_name()}" if cuda else f"stand-in NVML (20 us, {args.stand_in})"
    print(f"{where}, {args.hz:.0f} Hz requested, {med(hz):.0f} Hz achieved (median)")
    print(f"{args.steps} eager decode steps per block: without sampler {med(off):.2f} ms, with {med(on):.2f} ms")
    print(f"sampler cost: {100 * (med(ratios) - 1):+.2f}% (median of {args.blocks} interleaved block ratios; "
          f"quartiles {100 * (q[0] - 1):+.2f}% .. {100 * (q[2] - 1):+.2f}%)")


if __name__ == "__main__":
    main()

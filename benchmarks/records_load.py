"""How long load_results and write_results take on a 10,000-record results.json.

    python benchmarks/records_load.py [--records 10000] [--repeats 5]

Each record is shaped as a decode record of a real CPU run (gate-smoke, reports/reference/):
every scalar field, FLOPs with their breakdown, the memory prediction, readings and notes,
stability, a latency of 60 samples and 3 rounds of 20 samples each, plus two fields the types
do not name (kept in `extra`). Variants, batch sizes and sequence lengths vary so every record
has its own key. Prints the file's size and the median and range of the timed calls (wall time
and this process's CPU time), each after one untimed warm-up.
"""
import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from sabench.records import SCHEMA, RunRecord, load_results, write_results


def _record(i: int, rng: random.Random) -> dict:
    variants = ("baseline", "cla:2", "cla:3", "sa:6-11", "cla:2+sa:6-11")
    rounds = []
    for r in range(3):
        s = [round(rng.lognormvariate(0.1, 0.3), 6) for _ in range(20)]
        rounds.append({"round": r + 1, "median_ms": sorted(s)[10], "n": 20, "samples": s})
    samples = [x for rd in rounds for x in rd["samples"]]
    q = sorted(samples)
    return {
        "variant": variants[i % len(variants)], "batch_size": 1 + (i // len(variants)) % 40,
        "seq_len": 32 * (1 + i // (len(variants) * 40)), "phase": "decode", "status": "ok",
        "warmup": 1, "repeats": 3, "execution": "eager", "params": 250432, "kv_cache_bytes": 49152,
        "memory_predicted_bytes": {"weights": 1001728, "kv_cache": 49152, "activations": 7744,
                                   "context": 268435456, "total": 269494080, "activations_live": 7744,
                                   "needed": 269494080},
        "flops": {"counted": 7733248, "analytic": 7610368,
                  "analytic_breakdown": {"projections": 1572864, "attention": 663552, "mlp": 4325376,
                                         "lm_head": 1048576, "total": 7610368}},
        "bytes_moved": 14737408,
        "latency_ms": {"median": q[30], "p10": q[6], "p90": q[54], "p99": q[59], "mean": statistics.fmean(q),
                       "std": statistics.pstdev(q), "min": q[0], "max": q[-1], "samples": samples},
        "tokens_per_s": 818.2767010847484, "decode_mode": "eager", "decode_tokens": 16,
        "stability": {"p90_over_p10": q[54] / q[6], "stable": False, "threshold": 1.05, "extra_rounds": 0,
                      "note": "p90/p10 over the samples of 3 rounds: the samples are spread"},
        "memory_bytes": {"device_peak": 275128320, "phase_rise": 831488, "peak_rss": 275128320},
        "memory_source": "rss",
        "memory_breakdown": {"weights": 1001728, "kv_cache": 49152, "activations": 831488, "context": 273245952},
        "memory_notes": ["CPU run: device_peak is the process's peak RSS",
                         "memory readings: those of the round with the largest device_peak, of 3 rounds"],
        "mfu": 0.031797387790012836, "mbu": 0.25963533525053745, "floor_ms": 0.31729528032064447,
        "roofline_metric": "mbu", "rounds": rounds, "torch_threads": 1, "weights": "random",
    }


def _time(fn, repeats):
    """(wall seconds, CPU seconds of this process) of each timed call; the CPU time is the figure to
    compare on a busy machine, where other processes stretch the wall time."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import json

    rng = random.Random(0)
    data = {"schema": SCHEMA, "created": "2026-12-08T00:00:00Z",
            "env": {"device": "cpu", "cpu_count": 2, "torch": "2.13.0+cpu"},
            "suite": {"name": "records-load", "variants": ["baseline"], "sweep": {"batch_size": [1]}},
            "overhead": {}, "records": [_record(i, rng) for i in range(args.records)]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "results.json"
        path.write_text(json.dumps(data, indent=1))
        run = load_results(path)
        print(f"{len(run.records):,} records, {path.stat().st_size / 2**20:.1f} MiB")
        for name, fn in (("load_results", lambda: load_results(path)),
                         ("  of which RunRecord.from_dict", lambda: RunRecord.from_dict(data)),
                         ("write_results", lambda: write_results(Path(d) / "out.json", run)),
                         ("  of which RunRecord.to_dict", run.to_dict)):
            wall, cpu = _time(fn, args.repeats)
            print(f"{name}: median {statistics.median(wall):.2f} s wall [{min(wall):.2f} .. {max(wall):.2f}], "
                  f"{statistics.median(cpu):.2f} s CPU [{min(cpu):.2f} .. {max(cpu):.2f}] over {len(wall)}")


if __name__ == "__main__":
    main()

"""How long `sabench report` and `sabench check` take on 1,000-record results files.

    python benchmarks/report_speed.py [--repeats 3]

Builds two synthetic 1,000-record runs (tests/report_fixtures.py: 5 variants x 10 batch
sizes x 10 sequence lengths x 2 phases, OOM and error points included; the second run
has one variant 25% slower), then times write_report (markdown and every PNG) and
check over them, each after one untimed warm-up.
Prints the median and the range of the timed calls.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from report_fixtures import big_results, scale_timings, write_results  # noqa: E402
from sabench.report import write_report  # noqa: E402
from sabench.report.check import check  # noqa: E402


def _time(fn, repeats):
    fn()  # warm-up: imports, matplotlib's font cache
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        a = write_results(big_results(seed=5), Path(d) / "a")
        b = write_results(scale_timings(big_results(seed=5), 1.25, variant="cla:3"), Path(d) / "b")
        for name, fn in (("report (1,000 records, markdown + PNGs)", lambda: write_report(a)),
                         ("check (two 1,000-record files)", lambda: check(a, b))):
            s = _time(fn, args.repeats)
            print(f"{name}: median {statistics.median(s):.2f} s [{min(s):.2f} .. {max(s):.2f}] over {len(s)}")


if __name__ == "__main__":
    main()

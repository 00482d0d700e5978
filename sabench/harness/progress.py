"""Progress of a sweep: a bar with the current point and an ETA on a terminal; plain lines otherwise."""
from __future__ import annotations

import sys
import time

from sabench.records import PHASES


class Progress:
    """The ETA is the time per measured point since the first point started, times the points left:
    the run's start-up (calibration, FLOP counts, process start) happens once, so it is not
    charged to every point still to come."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.t0 = total, done, None
        self.measured = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="point", dynamic_ncols=True)

    def start(self, label: str):
        if self.t0 is None:
            self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label} ...", file=sys.stderr, flush=True)

    def finish(self, label: str, summary: str, measured: bool = True):
        self.done += 1
        self.measured += measured
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.update(1)
            return
        eta = ""
        if self.measured and self.t0 is not None:
            elapsed = time.perf_counter() - self.t0
            eta = f" (ETA {elapsed / self.measured * (self.total - self.done):.0f} s)"
        print(f"[{self.done}/{self.total}] {label}: {summary}{eta}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def summary(records: dict) -> str:
    """'prefill 1.2 ms, decode oom': one point's outcome ({phase: PhaseRecord}) in a line."""
    parts = []
    for phase in PHASES:
        r = records.get(phase)
        if r is not None and r.ok:
            parts.append(f"{phase} {r.latency_ms.median:.3g} ms")
        else:
            parts.append(f"{phase} {r.status if r is not None else None}")
    return ", ".join(parts)

"""The way of one point through the code, measured by running it.

Runs `sabench run` on a one-point suite (one variant, one batch, one prompt length, one round,
no report) inside this process, with the point's process replaced by a call in this process, and
records every call into sabench's own functions (sys.setprofile). Prints:

- modules: the sabench modules whose code ran, from the command line to results.json;
- the record's way: the calls that receive or return the point's records (a PhaseRecord, or a
  dict shaped as a record or as a record's measured fields, or a collection of them), outside the
  record's own code (sabench.records), as a walk over modules: how many modules it enters, how many moves between modules it makes and how many of
  those return to a module it had already left;
- json: how many times the records were written as JSON text and read back on their way
  (results.json itself is written after every point: those writes are counted apart).

These are the figures docs/architecture.md gives for "the way of one point".
Usage: python benchmarks/point_path.py [--list]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

SUITE = """\
name: point-path
model: tiny
dtype: float32
device: cpu
variants: [cla:2]
sweep: {batch_size: [1], seq_len: [8]}
decode_tokens: 2
rounds: 1
warmup: 0
repeats: 1
"""


class _InProcess:
    """multiprocessing's Process, run as a call in this process (for tracing only)."""

    def __init__(self, target, args=(), daemon=None):
        self.target, self.args, self.exitcode, self.pid = target, args, None, 1

    def start(self):
        self.target(*self.args)
        self.exitcode = 0


class _Context:
    Process = _InProcess


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from sabench import cli
    from sabench.harness import launch, environment, sweep

    launch._context = lambda: _Context()
    launch._start_server = lambda: None
    launch._wait = lambda proc: None
    sweep.warm_server = lambda: None
    sweep.capture_run_env = lambda device, dtype, workdir: {"device": device}
    environment.capture_run_env = sweep.capture_run_env
    import sabench.harness.point as point
    point.die_with_parent = lambda: None

    dumps, loads = [], []
    real_dumps, real_loads = json.dumps, json.loads

    def counting_dumps(obj, *a, **k):
        dumps.append(_has_records(obj))
        return real_dumps(obj, *a, **k)

    def counting_loads(s, *a, **k):
        out = real_loads(s, *a, **k)
        loads.append(_has_records(out))
        return out

    json.dumps, json.loads = counting_dumps, counting_loads
    calls, way = [], []

    def profile(frame, event, arg):
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("sabench"):
            return
        if event == "call":
            calls.append(name)
            code = frame.f_code
            args = [frame.f_locals.get(v) for v in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]]
            if any(_holds_record(a) for a in args) and not name.startswith(_OWN):
                way.append(name)
        elif event == "return" and _holds_record(arg) and not name.startswith(_OWN):
            way.append(name)

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "s.yaml").write_text(SUITE)
        sys.setprofile(profile)
        try:
            rc = cli.main(["run", str(Path(d) / "s.yaml"), "--out", str(Path(d) / "run"), "--no-report"])
        finally:
            sys.setprofile(None)
            json.dumps, json.loads = real_dumps, real_loads
    modules = sorted(set(calls))
    walk = [m for i, m in enumerate(way) if i == 0 or way[i - 1] != m]
    back = sum(1 for i, m in enumerate(walk) if m in walk[:i])
    print(f"exit {rc}; {len(modules)} sabench modules ran; the records' way: {len(set(walk))} modules, "
          f"{len(walk) - 1} moves between them, {back} returns to a module already left; records read back "
          f"from JSON text on the way: {sum(loads)} (JSON texts written holding records: {sum(dumps)}, "
          f"results.json included)")
    if "--list" in argv:
        print("modules that ran:", " ".join(modules))
        print("the records' way:", " -> ".join(m.replace("sabench.", "") for m in walk))
    return 0


# the record's own code (its type's constructors and methods, reading and writing it) is not a place
# on its way: a dict's methods are not counted either
_OWN = ("sabench.records", "sabench.values")
_RECORD_KEYS = ({"variant", "phase"}, {"latency_ms"}, {"status", "error"}, {"records"})


def _holds_record(x, depth: int = 2) -> bool:
    """A point's record, or its measured fields, or a collection of them (either era of the code)."""
    if type(x).__name__ == "PhaseRecord":
        return True
    if depth == 0:
        return False
    if isinstance(x, dict):
        keys = set(x)
        return any(k <= keys for k in _RECORD_KEYS) or any(_holds_record(v, depth - 1) for v in list(x.values())[:4])
    if isinstance(x, (list, tuple)):
        return any(_holds_record(v, depth - 1) for v in x[:3])
    return False


def _has_records(obj) -> bool:
    if isinstance(obj, dict):
        return "records" in obj or "phase" in obj or any(_has_records(v) for v in obj.values() if isinstance(v, (dict, list)))
    if isinstance(obj, list):
        return any(_has_records(v) for v in obj[:3])
    return False


if __name__ == "__main__":
    sys.exit(main())

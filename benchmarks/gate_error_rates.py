"""The error rates of `sabench check --timings on`, measured on this machine under load.

While a CPU burner of its own spins on every core (one process per core, stopped at the end),
this runs N pairs of identical runs of a tiny suite (the gate should pass: a failure is a false
alarm) and N pairs whose candidate is really FACTOR times slower (the gate should fail: a pass is
a missed regression), judges each pair with `python -m sabench.cli check BASE CAND --timings on`
and its exit status, and prints both rates with 95% Clopper-Pearson intervals.

The slowdown is real CPU time: SABENCH_FAULT_SLOWDOWN (sabench.harness.faults, a test seam) makes
each timed call of the candidate busy-wait (FACTOR - 1) times its own duration.

    python benchmarks/gate_error_rates.py --pairs 20 [--rounds 5] [--repeats 3] [--seq-len 32]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """\
name: gate
description: one point, for the gate's error rates (benchmarks/gate_error_rates.py)
model: tiny
dtype: float32
device: cpu
variants: [baseline]
sweep:
  batch_size: [{batch}]
  seq_len: [{seq_len}]
decode_tokens: {decode_tokens}
warmup: 1
repeats: {repeats}
rounds: {rounds}
"""


def burner(cores: int) -> list:
    """One spinning process per core (the machine made busy on purpose)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def stop(procs: list) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run(suite: Path, out: Path, slowdown: float, threads) -> None:
    env = dict(os.environ)
    env.pop("SABENCH_FAULT_SLOWDOWN", None)
    if slowdown != 1.0:
        env["SABENCH_FAULT_SLOWDOWN"] = str(slowdown)
    cmd = [sys.executable, "-m", "sabench.cli", "run", str(suite), "--out", str(out), "--no-report"]
    if threads:
        cmd += ["--threads", str(threads)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gate_fails(base: Path, cand: Path) -> bool:
    """True when `sabench check --timings on` fails the pair (exit status 1)."""
    r = subprocess.run([sys.executable, "-m", "sabench.cli", "check", str(base), str(cand), "--timings", "on"],
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"check failed to run (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    return r.returncode == 1


def rate(k: int, n: int) -> str:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k}/{n} = {k / n:.0%} [95% CI {ci.low:.0%}, {ci.high:.0%}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20, help="pairs of each kind (default 20)")
    ap.add_argument("--factor", type=float, default=2.0, help="the candidate's real slowdown (default 2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="--threads for every run (default torch's)")
    ap.add_argument("--burners", type=int, default=os.cpu_count(), help="spinning processes (default: one a core)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="sabench-gate-"))
    suite = tmp / "gate.yaml"
    suite.write_text(SUITE.format(batch=args.batch, seq_len=args.seq_len, decode_tokens=args.decode_tokens,
                                  repeats=args.repeats, rounds=args.rounds))
    load_before = os.getloadavg()
    procs = burner(args.burners)
    t0 = time.perf_counter()
    false_alarms = detected = 0
    loads = []  # the 1-minute load average at the start of every pair: the conditions measured under
    try:
        for i in range(args.pairs):
            loads.append(os.getloadavg()[0])
            base, same, slow = tmp / f"base{i}", tmp / f"same{i}", tmp / f"slow{i}"
            run(suite, base, 1.0, args.threads)
            run(suite, same, 1.0, args.threads)
            run(suite, slow, args.factor, args.threads)
            fa, det = gate_fails(base, same), gate_fails(base, slow)
            false_alarms += fa
            detected += det
            print(f"pair {i + 1}/{args.pairs}: identical {'FAIL (false alarm)' if fa else 'pass'}; "
                  f"{args.factor:g}x slower {'fail (detected)' if det else 'PASS (missed)'}", flush=True)
    finally:
        stop(procs)
    print(f"\nsuite: tiny, b={args.batch} s={args.seq_len}, {args.rounds} rounds x {args.repeats} repeats, "
          f"threads {args.threads or 'default'}; {args.burners} burner processes on {os.cpu_count()} CPUs; "
          f"load average before {load_before[0]:.2f}, during {min(loads):.1f}-{max(loads):.1f} "
          f"(median {sorted(loads)[len(loads) // 2]:.1f}); {time.perf_counter() - t0:.0f} s")
    print(f"false alarms (identical runs failing the gate): {rate(false_alarms, args.pairs)}")
    print(f"detection ({args.factor:g}x slower candidate failing the gate): {rate(detected, args.pairs)}")
    print(f"runs kept in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

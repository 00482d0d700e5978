"""The error rates of the gate on the suite CI runs (`smoke`), measured as `sabench continuous` runs it.

    python benchmarks/gate_smoke.py collect OUT [--pairs 40] [--detect 20] [--rounds 3]
                                                [--slowdown decode:1.5] [--suite smoke] [--threads 1]
    python benchmarks/gate_smoke.py judge OUT [--threshold 5%]

`collect` measures, on whatever load the machine has (it records the 1-minute load average before
every invocation), blocks of runs of one suite, rounds interleaved exactly as `sabench continuous`
interleaves base and head (`sabench run SUITE --rounds k --resume` into each side in turn):
block j holds two runs of identical code, `a` and `b`, and for the first `--detect` blocks a third,
`slow`, whose every timed call of the chosen phase is really FACTOR times slower
(SABENCH_FAULT_SLOWDOWN, sabench.harness.faults: a busy wait, so the CPU stays occupied). It can be
stopped and started again: finished invocations are kept in OUT/log.jsonl and skipped.

`judge` runs `sabench.report.check.check` (the statistic `check --timings on` and `continuous` use)
on every pair: (a, b) of each block is an identical pair (any timing regression is a family-wise
false alarm), (a, slow) a slowed pair (the gate should fail). It prints the rates with 95%
Clopper-Pearson intervals, the per-point detection rate, the points of the other phase called
changed, the suite-level verdicts, and how heavy-tailed the per-round fastest steps are.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def _run_name(run) -> str:
    """'block007/b': a run named within OUT, so a copied or unpacked OUT reads its log the same."""
    return "/".join(Path(run).parts[-2:])


def _log(out: Path) -> dict:
    """(run name, round) -> the log entry of every finished invocation."""
    p = out / "log.jsonl"
    done = {}
    if p.exists():
        for line in p.read_text().splitlines():
            e = json.loads(line)
            done[(_run_name(e["dir"]), e["round"])] = e
    return done


def collect(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = _log(out)
    if not (out / "setup.json").exists():
        (out / "setup.json").write_text(json.dumps(vars(args) | {"cores": os.cpu_count()}, indent=1))
    for j in range(args.first, args.pairs):
        sides = [("a", None), ("b", None)] + ([("slow", args.slowdown)] if j < args.detect else [])
        for k in range(1, args.rounds + 1):
            for side, slow in sides:
                d = out / f"block{j:03d}" / side
                if (_run_name(d), k) in done:
                    continue
                env = dict(os.environ)
                env.pop("SABENCH_FAULT_SLOWDOWN", None)
                if slow:
                    env["SABENCH_FAULT_SLOWDOWN"] = slow
                cmd = [sys.executable, "-m", "sabench.cli", "run", args.suite, "--out", str(d), "--no-report",
                       "--rounds", str(k), "--threads", str(args.threads)]
                if (d / "results.json").exists():
                    cmd.append("--resume")
                load = os.getloadavg()[0]
                t0 = time.time()
                r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if r.returncode not in (0, 1):
                    print(r.stderr[-2000:], file=sys.stderr)
                    return r.returncode
                e = {"dir": str(d), "round": k, "slowdown": slow, "load1": load, "seconds": time.time() - t0}
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(e) + "\n")
        print(f"block {j + 1}/{args.pairs} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return 0


def _cp(k: int, n: int) -> str:
    from scipy.stats import binomtest

    if n == 0:
        return "0/0"
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k}/{n} = {k / n:.1%} [95% CI {ci.low:.1%}, {ci.high:.1%}]"


def _complete(run: Path, rounds: int, done: dict) -> bool:
    """Every round of the run has finished (`done`: the collectors' log; one may still be measuring)."""
    return all((_run_name(run), k) in done for k in range(1, rounds + 1))


def _first_rounds(run: Path, rounds: int) -> dict:
    data = json.loads((run / "results.json").read_text())
    for r in data["records"]:
        r["rounds"] = [x for x in r.get("rounds") or [] if x["round"] <= rounds]
    data["suite"]["rounds"] = rounds
    return data


def _phase_effect(a: dict, b: dict, phase: str) -> float:
    from sabench.records import RunRecord
    from sabench.stats import ok_rounds, ratio_interval, round_centres

    ia, ib = RunRecord.from_dict(a).index(), RunRecord.from_dict(b).index()
    keys = [k for k in ia if k[3] == phase and ia[k].ok and k in ib and ib[k].ok]
    sa, sb = round_centres([ok_rounds(ia[k], True) for k in keys], [ok_rounds(ib[k], True) for k in keys])
    return ratio_interval(sa, sb).ratio


def _ok_keys(run: Path) -> list:
    from sabench.records import load_results

    return [r.key for r in load_results(run).records if r.ok]


def judge(args) -> int:
    import numpy as np

    from sabench.records import load_results
    from sabench.stats import round_minima
    from sabench.report.check import SUITE, parse_threshold
    from sabench.report.check import check as check_runs

    out = Path(args.out)
    thr = parse_threshold(args.threshold)
    blocks = sorted(p for p in out.glob("block*") if (p / "a" / "results.json").exists())
    setup = json.loads((out / "setup.json").read_text())
    if args.rounds:
        setup["rounds"] = args.rounds
    done = _log(out)

    def check(a: Path, b: Path, **kw):  # each side's first `rounds` rounds, as a run of that many
        return check_runs(*(_first_rounds(x, setup["rounds"]) for x in (a, b)), **kw)

    phase = setup["slowdown"].partition(":")[0] if ":" in setup["slowdown"] else None
    false_alarms, pairs, caught, slowed = 0, 0, 0, 0
    suite_false, suite_caught = 0, 0
    point_hits, point_total, other_changed, other_total = 0, 0, 0, 0
    per_point = []  # (slowed points flagged, judged points of the slowed phase) per slowed pair
    effects = []  # the slowed phase's measured ratio (its typical point) per slowed pair
    for b in blocks:
        if not _complete(b / "b", setup["rounds"], done):
            continue
        res = check(b / "a", b / "b", threshold=thr, timings=True)
        timing = [f for f in res.regressions if f.metric.startswith("latency")]
        pairs += 1
        false_alarms += bool(timing)
        suite_false += any(f.key[0] == SUITE for f in timing)
        if _complete(b / "slow", setup["rounds"], done):
            res = check(b / "a", b / "slow", threshold=thr, timings=True)
            slowed += 1
            caught += bool(res.regressions)
            suite_caught += any(f.key[0] == SUITE and (phase is None or f.key[3] == phase) for f in res.regressions)
            judged = [k for k in _ok_keys(b / "a") if k not in res.unjudged]
            n = sum(1 for k in judged if phase is None or k[3] == phase)
            hits = sum(1 for f in res.regressions
                       if f.metric == "latency" and (phase is None or f.key[3] == phase))
            per_point.append((hits, n))
            effects.append(_phase_effect(_first_rounds(b / "a", setup["rounds"]),
                                         _first_rounds(b / "slow", setup["rounds"]), phase or "decode"))
            point_hits += hits
            point_total += n
            other_total += len(judged) - n
            other_changed += sum(1 for f in res.regressions + res.improvements
                                 if f.metric == "latency" and phase is not None and f.key[3] != phase)
    loads = [json.loads(x)["load1"] for x in (out / "log.jsonl").read_text().splitlines()]
    print(f"setup: {setup}")
    print(f"machine load (1-minute average before each invocation): median {np.median(loads):.2f}, "
          f"range {min(loads):.2f}-{max(loads):.2f}, on {setup['cores']} cores")
    print(f"identical pairs failing the gate (family-wise false alarms): {_cp(false_alarms, pairs)}"
          f"; of them by a suite-level verdict: {suite_false}")
    print(f"slowed pairs failing the gate ({setup['slowdown']}): {_cp(caught, slowed)}; "
          f"by a suite-level verdict: {_cp(suite_caught, slowed)}")
    print(f"slowed points flagged individually: {_cp(point_hits, point_total)}; per pair: "
          + ", ".join(f"{h}/{n}" for h, n in per_point))
    if effects:
        print(f"the slowdown as measured (slowed phase, typical point, slow / a): median {np.median(effects):.2f}x, "
              f"range {min(effects):.2f}-{max(effects):.2f}x")
    if phase:
        print(f"untouched-phase points called changed in slowed pairs: {_cp(other_changed, other_total)}")
    # tails: each point's per-round fastest steps, as log deviations from that point's median
    dev = []
    for b in blocks:
        for side in ("a", "b"):
            p = b / side / "results.json"
            if not p.exists():
                continue
            for r in load_results(p).records:
                if r.ok:
                    v, within = round_minima(r)
                    if not within and len(v) >= 3:
                        lv = np.log(v)
                        dev += list(lv - np.median(lv))
    dev = np.asarray(dev)
    if dev.size:
        from scipy.stats import kurtosis

        mad = 1.4826 * np.median(np.abs(dev - np.median(dev)))
        print(f"per-round fastest step, log deviation from its run's median: {dev.size} values, "
              f"excess kurtosis {kurtosis(dev):.1f} (0 for a normal), "
              f"{np.mean(np.abs(dev) > 3 * mad):.1%} beyond 3 robust SDs (0.3% for a normal), "
              f"largest {math.exp(dev.max()):.2f}x the median")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("out")
    c.add_argument("--pairs", type=int, default=40)
    c.add_argument("--first", type=int, default=0, help="start at this block (two collectors can share OUT)")
    c.add_argument("--detect", type=int, default=20)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--slowdown", default="decode:1.5")
    c.add_argument("--suite", default="smoke")
    c.add_argument("--threads", type=int, default=1)
    j = sub.add_parser("judge")
    j.add_argument("out")
    j.add_argument("--threshold", default="5%")
    j.add_argument("--rounds", type=int, default=None, help="judge each run's first ROUNDS rounds (default: all collected)")
    args = ap.parse_args(argv)
    return collect(args) if args.cmd == "collect" else judge(args)


if __name__ == "__main__":
    sys.exit(main())

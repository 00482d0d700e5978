"""Do busy neighbouring devices slow a point down? busy/alone time ratios of one probe point.

`sabench run SUITE --devices 0,1,...` runs points on several GPUs of one box at once (sharing PCIe,
CPU, host memory). A one-point probe suite runs on device D0 N times alone and N times beside a load
(`sabench run LOAD --devices D1,..,Dk` in its own process group, started before the probe, which
waits until the load has recorded a point, and stopped with SIGINT after it), the two conditions
alternating (alone first for even i, busy first for odd i) so drift falls on both.

Each probe round (one point process) gives its median and its fastest step. For prefill and
decode, busy/alone of each is a ratio of geometric means over all rounds of each condition with a
95% Welch t interval on log times (sabench.stats.ratio_interval), judged by sabench.stats.verdict:
"slower beside busy neighbours" only where the whole interval lies above 1.05 ("faster" below
1/1.05), else "not distinguishable". The fastest step follows the work, the median the load: a
slower median with an unchanged fastest step means neighbours take turns with the probe.

    python benchmarks/device_interference.py --devices 0 --neighbours 1,2,3,4,5,6,7 [--out FILE.json]

Defaults: CUDA, the llama-3.2-1b preset (random weights) in bfloat16, b=1 s=512, 32 decode tokens;
CPU, `tiny` in float32, b=1 s=32, 8 decode tokens, one thread. The load is the same point with 10x
the timed calls a round (--load-repeats) unless --load-batch / --load-seq-len make it larger.

CPU check (nothing about GPUs: fake slots sharing 2 cores already at a load average of 4-6 from
other work), `--devices 0 --neighbours 1,2 --pairs 3 --rounds 2`, busy/alone over 6 vs 6 rounds:
  with a load of 3 timed calls a round (mostly point-process start-up), 129 s:
    decode median 1.96x [1.45, 2.66], fastest 1.79x [1.43, 2.23]: slower beside busy neighbours;
    prefill median 1.35x [0.63, 2.88], fastest 1.07x [0.71, 1.62]: not distinguishable
  with the default load (30 timed calls a round), 116 s: all not distinguishable: decode median
    1.33x [1.00, 1.77], fastest 0.90x [0.66, 1.22]; prefill 1.09x [0.58, 2.08], 0.92x [0.62, 1.38]
It finds the shared cores when the load is heavy enough against that noise; 6 rounds a condition
leave intervals a factor of 2-4 wide there: give more --pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

DEFAULTS = {"cuda": dict(model="llama-3.2-1b", dtype="bfloat16", seq_len=512, decode_tokens=32, threads=None),
            "cpu": dict(model="tiny", dtype="float32", seq_len=32, decode_tokens=8, threads=1)}
PHASES, STATS = ("prefill", "decode"), ("median", "fastest")
INTS = {"pairs": (5, "alone/busy pairs of probe runs (default 5)"), "rounds": (3, "rounds a probe run (default 3)"),
        "repeats": (3, "timed calls a round (default 3)"), "batch": (1, "batch size (default 1)"),
        "seq-len": (None, "prompt length"), "decode-tokens": (None, "decode steps"),
        "threads": (None, "torch threads a point (CPU default 1)"), "load-batch": (None, "default the probe's"),
        "load-seq-len": (None, "default the probe's"), "load-rounds": (100, "rounds of each load run (default 100)"),
        "load-repeats": (None, "timed calls a load round (default 10x --repeats: the load outlasts the probe)")}
WORDS = {"slower": "slower beside busy neighbours", "faster": "faster beside busy neighbours"}


class ArgError(Exception):
    """A bad argument: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own errors included)
        raise ArgError(message)


@dataclass(frozen=True)
class Config:
    probe: int
    neighbours: Tuple[int, ...]
    device: str
    pairs: int
    rounds: int
    load_wait_s: float
    suite: Dict[str, object]
    load: Dict[str, object]
    out: Optional[Path]


def parse_args(argv=None) -> Config:
    ap = _Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="0", help="the probe's device id (default 0)")
    ap.add_argument("--neighbours", required=True, help="the busy neighbours' ids, like 1,2,3")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default=None)
    for name, (default, text) in INTS.items():
        ap.add_argument(f"--{name}", type=int, default=default, help=text)
    ap.add_argument("--load-wait", type=float, default=900, help="seconds to wait for the load to measure")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the per-round values and figures")
    a = ap.parse_args(argv)
    probe, neighbours = _ids(a.devices, "--devices"), _ids(a.neighbours, "--neighbours")
    if len(probe) != 1:
        raise ArgError(f"--devices {a.devices!r} names {len(probe)} devices; give the probe's one id, like 0")
    if probe[0] in neighbours:
        raise ArgError(f"--neighbours {a.neighbours!r} holds the probe device {probe[0]}; "
                       "name the other devices only")
    for name in INTS:
        v = getattr(a, name.replace("-", "_"))
        if v is not None and v < 1:
            raise ArgError(f"--{name} is {v}; give an integer >= 1")
    if a.pairs * a.rounds < 3:
        raise ArgError(f"--pairs {a.pairs} x --rounds {a.rounds} gives {a.pairs * a.rounds} rounds a condition; "
                       "give at least 3 (an interval needs them)")
    if a.load_rounds > 100:
        raise ArgError(f"--load-rounds {a.load_rounds}: sabench run takes at most 100 rounds")
    device = _device(a.device)
    d = DEFAULTS[device]
    suite = dict(name="probe", model=a.model or d["model"], dtype=a.dtype or d["dtype"], device=device,
                 batch=a.batch, seq_len=a.seq_len or d["seq_len"], decode_tokens=a.decode_tokens or d["decode_tokens"],
                 repeats=a.repeats, rounds=a.rounds, threads=a.threads or d["threads"])
    load = dict(suite, name="load", rounds=a.load_rounds, repeats=a.load_repeats or 10 * a.repeats,
                batch=a.load_batch or suite["batch"], seq_len=a.load_seq_len or suite["seq_len"])
    return Config(probe[0], neighbours, device, a.pairs, a.rounds, a.load_wait, suite, load, a.out)


def _ids(text: str, flag: str) -> Tuple[int, ...]:
    from sabench.harness.device_list import ALL, parse_devices

    try:
        ids = parse_devices(text)
    except ValueError as e:
        raise ArgError(str(e).replace("--devices", flag, 1).replace(" or 'all'", "")) from None
    if ids == ALL:
        raise ArgError(f"{flag} all: give the ids, like 1,2,3")
    return ids


def _device(choice: str) -> str:
    import torch

    return choice if choice != "auto" else "cuda" if torch.cuda.is_available() else "cpu"


def per_round(results) -> Dict[str, Dict[str, List[float]]]:
    """phase -> {"median": each measured round's median step, "fastest": its fastest step} (ms)."""
    from sabench.stats import ok_rounds

    out = {p: {s: [] for s in STATS} for p in PHASES}
    for rec in results.records:
        if rec.phase in out:
            out[rec.phase]["median"] += ok_rounds(rec).values()
            out[rec.phase]["fastest"] += ok_rounds(rec, fastest=True).values()
    return out


def analyse(alone: Dict, busy: Dict, threshold: float = 0.05) -> List[dict]:
    """busy/alone for every phase and statistic: ratio, 95% interval, verdict in the project's words."""
    from sabench.stats import ratio_interval, verdict

    out = []
    for p in PHASES:
        for s in STATS:
            est = ratio_interval(alone[p][s], busy[p][s], where=f"{p} {s} busy/alone")
            v = verdict(est, threshold)
            out.append({"phase": p, "statistic": s, "ratio": est.ratio, "low": est.low, "high": est.high,
                        "n_alone": est.n_base, "n_busy": est.n_cand, "method": est.method, "interval": str(est),
                        "verdict": WORDS.get(v.label, "not distinguishable"), "reason": v.reason})
    return out


def figure_lines(figures: List[dict]) -> List[str]:
    return [f"{f['phase']:7} per-round {f['statistic']:7} step: busy/alone {f['interval']} "
            f"({f['n_busy']} vs {f['n_alone']} rounds): {f['verdict']}" for f in figures]


def write_suite(path: Path, f: Dict) -> Path:
    """A one-point suite (baseline only) from the probe's or the load's fields."""
    import yaml

    path.write_text(yaml.safe_dump({
        "name": f["name"], "description": f"benchmarks/device_interference.py {f['name']} point",
        "model": f["model"], "dtype": f["dtype"], "device": f["device"], "variants": ["baseline"],
        "sweep": {"batch_size": [f["batch"]], "seq_len": [f["seq_len"]]}, "decode_tokens": f["decode_tokens"],
        "warmup": 1, "repeats": f["repeats"], "rounds": f["rounds"], "threads": f["threads"]}, sort_keys=False))
    return path


def sabench_run(suite: Path, out: Path, devices) -> List[str]:
    return [sys.executable, "-m", "sabench.cli", "run", str(suite), "--out", str(out), "--no-report",
            "--devices", ",".join(map(str, devices))]


def run_probe(suite: Path, out: Path, probe: int) -> None:
    r = subprocess.run(sabench_run(suite, out, [probe]), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the probe run {out} failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")


def start_load(suite: Path, out: Path, neighbours, wait_s: float) -> subprocess.Popen:
    """The load in its own process group, returned once it has recorded a point (it is measuring)."""
    log = open(out.with_suffix(".log"), "w")
    p = subprocess.Popen(sabench_run(suite, out, neighbours), stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    log.close()
    t0 = time.monotonic()
    while not (out / "results.json").exists():
        if p.poll() is not None:
            raise RuntimeError(f"the load ended (exit {p.returncode}) before it measured; see {out.with_suffix('.log')}")
        if time.monotonic() - t0 > wait_s:
            stop_load(p)
            raise RuntimeError(f"the load recorded no point within {wait_s:g} s; raise --load-wait")
        time.sleep(0.5)
    return p


def stop_load(p: subprocess.Popen) -> None:
    """SIGINT to the load's process group (as Ctrl-C), then SIGKILL whatever of the group is left."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
            p.wait(wait)
            time.sleep(1)  # the sabench process has ended; its point processes may not have yet
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    p.wait()


def measure(cfg: Config, tmp: Path) -> Tuple[Dict, Dict, List[dict]]:
    from sabench.records import load_results

    probe, load = write_suite(tmp / "probe.yaml", cfg.suite), write_suite(tmp / "load.yaml", cfg.load)
    values = {c: {p: {s: [] for s in STATS} for p in PHASES} for c in ("alone", "busy")}
    runs = []
    for i in range(cfg.pairs):
        for cond in (("alone", "busy") if i % 2 == 0 else ("busy", "alone")):
            out, t0, la = tmp / f"probe-{cond}-{i}", time.time(), os.getloadavg()[0]
            if cond == "alone":
                run_probe(probe, out, cfg.probe)
            else:
                p = start_load(load, tmp / f"load-{i}", cfg.neighbours, cfg.load_wait_s)
                try:
                    la = os.getloadavg()[0]
                    run_probe(probe, out, cfg.probe)
                    if p.poll() is not None:
                        raise RuntimeError(f"the load ended before the probe did (pair {i}); raise --load-repeats")
                finally:
                    stop_load(p)
            got = per_round(load_results(out))
            for p in PHASES:
                for s in STATS:
                    values[cond][p][s] += got[p][s]
            runs.append({"pair": i, "condition": cond, "dir": str(out), "loadavg_1min_at_start": la,
                         "wall_s": round(time.time() - t0, 1), "values_ms": got})
            print(f"pair {i + 1}/{cfg.pairs} {cond:5}: medians prefill {_ms(got['prefill']['median'])}, "
                  f"decode {_ms(got['decode']['median'])} ms; load average {la:.2f}", flush=True)
    return values["alone"], values["busy"], runs


def _ms(xs) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def conditions(cfg: Config) -> dict:
    import torch

    from sabench.harness.device_list import device_facts, resolve_pins

    pins = resolve_pins((cfg.probe,) + cfg.neighbours, cfg.device, warn=False)
    return {"device": cfg.device, "devices": device_facts(pins, cfg.device), "torch": torch.__version__,
            "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "probe": cfg.suite, "load": cfg.load,
            "probe_device": cfg.probe, "neighbours": list(cfg.neighbours)}


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        cond = conditions(cfg)
    except (ArgError, ValueError) as e:  # UserError is a ValueError
        print(f"device_interference: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    s, l = cfg.suite, cfg.load
    print(f"probe: {s['model']} {s['dtype']} b={s['batch']} s={s['seq_len']} decode {s['decode_tokens']} on "
          f"{cfg.device} {cfg.probe}; load: b={l['batch']} s={l['seq_len']} on {list(cfg.neighbours)}; "
          f"{cfg.pairs} pairs x {cfg.rounds} rounds; torch {cond['torch']}; {cond['cpus']} CPUs; "
          f"load average {cond['loadavg_before'][0]:.2f}", flush=True)
    for d in cond["devices"]:
        print(f"  device {d['id']}: {d.get('name', d.get('nvml_unavailable', 'CPU slot (not a device)'))}")
    tmp, t0 = Path(tempfile.mkdtemp(prefix="sabench-interference-")), time.time()
    alone, busy, runs = measure(cfg, tmp)
    figures = analyse(alone, busy)
    loads = {c: ", ".join(f"{r['loadavg_1min_at_start']:.1f}" for r in runs if r["condition"] == c)
             for c in ("alone", "busy")}
    print(f"\n{time.time() - t0:.0f} s; load average at the probes' start: alone {loads['alone']}; busy {loads['busy']}")
    print("\n".join(figure_lines(figures)))
    print(f"runs kept in {tmp}")
    if cfg.out is not None:
        cfg.out.write_text(json.dumps({"conditions": cond, "runs": runs, "alone_ms": alone, "busy_ms": busy,
                                       "figures": figures}, indent=1))
        print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

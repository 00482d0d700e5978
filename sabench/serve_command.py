"""`sabench serve SUITE`: the suite's serving scenario; OUT/serving.json, OUT/report.md, OUT/serving_pareto.png,
and OUT/vllm/ (the request streams for `vllm bench serve`, sabench/serving/export.py)."""
from __future__ import annotations

import dataclasses
import sys

from sabench.errors import UserError, check_output_dir


def add_serve_arguments(p) -> None:
    from sabench.argtypes import int_in

    p.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a YAML file with a serving: block")
    p.add_argument("--out", default=None, help="output dir (default reports/<suite>/<timestamp>-<host>)")
    p.add_argument("--rounds", type=int_in(1, 100), default=None, help="rounds (default: the suite's `rounds`)")
    p.add_argument("--threads", type=int_in(1, 4096), default=None, help="torch threads (default: the suite's)")


def cmd_serve(args) -> int:
    from sabench.serving.bench import run_serving
    from sabench.serving.export import export_streams
    from sabench.serving.report import section
    from sabench.suite import find_suite, load_suite

    suite = load_suite(find_suite(args.suite))
    if suite.serving is None:
        raise UserError(f"{suite.path or suite.name}: no serving: block to run (see sabench/serving/spec.py for "
                        "its keys); `sabench run` runs a sweep")
    if suite.tensor_parallel > 1:
        raise UserError(f"{suite.path or suite.name}: parallel.tensor: serving runs on one device")
    suite = dataclasses.replace(suite, rounds=args.rounds or suite.rounds, threads=args.threads or suite.threads)
    if args.out is None:
        from sabench.harness.sweep import default_out_dir

        out = default_out_dir(suite)
    else:
        out = check_output_dir(args.out, "--out")
    if (out / "serving.json").exists():
        raise UserError(f"--out {str(out)!r} already holds a serving.json, choose a new directory")
    results = run_serving(suite, out, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = out / "report.md"
    report.write_text(f"# {suite.name}: serving\n\n" + section(results, out), encoding="utf-8")
    export_streams(results, out)
    print(f"wrote {out / 'serving.json'} and {report}", file=sys.stderr)
    return 0


def add_fleet_arguments(p) -> None:
    from sabench.argtypes import float_in, int_in

    p.add_argument("--model", required=True, help="preset, HF model directory or config.json")
    p.add_argument("--variant", action="append", help="repeatable (default: baseline and cla:2)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--memory", default="80GiB", help="memory per GPU (default 80GiB)")
    p.add_argument("--gpu", default="H100 SXM", help="datasheet peaks, e.g. 'H100 SXM', 'H200' (default H100 SXM)")
    p.add_argument("--tp", type=int_in(1, 1024), default=1, help="GPUs per replica, tensor-parallel (default 1)")
    p.add_argument("--prompt-len", type=int_in(1, 1 << 24), default=8192)
    p.add_argument("--output-len", type=int_in(1, 1 << 24), default=256)
    p.add_argument("--ttft-ms", type=float_in(0.0, 1e9), default=2000.0)
    p.add_argument("--tpot-ms", type=float_in(0.0, 1e9), default=50.0)
    p.add_argument("--share", type=float_in(0.0, 1.0), default=0.9, help="goodput share to sustain (default 0.9)")
    p.add_argument("--demand", type=float_in(0.0, 1e12), default=100.0, help="requests/s to serve (default 100)")


def cmd_fleet(args) -> int:
    from sabench.measure.calibrate import DATASHEET
    from sabench.serving.fleet import predict
    from sabench.serving.metrics import Targets
    from sabench.units import parse_size

    if args.gpu not in DATASHEET:
        raise UserError(f"--gpu {args.gpu!r} is not a datasheet sabench knows; use one of {', '.join(DATASHEET)}")
    peaks = DATASHEET[args.gpu]
    variants = args.variant or ["baseline", "cla:2"]
    rows = predict(args.model, variants, args.dtype, parse_size(args.memory), peaks, args.prompt_len,
                   args.output_len, Targets(args.ttft_ms, args.tpot_ms), args.demand, args.share, args.tp)
    print(f"PREDICTION (simulated, not measured): {args.model}, {args.dtype}, prompts {args.prompt_len} and outputs "
          f"{args.output_len} tokens, TTFT <= {args.ttft_ms:g} ms and TPOT <= {args.tpot_ms:g} ms for "
          f"{args.share:.0%} of requests, {args.demand:g} req/s to serve")
    print(f"inputs: {args.gpu} datasheet peaks ({peaks['peak_bandwidth_bytes_per_s'] / 1e12:g} TB/s, "
          f"{peaks['peak_flops_per_s'] / 1e12:g} TFLOP/s), step costs at those roofline floors"
          + (", NVLink 4 datasheet link" if args.tp > 1 else "") + f"; slots: memory model at {args.memory} per GPU"
          + (f"; replicas of {args.tp} GPUs" if args.tp > 1 else "") + "; measured: nothing")
    print("| variant | slots per replica | sustained req/s per replica | GPUs for the demand |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r.variant} | {r.slots} | {r.sustained_rps:.3g} | {r.gpus or 'none sustains it'} |")
    return 0

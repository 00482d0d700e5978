"""`sabench serve SUITE`: the suite's serving scenario; OUT/serving.json, OUT/report.md, OUT/serving_pareto.png,
and OUT/vllm/ (the request streams for `vllm bench serve`, sabench/serving/export.py)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from sabench.errors import UserError, check_output_dir


def register(subparsers) -> None:
    from sabench.argtypes import int_in

    p = subparsers.add_parser(
        "serve", help="serve a suite's request stream with continuous batching: TTFT, TPOT, goodput per variant",
        description="Run the suite's `serving:` scenario: each variant with the slots its KV cache fits in the "
                    "suite's cache budget, FCFS admission, every load in every round. Writes OUT/serving.json "
                    "(every request's raw times), OUT/report.md, OUT/serving_pareto.png and OUT/vllm/ (each "
                    "rate's request stream for `vllm bench serve`).")
    p.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a YAML file with a serving: block")
    p.add_argument("--out", default=None, help="output dir (default reports/<suite>/<timestamp>-<host>)")
    p.add_argument("--rounds", type=int_in(1, 100), default=None, help="rounds (default: the suite's `rounds`)")
    p.add_argument("--threads", type=int_in(1, 4096), default=None, help="torch threads (default: the suite's)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
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

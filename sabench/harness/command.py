"""`sabench run` and `sabench merge`: the harness's commands (a suite to a run; shard runs to one run)."""
from __future__ import annotations

import sys

from sabench.argtypes import int_in
from sabench.errors import UserError, check_output_dir


def add_run_arguments(p) -> None:
    p.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a YAML file")
    p.add_argument("--out", default=None, help="results dir (default reports/<suite>/<timestamp>-<host>)")
    p.add_argument("--resume", action="store_true",
                   help="measure only the (point, round) pairs missing from --out, for the suite that wrote it "
                        "(another name, model, variant list or sweep: exit 2, nothing changed); with --rounds K on "
                        "a run of fewer rounds, adds the rounds up to K; --variant adds the variants it names")
    p.add_argument("--rounds", type=int_in(1, 100), default=None,
                   help="passes over every point, each in a fresh shuffled order of (batch, seq) cells with a "
                        "cell's variants back to back; each (point, round) its own process (default: the "
                        "suite's `rounds`, else 3: the fewest that give intervals across processes and gate "
                        "verdicts; a run takes about ROUNDS times one round's time; with 1 or 2 the report "
                        "gives estimates only and check does not judge timings)")
    p.add_argument("--threads", type=int_in(1, 4096), default=None,
                   help="torch intra-op threads in every point process (default: the suite's `threads`, "
                        "else 1 on CPU, where more threads spin against any other work on the machine, and "
                        "torch's default on CUDA; with --resume, the run's); recorded in results.json")
    p.add_argument("--retry-failed", nargs="?", const="errors", choices=("errors", "oom"), default=None,
                   help="with --resume: measure again the rounds that failed with status error or killed "
                        "(--retry-failed=oom: also those that ran out of memory or were skipped after an "
                        "OOM); the exit status is 1 while any round is still failing")
    p.add_argument("--variant", action="append", help="run only these variants (repeatable)")
    p.add_argument("--no-report", action="store_true", help="skip writing report.md at the end")
    p.add_argument("--execution", choices=("eager", "compiled"), default=None,
                   help="override the suite's execution (default: the suite's; auto = compiled on CUDA, eager on CPU)")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="run only the i-th of N balanced shards of the points (1-based: 1/8 .. 8/8); "
                        "combine the shards' runs with `sabench merge`")
    p.add_argument("--devices", default=None, metavar="IDS",
                   help="measure on several GPUs at once: ids like 0,1,3 (positions among the GPUs this "
                        "process sees) or 'all'; one point process per GPU, each pinned to it with "
                        "CUDA_VISIBLE_DEVICES, a round's (batch, seq_len) cell on one GPU; each round "
                        "records its GPU (default: one device, the suite's)")


def add_merge_arguments(p) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="shard run directories or results.json files")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the merged run (must hold no run)")
    p.add_argument("--complete", action="store_true", help="write nothing when a point is missing")
    p.add_argument("--no-report", action="store_true", help="skip writing report.md")


def cmd_run(args) -> int:
    from sabench.harness.device_list import parse_devices  # --devices 0,1,3|all: checked by the runner
    from sabench.harness.shard import parse_shard
    from sabench.harness.sweep import run_suite
    from sabench.suite import find_suite, load_suite

    shard = _run_option(args.shard, parse_shard)
    devices = _run_option(args.devices, parse_devices)
    suite = load_suite(find_suite(args.suite))
    if not suite.seq_lens:
        raise UserError(f"{suite.path or suite.name}: no sweep to run (a serving suite): run it with `sabench serve`")
    if suite.tensor_parallel > 1:  # before anything runs: GPUs enough, a sweep the ranks can run
        from sabench.devices import resolve_device
        from sabench.harness.tp_point import check_run

        if devices is not None:
            raise UserError(f"{suite.path or suite.name}: parallel.tensor {suite.tensor_parallel}: --devices runs "
                            "one GPU per point; a tensor-parallel point takes its ranks' GPUs (rank r on GPU r): "
                            "drop --devices")
        note = check_run(suite, resolve_device(suite.device))
        if note:
            print(note, file=sys.stderr)

    if args.out is not None:
        check_output_dir(args.out, "--out")
    return run_suite(suite, out=args.out, resume=args.resume, variants=args.variant,
                     report=not args.no_report, execution=args.execution, rounds=args.rounds,
                     threads=args.threads, retry_failed=args.retry_failed, shard=shard, devices=devices)


def _run_option(text, parse):
    """A `sabench run` option parsed when the command runs (docs show `--shard $SLURM_ARRAY_TASK_ID/8`):
    None when not given; the parser's ValueError becomes a one-line user error."""
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as e:
        raise UserError(f"{e}, in 'sabench run', see 'sabench run --help'") from None


def cmd_merge(args) -> int:
    from sabench.harness.merge import merge_runs

    check_output_dir(args.out, "--out")
    return merge_runs(args.run_dirs, args.out, partial=not args.complete, report=not args.no_report)

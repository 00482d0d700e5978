"""argparse subcommands: report, compare, check, history.

`register(subparsers)` adds them to the main `sabench` parser; each sets `func(args) -> int`.
Bad input is raised as sabench.report.ResultsError (a sabench.errors.UserError): the caller
prints `sabench: error: <msg>` and exits 2. `main(argv)` does exactly that on its own
(`python -m sabench.report.commands ...`), for tests and standalone use.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from sabench.errors import UserError, check_output_dir, check_output_file
from sabench.records import ResultsError

MAX_SIZE = 1 << 24


def _int_in(lo: int, hi: int):
    from sabench.argtypes import int_in  # one definition of the CLI's integer arguments

    return int_in(lo, hi)


def _history_metric(text: str) -> str:
    """argparse type: a metric the history records (its aliases and every numeric record field)."""
    from sabench.history import METRICS

    if text not in METRICS:
        short = [m for m in METRICS if "." not in m]
        raise argparse.ArgumentTypeError(f"unknown metric {text!r}; choose from {', '.join(short)}, or a nested "
                                         f"field such as latency_ms.p90 or memory_bytes.device_peak")
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write report.md and figures for a run",
        description="Write RUN_DIR/report.md (tables, findings) and PNG figures beside it.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory or its results.json")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "compare", help="compare runs of a suite side by side",
        description="Compare runs of the same suite (other hardware / software): environment "
                    "differences first, then per-point tables with ratios against the first run, and plots.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or results.json files (2 or more)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default: reports/compare/<timestamp>/)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "check", help="CI regression gate: CURRENT against BASELINE",
        description="Exit 0: no regression; 1: a regression, or no point ran ok in both runs; 2: bad input "
                    "(including invalid timings). Deterministic figures (params, KV bytes, FLOPs) and ok "
                    "statuses must match exactly (a point ok in BASELINE that errors, runs out of memory or is "
                    "missing in CURRENT regresses). A timing regresses when the confidence interval of its "
                    "slowdown (CURRENT / BASELINE over each round's fastest step) lies wholly above 1 + --threshold; "
                    "the intervals are Bonferroni-corrected so the whole check raises a false alarm with "
                    "probability at most --alpha. Files without rounds (schema v1) are judged on the steps of "
                    "one process, marked within-process only. The first line of the output (and of --markdown) "
                    "is the verdict.")
    p.add_argument("baseline", metavar="BASELINE", help="baseline run dir or results.json")
    p.add_argument("current", metavar="CURRENT", help="current run dir or results.json")
    p.add_argument("--threshold", default="5%",
                   help="practical threshold: a slowdown counts only when its whole interval lies above "
                        "1 + threshold: '5%%', '0.05' or '5' (a bare number > 1 is a percentage, <= 1 a "
                        "fraction); default 5%%")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise false-alarm rate of the timing gate: each of the K points judged gets a "
                        "1 - alpha/K interval (default 0.05)")
    p.add_argument("--timings", choices=("on", "off"), default="on",
                   help="'off': gate on deterministic figures only (shared CI runners); timings still listed")
    p.add_argument("--allow-missing", action="store_true",
                   help="a point ok in BASELINE but absent from CURRENT is a note, not a regression")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="also write a PR-comment summary here (appended to $GITHUB_STEP_SUMMARY when set)")
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser(
        "history", help="trends across commits from the SQLite history",
        description="Print (and plot) a metric across recorded runs, per point, marking steps found by step "
                    "detection over the whole series (per-commit values weighted by their spread): a step is "
                    "a regression only when the levels differ by more than the series' noise and --threshold, "
                    "and the new level holds for two commits. The database is --db, else $SABENCH_HISTORY, "
                    "else reports/history.sqlite.")
    p.add_argument("--db", metavar="PATH", default=None, help="history database")
    p.add_argument("--suite", default=None)
    p.add_argument("--metric", default="median_ms", metavar="METRIC", type=_history_metric,
                   help="median_ms (default), tokens_per_s, peak_memory_bytes, flops_analytic, flops_counted, or any "
                        "numeric field of a record by its name in results.json (joules_per_token, mfu, "
                        "latency_ms.p90, memory_bytes.peak_rss, ...)")
    p.add_argument("--variant", default=None)
    p.add_argument("--phase", default=None, choices=("prefill", "decode"))
    p.add_argument("--batch", type=_int_in(1, MAX_SIZE), default=None, help="only this batch size")
    p.add_argument("--seq-len", type=_int_in(1, MAX_SIZE), default=None, help="only this seq_len")
    p.add_argument("--machine", default=None, help="machine fingerprint (prefix) or host name")
    p.add_argument("--last", type=_int_in(0, 1_000_000), default=10, help="columns: the last N runs (default 10; 0 = all)")
    p.add_argument("--threshold", default="5%", help="smallest relative move marked as a step (default 5%%)")
    p.add_argument("--plot", metavar="FILE", default=None, help="write the trend plot (PNG) here")
    p.add_argument("--import", dest="import_paths", nargs="+", metavar="PATH", default=None,
                   help="merge runs: directories (searched for results.json), results.json files or "
                        "another history .sqlite")
    p.set_defaults(func=cmd_history)


def cmd_report(args) -> int:
    from sabench.report.report import write_report

    for d in args.run_dirs:
        print(write_report(d))
    return 0


def cmd_compare(args) -> int:
    from sabench.report.compare import compare_runs

    if len(args.runs) < 2:
        raise ResultsError("compare needs at least two runs")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    print(compare_runs(args.runs, args.out))
    return 0


def cmd_check(args) -> int:
    from sabench.report.check import check, parse_threshold

    if args.markdown is not None:
        check_output_file(args.markdown, "--markdown")
    res = check(args.baseline, args.current, threshold=parse_threshold(args.threshold),
                markdown=args.markdown, alpha=args.alpha, timings=args.timings == "on",
                allow_missing=args.allow_missing)
    sys.stdout.write(res.to_text())
    return res.exit_code


def cmd_history(args) -> int:
    from sabench import history
    from sabench.report.check import parse_threshold
    from sabench.report.history import format_trends, query_trend

    if args.plot is not None:
        check_output_file(args.plot, "--plot")
    if args.import_paths:
        added, present = history.import_paths(args.import_paths, args.db)
        print(f"{history.resolve_db(args.db)}: {added} run(s) added, {present} already present")
        return 0
    trends = query_trend(args.db, suite=args.suite, metric=args.metric, variant=args.variant,
                         phase=args.phase, machine=args.machine, batch_size=args.batch,
                         seq_len=args.seq_len, threshold=parse_threshold(args.threshold))
    if not trends:
        suites = history.list_suites(args.db)
        have = ", ".join(f"{s} ({n} runs)" for s, n in suites) or "none"
        print(f"no matching history in {history.resolve_db(args.db)}; suites recorded: {have}")
        return 0
    sys.stdout.write(format_trends(trends, last=args.last))
    if args.plot:
        from sabench.report.plots_history import plot_trends

        print(plot_trends(trends, args.plot))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sabench")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse and run one subcommand; a UserError (ResultsError) -> 'sabench: error: ...' and 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"sabench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The readers' commands: report, compare, check, history (their arguments and handlers; the command
table is sabench/cli.py's). Bad input is raised as sabench.records.ResultsError (a UserError: exit 2)."""
from __future__ import annotations

import argparse
import sys

from sabench.argtypes import MAX_SIZE, int_in
from sabench.errors import check_output_dir, check_output_file
from sabench.records import ResultsError


def _history_metric(text: str) -> str:
    """argparse type: a metric the history records (its aliases and every numeric record field)."""
    from sabench.history import METRICS

    if text not in METRICS:
        short = [m for m in METRICS if "." not in m]
        raise argparse.ArgumentTypeError(f"unknown metric {text!r}; choose from {', '.join(short)}, or a nested "
                                         f"field such as latency_ms.p90 or memory_bytes.device_peak")
    return text


def add_report_arguments(p) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory or its results.json")


def add_compare_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or results.json files (2 or more)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default: reports/compare/<timestamp>/)")


def add_check_arguments(p) -> None:
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


def add_history_arguments(p) -> None:
    p.add_argument("--db", metavar="PATH", default=None, help="history database")
    p.add_argument("--suite", default=None)
    p.add_argument("--metric", default="median_ms", metavar="METRIC", type=_history_metric,
                   help="median_ms (default), tokens_per_s, peak_memory_bytes, flops_analytic, flops_counted, or any "
                        "numeric field of a record by its name in results.json (joules_per_token, mfu, "
                        "latency_ms.p90, memory_bytes.peak_rss, ...)")
    p.add_argument("--variant", default=None)
    p.add_argument("--phase", default=None, choices=("prefill", "decode"))
    p.add_argument("--batch", type=int_in(1, MAX_SIZE), default=None, help="only this batch size")
    p.add_argument("--seq-len", type=int_in(1, MAX_SIZE), default=None, help="only this seq_len")
    p.add_argument("--machine", default=None, help="machine fingerprint (prefix) or host name")
    p.add_argument("--last", type=int_in(0, 1_000_000), default=10, help="columns: the last N runs (default 10; 0 = all)")
    p.add_argument("--threshold", default="5%", help="smallest relative move marked as a step (default 5%%)")
    p.add_argument("--plot", metavar="FILE", default=None, help="write the trend plot (PNG) here")
    p.add_argument("--import", dest="import_paths", nargs="+", metavar="PATH", default=None,
                   help="merge runs: directories (searched for results.json), results.json files or "
                        "another history .sqlite")


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

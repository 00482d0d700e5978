"""The `sabench` command: thin parsing over the library.

Exit codes: 0 ok; 1 failed points, a regression, or a bug (then with its traceback);
2 a user error (one line on stderr, `sabench: error: <what>, <where>, <what to do>`,
never a traceback); 130 interrupted (Ctrl-C; one line saying what was kept).
"""
from __future__ import annotations

import argparse
import sys

from dataclasses import dataclass
from typing import Callable, Optional

from sabench import continuous, inspect_command, quality_command
from sabench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, RunInterrupted, UserError, one_line, os_error
from sabench.harness import command as harness_command
from sabench.report import commands as report_commands
from sabench import serve_command as serving_command


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UserError(f"{message}, in '{self.prog}', see '{self.prog} --help'")

    def parse_args(self, args=None, namespace=None):
        """As argparse, but an unknown option names the subcommand it was given to."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = f"{self.prog} {ns.command}" if getattr(ns, "command", None) else self.prog
            raise UserError(f"unrecognized arguments: {' '.join(extras)}, in '{prog}', see '{prog} --help'")
        return ns


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help, the feature module's function that adds its arguments, and
    its handler (`run(args) -> exit code`)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: Optional[str] = None


# every subcommand, in the order `sabench --help` lists them; the one place a command is declared
COMMANDS = (
    Command("inspect", "what a variant costs before anything runs (no weights)",
            inspect_command.add_arguments, inspect_command.run),
    Command("run", "run a benchmark suite", harness_command.add_run_arguments, harness_command.cmd_run),
    Command("merge", "combine the runs of a suite's shards into one run",
            harness_command.add_merge_arguments, harness_command.cmd_merge,
            "Combine `sabench run --shard i/N` runs of one suite into one run in --out "
            "(results.json and report.md). Shards of different suites, sweeps, model "
            "configs or commits are refused; a point in two shards must be identical. "
            "Exit 1 when points are missing (they are named; what there is is still "
            "written unless --complete)."),
    Command("quality", "perplexity per variant, layer attention similarity, SA span advice",
            quality_command.add_arguments, quality_command.run,
            "Perplexity of each variant built from the same checkpoint (no retraining), "
            "the baseline's layer-by-layer attention similarity, and the measured SA "
            "advice (by default, or with --variant recommended). The baseline is always "
            "scored first."),
    Command("report", "write report.md and figures for a run",
            report_commands.add_report_arguments, report_commands.cmd_report,
            "Write RUN_DIR/report.md (tables, findings) and PNG figures beside it."),
    Command("compare", "compare runs of a suite side by side",
            report_commands.add_compare_arguments, report_commands.cmd_compare,
            "Compare runs of the same suite (other hardware / software): environment "
            "differences first, then per-point tables with ratios against the first run, and plots."),
    Command("check", "CI regression gate: CURRENT against BASELINE",
            report_commands.add_check_arguments, report_commands.cmd_check,
            "Exit 0: no regression; 1: a regression, or no point ran ok in both runs; 2: bad input "
            "(including invalid timings). Deterministic figures (params, KV bytes, FLOPs) and ok "
            "statuses must match exactly (a point ok in BASELINE that errors, runs out of memory or is "
            "missing in CURRENT regresses). A timing regresses when the confidence interval of its "
            "slowdown (CURRENT / BASELINE over each round's fastest step) lies wholly above 1 + --threshold; "
            "the intervals are Bonferroni-corrected so the whole check raises a false alarm with "
            "probability at most --alpha. Files without rounds (schema v1) are judged on the steps of "
            "one process, marked within-process only. The first line of the output (and of --markdown) "
            "is the verdict."),
    Command("history", "trends across commits from the SQLite history",
            report_commands.add_history_arguments, report_commands.cmd_history,
            "Print (and plot) a metric across recorded runs, per point, marking steps found by step "
            "detection over the whole series (per-commit values weighted by their spread): a step is "
            "a regression only when the levels differ by more than the series' noise and --threshold, "
            "and the new level holds for two commits. The database is --db, else $SABENCH_HISTORY, "
            "else reports/history.sqlite."),
    Command("continuous", "measure a base and a head commit side by side and judge the difference",
            continuous.add_arguments, continuous.run,
            "Check out BASE and HEAD (each in a cached worktree and environment), run SUITE for "
            "both with their rounds interleaved, and judge the pair with `sabench check`. "
            "Exit 0: no regression; 1: a regression; 2: could not measure."),
    Command("serve", "serve a suite's request stream with continuous batching: TTFT, TPOT, goodput per variant",
            serving_command.add_serve_arguments, serving_command.cmd_serve,
            "Run the suite's `serving:` scenario: each variant with the slots its KV cache fits in the "
            "suite's cache budget, FCFS admission, every load in every round. Writes OUT/serving.json "
            "(every request's raw times), OUT/report.md, OUT/serving_pareto.png and OUT/vllm/ (each "
            "rate's request stream for `vllm bench serve`)."),
    Command("fleet", "predict (by simulation on roofline floors) the GPUs each variant needs for a demand",
            serving_command.add_fleet_arguments, serving_command.cmd_fleet,
            "A prediction, not a measurement: the serving scheduler simulated with step costs at the "
            "roofline floor of a GPU's datasheet peaks and the memory model's slots per GPU "
            "(sabench/serving/fleet.py). Floors are optimistic: rates are upper bounds, GPU counts lower "
            "bounds."),
)


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole command line; with `only` (a command's name), that command's arguments alone: the
    others are still listed by `sabench --help`, but none of their feature code runs."""
    p = _Parser(prog="sabench", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for c in COMMANDS:
        cp = sub.add_parser(c.name, help=c.help, description=c.description)
        if only is None or c.name == only:
            c.add_arguments(cp)
        cp.set_defaults(func=c.run)
    return p


def _command_in(argv) -> Optional[str]:
    """The command `argv` names first thing, if it does (else the whole parser is built)."""
    first = (sys.argv[1:] if argv is None else list(argv))[:1]
    return first[0] if first and first[0] in {c.name for c in COMMANDS} else None


def _version() -> str:
    from sabench import __version__

    return f"sabench {__version__}"


def main(argv=None) -> int:
    """Run one command; user errors -> one line and 2, Ctrl-C -> one line and 130, bugs propagate."""
    try:
        args = build_parser(only=_command_in(argv)).parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as e:
        return _user_error(e)
    except RunInterrupted as e:
        print(f"sabench: {one_line(e)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("sabench: interrupted; files written before the interrupt are kept, nothing else was changed; "
              "run the command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a path the user gave that cannot be read or written
        mapped = os_error(e, "cannot use")
        if mapped is None:
            raise
        return _user_error(mapped)


def _user_error(e: Exception) -> int:
    msg = one_line(e)
    if len(msg) > 2000:  # a message quoting a huge input stays readable
        msg = msg[:1000] + " ... " + msg[-500:]
    print(f"sabench: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def entry() -> None:  # console script
    code = main()
    if code == EXIT_INTERRUPTED:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the line is out: a second Ctrl-C adds no traceback at exit
        # CPython marks a process whose Ctrl-C landed in code run by exec() of a string (a dataclass
        # being defined, say) to kill itself with SIGINT at exit under `python -m`, caught or not;
        # any exec() of a string clears the mark, so the exit status stays 130
        exec("")
    sys.exit(code)


if __name__ == "__main__":
    entry()

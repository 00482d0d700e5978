"""The `sabench` command: thin parsing over the library.

Exit codes: 0 ok; 1 failed points, a regression, or a bug (then with its traceback);
2 a user error (one line on stderr, `sabench: error: <what>, <where>, <what to do>`,
never a traceback); 130 interrupted (Ctrl-C; one line saying what was kept).
"""
from __future__ import annotations

import argparse
import json
import sys

from sabench.argtypes import int_in
from sabench.errors import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, RunInterrupted, UserError,
                            check_output_dir, one_line, os_error, refuse_run_dir)

EXIT_FAILED = 1
MAX_SIZE = 1 << 24  # batch, sequence and chunk sizes beyond this are typos


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


def _inspect_inputs(args) -> None:
    """Fill what --suite gives and the options leave open: model, dtype, variants, batch and
    seq_len (the suite's first), prefill chunk, memory, tensor-parallel degree and link."""
    args.link, args.tp_from = None, "--tp"
    if args.suite is None:
        if args.model is None:
            raise UserError("inspect: one of --model or --suite is required")
        return
    from sabench.suite import find_suite, load_suite

    suite = load_suite(find_suite(args.suite))
    if args.model is not None:
        raise UserError("inspect: give --model or --suite, not both (the suite names its model)")
    args.model = suite.model_config
    args.dtype = args.dtype or suite.dtype
    args.variant = args.variant or list(suite.variants)
    if args.batch is None:
        args.batch = next((b for b in suite.batch_sizes if b != "max"), 1)
    if args.seq_len is None:  # a serving suite has no sweep: its longest prompt
        args.seq_len = suite.seq_lens[0] if suite.seq_lens else suite.serving.prompt.hi
    if args.prefill_chunk is None:
        args.prefill_chunk = suite.prefill_chunk
    if args.memory is None:
        args.memory = suite.memory
    if args.tp is None:
        args.tp, args.tp_from = suite.tensor_parallel, "the suite's parallel.tensor"
    args.link = suite.link_bandwidth


def _link(args) -> dict:
    """The link bandwidth for the all-reduce floor: --link-bandwidth, the suite's, or the datasheet's."""
    from sabench.accounting import NVLINK_DATASHEET
    from sabench.tp_shapes import parse_bandwidth

    if args.link_bandwidth is not None:
        return {"bytes_per_s": parse_bandwidth(args.link_bandwidth), "source": "--link-bandwidth"}
    if args.link is not None:
        return {"bytes_per_s": args.link, "source": "the suite's parallel.link_bandwidth"}
    return NVLINK_DATASHEET


def _peaks(gpu):
    if gpu is None:
        return None
    from sabench.measure.calibrate import DATASHEET

    if gpu not in DATASHEET:
        raise UserError(f"--gpu {gpu!r} is not a datasheet sabench knows; use one of {', '.join(DATASHEET)}")
    return DATASHEET[gpu]


def cmd_inspect(args) -> int:
    from tabulate import tabulate

    from sabench import accounting, memory_model
    from sabench.dtypes import dtype_name
    from sabench.tp_shapes import check_tensor_parallel, rank_config
    from sabench.plan import plan_for
    from sabench.report.results import human_bytes, human_count, human_flops, human_rate
    from sabench.presets import resolve_config
    from sabench.units import parse_size

    _inspect_inputs(args)
    cfg = resolve_config(args.model, closed_forms_only=True)
    dtype = dtype_name(args.dtype or "bfloat16")
    args.batch = 1 if args.batch is None else args.batch
    seq = args.seq_len if args.seq_len is not None else min(2048, cfg.max_position_embeddings - 1)
    # parsed once, here; a bad variant is the likelier mistake: report it first
    plans = [plan_for(v, cfg) for v in args.variant or ["baseline"]]
    if seq + 1 > cfg.max_position_embeddings:
        raise UserError(f"--seq-len {seq} leaves no room for a decode step within the model's "
                        f"{cfg.max_position_embeddings} positions, give at most {cfg.max_position_embeddings - 1}")
    tp = 1 if args.tp is None else args.tp
    try:
        check_tensor_parallel(cfg, tp)
    except ValueError as e:
        raise UserError(f"{args.tp_from} {tp}: {e}") from None
    link, peaks = _link(args), _peaks(args.gpu)
    memory = parse_size(args.memory) if args.memory is not None else _local_device_memory()
    rows = []
    for v in plans:
        s = accounting.summary(cfg, v, args.batch, seq, dtype, args.prefill_chunk)
        if cfg.cannot_run:
            s["cannot_run"] = cfg.cannot_run
        if tp > 1 or peaks:
            s["tensor_parallel"] = accounting.tp_summary(cfg, v, args.batch, seq, dtype, tp, args.prefill_chunk,
                                                         link, peaks)
        if memory:  # per GPU: a rank's shard must fit in it
            s["capacity"] = memory_model.capacity(rank_config(cfg, tp), v, dtype, seq, memory,
                                                  prefill_chunk=args.prefill_chunk or "auto")
        if args.count:
            from sabench import flops

            pre = flops.count_prefill(cfg, v, args.batch, seq, dtype)
            dec = flops.count_decode_step(cfg, v, args.batch, seq + 1, dtype)
            s["flops_counted"] = {"prefill": pre.total, "decode_step": dec.total,
                                  "prefill_fvcore_alone": pre.fvcore_alone,
                                  "elementwise_ops": pre.elementwise_ops}
        rows.append(s)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return EXIT_OK
    base = accounting.summary(cfg, plan_for("baseline", cfg), args.batch, seq, dtype)
    table = [
        ["params"] + [f"{human_count(r['params'])} ({r['params'] / base['params']:.1%})" for r in rows],
        ["KV bytes / token"] + [f"{human_bytes(r['kv_cache_bytes_per_token'])} "
                                f"({r['kv_cache_bytes_per_token'] / base['kv_cache_bytes_per_token']:.1%})"
                                for r in rows],
        [f"KV cache (B={args.batch}, T={seq})"] + [human_bytes(r["kv_cache_bytes"]) for r in rows],
        [f"prefill FLOPs (T={seq})"] + [f"{human_flops(r['flops']['prefill'])} "
                                        f"({r['flops']['prefill'] / base['flops']['prefill']:.1%})" for r in rows],
        ["  attention part"] + [human_flops(r["flops"]["prefill_breakdown"]["attention"]) for r in rows],
        [f"decode step FLOPs (ctx {seq})"] + [human_flops(r["flops"]["decode_step"]) for r in rows],
        ["decode step bytes"] + [human_bytes(r["bytes_moved"]["decode_step"]) for r in rows],
    ]
    if tp > 1 or peaks:
        table += _tp_rows(rows, tp, peaks)
    if memory:
        per_gpu = " per GPU" if tp > 1 else ""
        table.append([f"max batch ({human_bytes(memory)}{per_gpu}, T={seq})"]
                     + [_max_batch_cell(r["capacity"]) for r in rows])
        limit = cfg.max_position_embeddings - 1
        table.append(["max seq_len at B=1"] + [
            f"{r['capacity']['max_seq_len_at_batch_1']}"
            + (" (the model's limit)" if r["capacity"]["max_seq_len_at_batch_1"] == limit else "") for r in rows])
    if args.count:
        table.append(["prefill FLOPs, fvcore+handles"] + [human_flops(r["flops_counted"]["prefill"]) for r in rows])
        table.append(["prefill FLOPs, fvcore alone"] + [human_flops(r["flops_counted"]["prefill_fvcore_alone"])
                                                       for r in rows])
    print(f"{cfg.name}: {cfg.num_layers} layers, d_model {cfg.hidden_size}, {cfg.num_heads} heads of "
          f"{cfg.head_dim} ({cfg.attention_kind}), {dtype}; percentages are of baseline")
    if cfg.native_variant != "baseline":
        print(f"  native layout (its config): {cfg.native_variant}")
    if cfg.cannot_run:
        print(f"  sabench cannot run this model: {cfg.cannot_run}")
    print(tabulate(table, headers=["", *[r["variant"] for r in rows]], tablefmt="github"))
    for r in rows:
        print(f"  {r['variant']}: {r['plan']}")
    if tp > 1 or peaks:
        t = rows[0]["tensor_parallel"]
        print(f"  TP-{tp}: per rank {cfg.num_heads // tp} heads, {cfg.num_kv_heads // tp} KV heads, MLP width "
              f"{cfg.intermediate_size // tp}; embeddings and lm_head on every rank; total = all ranks together")
        print(f"  all-reduce link: {human_rate(t['link_bandwidth_bytes_per_s'], 'B/s')} ({t['link_bandwidth_source']})"
              + (f"; floors: {args.gpu} datasheet peaks, max(compute, memory) + link" if peaks else ""))
    return EXIT_OK


def _tp_rows(rows, tp: int, peaks) -> list:
    from sabench.report.results import human_bytes, human_flops

    def per(key, fmt, phase=None, where="per_rank"):
        return [fmt(r["tensor_parallel"][where][key] if phase is None else r["tensor_parallel"][where][key][phase])
                for r in rows]

    out = [
        [f"weights per rank (TP-{tp})"] + per("weight_bytes", human_bytes),
        ["weights, all ranks"] + per("weight_bytes", human_bytes, where="total"),
        ["KV cache per rank"] + per("kv_cache_bytes", human_bytes),
        ["prefill FLOPs per rank"] + per("flops", human_flops, "prefill"),
        ["decode step bytes per rank"] + per("bytes_moved", human_bytes, "decode_step"),
        ["all-reduce bytes per rank: prefill"] + per("link_bytes", human_bytes, "prefill"),
        ["  decode step"] + per("link_bytes", human_bytes, "decode_step"),
    ]
    if peaks:
        for phase in ("prefill", "decode_step"):
            out.append([f"{phase.replace('_', ' ')} floor (compute|memory + link)"] + [
                "{floor_ms:.3g} ms ({compute_ms:.3g}|{memory_ms:.3g} + {link_ms:.3g})".format(
                    **r["tensor_parallel"]["floors_ms"][phase]) for r in rows])
    return out


def _local_device_memory():
    """Total memory of the local CUDA device, or None without one (then no capacity unless --memory)."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _max_batch_cell(cap: dict) -> str:
    if not cap["max_batch"]:
        return "0 (weights + one sequence do not fit)"
    chunk = cap["prefill_chunk"]
    return f"{cap['max_batch']}" + (f" (prefill chunk {chunk})" if chunk else "")


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


def _budget(text: str) -> float:
    from sabench.advice import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_quality(args) -> int:
    from sabench import quality
    from sabench.report import quality_report

    if args.out is not None:
        check_output_dir(args.out, "--out")
        refuse_run_dir(args.out, "--out", writes=("report.md",))
    result = quality.evaluate(args.model, variants=args.variant, text=args.text, token_ids=args.token_ids,
                              seq_len=args.seq_len, max_windows=args.max_windows, dtype=args.dtype,
                              device=args.device, stride=args.stride, budget=args.budget,
                              candidates=args.candidates, kv_advice=args.kv_advice)
    report = quality_report.write_report(result, args.out) if args.out is not None else None
    print(quality_report.to_json(result) if args.json else quality_report.format_table(result), flush=True)
    if report is not None:
        print(f"wrote {report}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sabench", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    i = sub.add_parser("inspect", help="what a variant costs before anything runs (no weights)")
    i.add_argument("--model", help="preset, HF model directory or config.json")
    i.add_argument("--suite", help="take the model, dtype, variants, first batch and seq_len, prefill chunk, "
                                   "memory and parallel settings from a suite (options given override them)")
    i.add_argument("--variant", action="append",
                   help="baseline, native, cla:N, kv:L<-S[,A-B<-S], sa:A-B[,C-D], joined by +; repeatable")
    i.add_argument("--dtype", default=None, help="float32|bfloat16|float16 (fp32, bf16, fp16; default bfloat16)")
    i.add_argument("--batch", type=int_in(1, MAX_SIZE), default=None, help="batch size (default 1)")
    i.add_argument("--seq-len", type=int_in(1, MAX_SIZE), default=None, help="prompt length T (default min(2048, max positions))")
    i.add_argument("--prefill-chunk", type=int_in(1, MAX_SIZE), default=None,
                   help="prefill query block for bytes moved and capacity (default: one block for bytes, "
                        "the largest power of two that fits for capacity)")
    i.add_argument("--memory", default=None,
                   help="device memory for capacity, e.g. 80GiB, 16GB, 512MiB or bytes (default: the local "
                        "CUDA device's total memory; none without a device)")
    i.add_argument("--tp", type=int_in(1, 1024), default=None,
                   help="tensor-parallel degree: per-rank and total figures, all-reduce traffic (default 1)")
    i.add_argument("--link-bandwidth", default=None,
                   help="GPU link bandwidth for the all-reduce floor, e.g. 450GB/s (default: the suite's, "
                        "else NVLink 4's datasheet figure)")
    i.add_argument("--gpu", default=None,
                   help="datasheet peaks for per-rank floors, e.g. 'H100 SXM', 'H200', 'A100 80GB'")
    i.add_argument("--count", action="store_true", help="also count FLOPs with fvcore (meta tensors)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="run a benchmark suite")
    r.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a YAML file")
    r.add_argument("--out", default=None, help="results dir (default reports/<suite>/<timestamp>-<host>)")
    r.add_argument("--resume", action="store_true",
                   help="measure only the (point, round) pairs missing from --out, for the suite that wrote it "
                        "(another name, model, variant list or sweep: exit 2, nothing changed); with --rounds K on "
                        "a run of fewer rounds, adds the rounds up to K; --variant adds the variants it names")
    r.add_argument("--rounds", type=int_in(1, 100), default=None,
                   help="passes over every point, each in a fresh shuffled order of (batch, seq) cells with a "
                        "cell's variants back to back; each (point, round) its own process (default: the "
                        "suite's `rounds`, else 3: the fewest that give intervals across processes and gate "
                        "verdicts; a run takes about ROUNDS times one round's time; with 1 or 2 the report "
                        "gives estimates only and check does not judge timings)")
    r.add_argument("--threads", type=int_in(1, 4096), default=None,
                   help="torch intra-op threads in every point process (default: the suite's `threads`, "
                        "else 1 on CPU, where more threads spin against any other work on the machine, and "
                        "torch's default on CUDA; with --resume, the run's); recorded in results.json")
    r.add_argument("--retry-failed", nargs="?", const="errors", choices=("errors", "oom"), default=None,
                   help="with --resume: measure again the rounds that failed with status error or killed "
                        "(--retry-failed=oom: also those that ran out of memory or were skipped after an "
                        "OOM); the exit status is 1 while any round is still failing")
    r.add_argument("--variant", action="append", help="run only these variants (repeatable)")
    r.add_argument("--no-report", action="store_true", help="skip writing report.md at the end")
    r.add_argument("--execution", choices=("eager", "compiled"), default=None,
                   help="override the suite's execution (default: the suite's; auto = compiled on CUDA, eager on CPU)")
    r.add_argument("--shard", default=None, metavar="i/N",
                   help="run only the i-th of N balanced shards of the points (1-based: 1/8 .. 8/8); "
                        "combine the shards' runs with `sabench merge`")
    r.add_argument("--devices", default=None, metavar="IDS",
                   help="measure on several GPUs at once: ids like 0,1,3 (positions among the GPUs this "
                        "process sees) or 'all'; one point process per GPU, each pinned to it with "
                        "CUDA_VISIBLE_DEVICES, a round's (batch, seq_len) cell on one GPU; each round "
                        "records its GPU (default: one device, the suite's)")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("merge", help="combine the runs of a suite's shards into one run",
                       description="Combine `sabench run --shard i/N` runs of one suite into one run in --out "
                                   "(results.json and report.md). Shards of different suites, sweeps, model "
                                   "configs or commits are refused; a point in two shards must be identical. "
                                   "Exit 1 when points are missing (they are named; what there is is still "
                                   "written unless --complete).")
    m.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="shard run directories or results.json files")
    m.add_argument("--out", required=True, metavar="DIR", help="directory for the merged run (must hold no run)")
    m.add_argument("--complete", action="store_true", help="write nothing when a point is missing")
    m.add_argument("--no-report", action="store_true", help="skip writing report.md")
    m.set_defaults(func=cmd_merge)

    q = sub.add_parser("quality", help="perplexity per variant, layer attention similarity, SA span advice",
                       description="Perplexity of each variant built from the same checkpoint (no retraining), "
                                   "the baseline's layer-by-layer attention similarity, and the measured SA "
                                   "advice (by default, or with --variant recommended). The baseline is always "
                                   "scored first.")
    q.add_argument("--model", required=True,
                   help="HF model directory (a preset or a directory without safetensors: random weights)")
    q.add_argument("--variant", action="append",
                   help="baseline, native, cla:N, kv:L<-S, sa:A-B[,C-D], joined by +, or 'recommended' (the "
                        "advice's pick within --budget, or its least costly measured plan when none fits); "
                        "repeatable (default: baseline and recommended). The advice runs only for 'recommended'")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="UTF-8 text, encoded with the model directory's tokenizer")
    src.add_argument("--token-ids", metavar="FILE", help="whitespace-separated integer token ids")
    q.add_argument("--seq-len", type=int_in(2, MAX_SIZE), default=None,
                   help="window length (default min(2048, max positions))")
    q.add_argument("--max-windows", type=int_in(1, MAX_SIZE), default=None, help="score at most this many windows")
    q.add_argument("--stride", type=int_in(1, MAX_SIZE), default=None,
                   help="rolling windows as lm-eval-harness scores perplexity: each later window scores "
                        "the next STRIDE tokens with up to --seq-len of context (default: non-overlapping "
                        "windows)")
    q.add_argument("--budget", type=_budget, default=None,
                   help="perplexity increase the advice may spend, e.g. 5%% (default 5%%): the advice "
                        "picks the largest measured saving within it")
    q.add_argument("--kv-advice", action="store_true",
                   help="also advise K/V sharing: nested kv: maps of similar and of dissimilar layer pairs, "
                        "measured head to head, a Pareto set and a pick within --budget")
    q.add_argument("--candidates", type=int_in(0, 1000), default=None,
                   help="candidate SA plans to measure for the advice (default 8; 0: no advice, and the "
                        "default variants are the baseline alone)")
    q.add_argument("--dtype", default=None, help="float32|bfloat16|float16 (default bfloat16 on cuda, "
                                                 "float32 on cpu)")
    q.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda when available)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--out", metavar="DIR", default=None, help="also write DIR/report.md and its PNGs")
    q.set_defaults(func=cmd_quality)

    try:
        from sabench.report.commands import register
    except ImportError:  # pragma: no cover - report extras missing
        pass
    else:
        register(sub)
    from sabench.continuous import register as register_continuous

    register_continuous(sub)
    from sabench.serving.command import register as register_serve, register_fleet

    register_serve(sub)
    register_fleet(sub)
    return p


def _version() -> str:
    from sabench import __version__

    return f"sabench {__version__}"


def main(argv=None) -> int:
    """Run one command; user errors -> one line and 2, Ctrl-C -> one line and 130, bugs propagate."""
    try:
        args = build_parser().parse_args(argv)
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

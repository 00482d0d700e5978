"""The `sabench` command: thin parsing over the library. Exit codes: 0 ok, 1 failed
points or a regression, 2 bad input (one line on stderr, never a traceback)."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise _BadInput(f"{self.prog}: {message}")


class _BadInput(Exception):
    pass


def cmd_inspect(args) -> int:
    from tabulate import tabulate

    from sabench import accounting
    from sabench.dtypes import dtype_name
    from sabench.report.results import human_bytes, human_count, human_flops
    from sabench.presets import resolve_config

    cfg = resolve_config(args.model)
    dtype = dtype_name(args.dtype)
    seq = args.seq_len or min(2048, cfg.max_position_embeddings - 1)
    for v in args.variant or ["baseline"]:  # a bad variant is the likelier mistake: report it first
        accounting.params(cfg, v)
    if seq < 1 or args.batch < 1:
        raise ValueError(f"--batch and --seq-len must be >= 1, got {args.batch} and {seq}")
    if seq + 1 > cfg.max_position_embeddings:
        raise ValueError(f"--seq-len {seq} leaves no room for a decode step within the model's "
                         f"{cfg.max_position_embeddings} positions")
    rows = []
    for v in args.variant or ["baseline"]:
        s = accounting.summary(cfg, v, args.batch, seq, dtype)
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
    base = accounting.summary(cfg, "baseline", args.batch, seq, dtype)
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
    if args.count:
        table.append(["prefill FLOPs, fvcore+handles"] + [human_flops(r["flops_counted"]["prefill"]) for r in rows])
        table.append(["prefill FLOPs, fvcore alone"] + [human_flops(r["flops_counted"]["prefill_fvcore_alone"])
                                                       for r in rows])
    print(f"{cfg.name}: {cfg.num_layers} layers, d_model {cfg.hidden_size}, {cfg.num_heads} heads of "
          f"{cfg.head_dim} ({cfg.attention_kind}), {dtype}; percentages are of baseline")
    print(tabulate(table, headers=["", *[r["variant"] for r in rows]], tablefmt="github"))
    for r in rows:
        print(f"  {r['variant']}: {r['plan']}")
    return EXIT_OK


def cmd_run(args) -> int:
    from sabench.runner import run_suite

    return run_suite(args.suite, out=args.out, resume=args.resume, variants=args.variant,
                     report=not args.no_report, execution=args.execution)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sabench", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    i = sub.add_parser("inspect", help="what a variant costs before anything runs (no weights)")
    i.add_argument("--model", required=True, help="preset, HF model directory or config.json")
    i.add_argument("--variant", action="append", help="baseline, cla:N, sa:A-B[,C-D], joined by +; repeatable")
    i.add_argument("--dtype", default="bfloat16", help="float32|bfloat16|float16 (fp32, bf16, fp16)")
    i.add_argument("--batch", type=int, default=1)
    i.add_argument("--seq-len", type=int, default=None, help="prompt length T (default min(2048, max positions))")
    i.add_argument("--count", action="store_true", help="also count FLOPs with fvcore (meta tensors)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="run a benchmark suite")
    r.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a YAML file")
    r.add_argument("--out", default=None, help="results dir (default reports/<suite>/<timestamp>-<host>)")
    r.add_argument("--resume", action="store_true", help="measure only the points missing from --out")
    r.add_argument("--variant", action="append", help="run only these variants (repeatable)")
    r.add_argument("--no-report", action="store_true", help="skip writing report.md at the end")
    r.add_argument("--execution", choices=("eager", "compiled"), default=None,
                   help="override the suite's execution (default: the suite's; auto = compiled on CUDA, eager on CPU)")
    r.set_defaults(func=cmd_run)

    try:
        from sabench.report.commands import register
    except ImportError:  # pragma: no cover - report extras missing
        pass
    else:
        register(sub)
    return p


def _version() -> str:
    from sabench import __version__

    return f"sabench {__version__}"


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except _BadInput as e:
        print(f"sabench: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError) as e:
        print(f"sabench: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sabench: interrupted", file=sys.stderr)
        return 130


def entry() -> None:  # console script
    sys.exit(main())


if __name__ == "__main__":
    entry()

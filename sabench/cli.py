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

    from sabench import accounting, memory_model
    from sabench.dtypes import dtype_name
    from sabench.plan import parse_variant
    from sabench.report.results import human_bytes, human_count, human_flops
    from sabench.presets import resolve_config

    cfg = resolve_config(args.model)
    dtype = dtype_name(args.dtype)
    seq = args.seq_len or min(2048, cfg.max_position_embeddings - 1)
    # parsed once, here; a bad variant is the likelier mistake: report it first
    plans = [parse_variant(v, cfg.num_layers) for v in args.variant or ["baseline"]]
    if seq < 1 or args.batch < 1:
        raise ValueError(f"--batch and --seq-len must be >= 1, got {args.batch} and {seq}")
    if seq + 1 > cfg.max_position_embeddings:
        raise ValueError(f"--seq-len {seq} leaves no room for a decode step within the model's "
                         f"{cfg.max_position_embeddings} positions")
    if args.prefill_chunk is not None and args.prefill_chunk < 1:
        raise ValueError(f"--prefill-chunk must be >= 1, got {args.prefill_chunk}")
    memory = memory_model.parse_size(args.memory) if args.memory is not None else _local_device_memory()
    rows = []
    for v in plans:
        s = accounting.summary(cfg, v, args.batch, seq, dtype, args.prefill_chunk)
        if memory:
            s["capacity"] = memory_model.capacity(cfg, v, dtype, seq, memory,
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
    base = accounting.summary(cfg, parse_variant("baseline", cfg.num_layers), args.batch, seq, dtype)
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
    if memory:
        table.append([f"max batch ({human_bytes(memory)}, T={seq})"] + [_max_batch_cell(r["capacity"]) for r in rows])
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
    print(tabulate(table, headers=["", *[r["variant"] for r in rows]], tablefmt="github"))
    for r in rows:
        print(f"  {r['variant']}: {r['plan']}")
    return EXIT_OK


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
    from sabench.harness.sweep import run_suite

    return run_suite(args.suite, out=args.out, resume=args.resume, variants=args.variant,
                     report=not args.no_report, execution=args.execution)


def cmd_quality(args) -> int:
    from sabench import quality
    from sabench.report import quality_report

    if args.out is not None:
        quality_report.check_out_dir(args.out)
    result = quality.evaluate(args.model, variants=args.variant, text=args.text, token_ids=args.token_ids,
                              seq_len=args.seq_len, max_windows=args.max_windows, dtype=args.dtype,
                              device=args.device, similarity=args.similarity)
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
    i.add_argument("--model", required=True, help="preset, HF model directory or config.json")
    i.add_argument("--variant", action="append", help="baseline, cla:N, sa:A-B[,C-D], joined by +; repeatable")
    i.add_argument("--dtype", default="bfloat16", help="float32|bfloat16|float16 (fp32, bf16, fp16)")
    i.add_argument("--batch", type=int, default=1)
    i.add_argument("--seq-len", type=int, default=None, help="prompt length T (default min(2048, max positions))")
    i.add_argument("--prefill-chunk", type=int, default=None,
                   help="prefill query block for bytes moved and capacity (default: one block for bytes, "
                        "the largest power of two that fits for capacity)")
    i.add_argument("--memory", default=None,
                   help="device memory for capacity, e.g. 80GiB, 16GB, 512MiB or bytes (default: the local "
                        "CUDA device's total memory; none without a device)")
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

    q = sub.add_parser("quality", help="perplexity per variant, layer attention similarity, SA span advice",
                       description="Perplexity of each variant built from the same checkpoint (no retraining), "
                                   "the baseline's layer-by-layer attention similarity, and the SA spans it "
                                   "recommends. The baseline is always scored first.")
    q.add_argument("--model", required=True,
                   help="HF model directory (a preset or a directory without safetensors: random weights)")
    q.add_argument("--variant", action="append",
                   help="baseline, cla:N, sa:A-B[,C-D], joined by +, or 'recommended' (the recommended SA "
                        "spans); repeatable (default: baseline and recommended)")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="UTF-8 text, encoded with the model directory's tokenizer")
    src.add_argument("--token-ids", metavar="FILE", help="whitespace-separated integer token ids")
    q.add_argument("--seq-len", type=int, default=None, help="window length (default min(2048, max positions))")
    q.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    q.add_argument("--similarity", type=float, default=0.9,
                   help="threshold for the recommended SA spans (default 0.9)")
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

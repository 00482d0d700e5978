"""`sabench quality`: perplexity per variant, layer attention similarity, SA (and K/V) advice."""
from __future__ import annotations

import argparse
import sys

from sabench.argtypes import MAX_SIZE, int_in
from sabench.errors import EXIT_OK, check_output_dir, refuse_run_dir


def add_arguments(p) -> None:
    p.add_argument("--model", required=True,
                   help="HF model directory (a preset or a directory without safetensors: random weights)")
    p.add_argument("--variant", action="append",
                   help="baseline, native, cla:N, kv:L<-S, sa:A-B[,C-D], joined by +, or 'recommended' (the "
                        "advice's pick within --budget, or its least costly measured plan when none fits); "
                        "repeatable (default: baseline and recommended). The advice runs only for 'recommended'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="UTF-8 text, encoded with the model directory's tokenizer")
    src.add_argument("--token-ids", metavar="FILE", help="whitespace-separated integer token ids")
    p.add_argument("--seq-len", type=int_in(2, MAX_SIZE), default=None,
                   help="window length (default min(2048, max positions))")
    p.add_argument("--max-windows", type=int_in(1, MAX_SIZE), default=None, help="score at most this many windows")
    p.add_argument("--stride", type=int_in(1, MAX_SIZE), default=None,
                   help="rolling windows as lm-eval-harness scores perplexity: each later window scores "
                        "the next STRIDE tokens with up to --seq-len of context (default: non-overlapping "
                        "windows)")
    p.add_argument("--budget", type=_budget, default=None,
                   help="perplexity increase the advice may spend, e.g. 5%% (default 5%%): the advice "
                        "picks the largest measured saving within it")
    p.add_argument("--kv-advice", action="store_true",
                   help="also advise K/V sharing: nested kv: maps of similar and of dissimilar layer pairs, "
                        "measured head to head, a Pareto set and a pick within --budget")
    p.add_argument("--candidates", type=int_in(0, 1000), default=None,
                   help="candidate SA plans to measure for the advice (default 8; 0: no advice, and the "
                        "default variants are the baseline alone)")
    p.add_argument("--dtype", default=None, help="float32|bfloat16|float16 (default bfloat16 on cuda, "
                                                 "float32 on cpu)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda when available)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", metavar="DIR", default=None, help="also write DIR/report.md and its PNGs")


def _budget(text: str) -> float:
    from sabench.advice import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args) -> int:
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

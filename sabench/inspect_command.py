"""`sabench inspect`: what a variant costs before anything runs (closed forms, capacity; no weights)."""
from __future__ import annotations

import json

from sabench.argtypes import MAX_SIZE, int_in
from sabench.errors import EXIT_OK, UserError


def add_arguments(p) -> None:
    p.add_argument("--model", help="preset, HF model directory or config.json")
    p.add_argument("--suite", help="take the model, dtype, variants, first batch and seq_len, prefill chunk, "
                                   "memory and parallel settings from a suite (options given override them)")
    p.add_argument("--variant", action="append",
                   help="baseline, native, cla:N, kv:L<-S[,A-B<-S], sa:A-B[,C-D], joined by +; repeatable")
    p.add_argument("--dtype", default=None, help="float32|bfloat16|float16 (fp32, bf16, fp16; default bfloat16)")
    p.add_argument("--batch", type=int_in(1, MAX_SIZE), default=None, help="batch size (default 1)")
    p.add_argument("--seq-len", type=int_in(1, MAX_SIZE), default=None, help="prompt length T (default min(2048, max positions))")
    p.add_argument("--prefill-chunk", type=int_in(1, MAX_SIZE), default=None,
                   help="prefill query block for bytes moved and capacity (default: one block for bytes, "
                        "the largest power of two that fits for capacity)")
    p.add_argument("--memory", default=None,
                   help="device memory for capacity, e.g. 80GiB, 16GB, 512MiB or bytes (default: the local "
                        "CUDA device's total memory; none without a device)")
    p.add_argument("--tp", type=int_in(1, 1024), default=None,
                   help="tensor-parallel degree: per-rank and total figures, all-reduce traffic (default 1)")
    p.add_argument("--link-bandwidth", default=None,
                   help="GPU link bandwidth for the all-reduce floor, e.g. 450GB/s (default: the suite's, "
                        "else NVLink 4's datasheet figure)")
    p.add_argument("--gpu", default=None,
                   help="datasheet peaks for per-rank floors, e.g. 'H100 SXM', 'H200', 'A100 80GB'")
    p.add_argument("--count", action="store_true", help="also count FLOPs with fvcore (meta tensors)")
    p.add_argument("--json", action="store_true")


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
    from sabench.units import parse_bandwidth

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


def run(args) -> int:
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
        [f"KV cache (b={args.batch}, s={seq})"] + [human_bytes(r["kv_cache_bytes"]) for r in rows],
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

"""Closed forms: parameters, KV-cache bytes, FLOPs and bytes moved, for any plan.

Conventions (the README states them too):
- 2 FLOPs per multiply-add; only matrix products are counted here. Norms, RoPE,
  SiLU, softmax and residual adds are elementwise and listed apart by flops.py.
- Causal attention counts the lower triangle: a query at absolute position p
  attends p + 1 keys. A prefill of T tokens from an empty cache has T(T+1)/2
  query-key pairs per head; one decode step at context c has c + 1.
- A layer that computes attention does QK^T and PV; an SA layer does PV only,
  except in a prefill with the ``/recompute`` strategy, where every SA layer runs
  QK^T again (from its source layer's Q and K) and PV in one fused kernel. Decode
  keeps P with either strategy (plan.py).
- Prefill computes logits for the last position only (time to first token);
  a decode step computes logits for its one token.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from sabench.dtypes import dtype_bytes
from sabench.plan import SharingPlan, as_plan
from sabench.presets import ModelConfig, resolve_config


def layer_params(cfg: ModelConfig, lp) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * d, cfg.num_kv_heads * d
    qkv_bias = cfg.qkv_bias or cfg.o_bias
    n = 2 * h  # two RMSNorm weights
    n += 3 * h * cfg.intermediate_size + (2 * cfg.intermediate_size + h if cfg.mlp_bias else 0)
    n += q_out * h + (h if cfg.o_bias else 0)  # o_proj
    if lp.has_q:
        n += h * q_out + (q_out if qkv_bias else 0)
    if lp.has_k:
        n += h * kv_out + (kv_out if qkv_bias else 0)
    if lp.has_v:
        n += h * kv_out + (kv_out if qkv_bias else 0)
    return n


def params(cfg, plan="baseline") -> int:
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    emb = cfg.vocab_size * cfg.hidden_size
    return emb * (1 if cfg.tie_word_embeddings else 2) + cfg.hidden_size + sum(
        layer_params(cfg, lp) for lp in p.layers)


def kv_bytes_per_token(cfg, plan="baseline", dtype="bfloat16") -> int:
    """Bytes the cache holds per token per sequence: K where a layer has K, V where it owns V."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    per_tensor = cfg.num_kv_heads * cfg.head_dim * dtype_bytes(dtype)
    return per_tensor * sum(int(lp.has_k) + int(lp.has_v) for lp in p.layers)


def kv_cache_bytes(cfg, plan, batch_size: int, max_len: int, dtype="bfloat16") -> int:
    return kv_bytes_per_token(cfg, plan, dtype) * batch_size * max_len


class Breakdown:
    """A figure split into parts (the dataclass fields): their total, their sum with another
    breakdown of the same kind part by part, and the dict results.json holds."""

    def parts(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def to_dict(self) -> dict:
        return {**self.parts(), "total": self.total}

    def __add__(self, o):
        if type(o) is not type(self):
            return NotImplemented
        return type(self)(*(a + b for a, b in zip(self.parts().values(), o.parts().values())))


@dataclass(frozen=True)
class Flops(Breakdown):
    projections: int
    attention: int
    mlp: int
    lm_head: int


def _flops(cfg: ModelConfig, plan: SharingPlan, tokens: int, pairs: int, logit_tokens: int,
           recompute_shared: bool = False) -> Flops:
    """tokens: new tokens in the whole batch; pairs: query-key pairs per head, whole batch;
    recompute_shared: SA layers compute QK^T again (prefill with sa_strategy "recompute")."""
    h, d = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * d, cfg.num_kv_heads * d
    proj = attn = 0
    for lp in plan.layers:
        out = q_out  # o_proj (input q_out, output h: same product)
        out += q_out if lp.has_q else 0
        out += kv_out if lp.has_k else 0
        out += kv_out if lp.has_v else 0
        proj += 2 * tokens * h * out
        attn += 2 * cfg.num_heads * pairs * d * (2 if lp.computes_attention or recompute_shared else 1)
    mlp = 2 * tokens * 3 * h * cfg.intermediate_size * cfg.num_layers
    return Flops(proj, attn, mlp, 2 * logit_tokens * h * cfg.vocab_size)


def causal_pairs(q_len: int, context: int = 0) -> int:
    """Query-key pairs of q_len new tokens after `context` cached ones (lower triangle)."""
    return q_len * context + q_len * (q_len + 1) // 2


def prefill_flops(cfg, plan, batch_size: int, seq_len: int, all_logits: bool = False) -> Flops:
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    return _flops(cfg, p, batch_size * seq_len, batch_size * causal_pairs(seq_len),
                  batch_size * (seq_len if all_logits else 1), recompute_shared=p.sa_strategy == "recompute")


def decode_flops(cfg, plan, batch_size: int, context: int) -> Flops:
    """One decode step (one new token per sequence) with `context` tokens already cached."""
    cfg = resolve_config(cfg)
    return _flops(cfg, as_plan(plan, cfg), batch_size, batch_size * (context + 1), batch_size)


def decode_phase_flops(cfg, plan, batch_size: int, context: int, steps: int) -> Flops:
    """`steps` decode steps starting from `context` cached tokens."""
    total = Flops(0, 0, 0, 0)
    for i in range(steps):
        total = total + decode_flops(cfg, plan, batch_size, context + i)
    return total


# ---------------------------------------------------------------- bytes moved
# A floor must be reachable, so bytes are counted as the kernels move them, layer by layer:
# - weights: every weight once per forward (per query block of a chunked prefill, which runs the
#   whole model per block); an untied embedding table is gathered (B x tokens rows of `hidden`),
#   a tied one is read whole as the lm_head;
# - K/V: every layer reads the K and V it attends over (a CLA non-owner re-reads its owner's: layers
#   run one after another and a layer's cache is far larger than L2); an SA layer reads only its V;
#   once per layer per query block; new tokens' K/V are written once;
# - SA: the source layer writes P once and every shared layer reads it (decode: one row per head;
#   prefill "probs": the full B x H x q x S rectangle ops.attn_probs materialises, masked zeros
#   included); prefill "recompute": every shared layer re-reads the source's Q and K instead, no P;
# - not counted: the B x T x hidden activation stream between kernels, norms, logits. The figures
#   are lower bounds of weight, cache and P traffic.
@dataclass(frozen=True)
class Bytes(Breakdown):
    weights: int
    kv_read: int
    kv_write: int
    attention_sharing: int  # P written and read (probs), or the source's Q/K re-read (recompute)


def sa_strategy(plan) -> str:
    """How shared layers get their attention in prefill: "probs" (P materialised) or "recompute"."""
    return getattr(plan, "sa_strategy", "probs")


def chunk_bounds(seq_len: int, chunk_size=None) -> list:
    """(start, end) of each query block of a prefill (one block when chunk_size is None)."""
    step = chunk_size or seq_len
    return [(s, min(s + step, seq_len)) for s in range(0, seq_len, step)]


def weight_bytes_read(cfg, plan, dtype, tokens: int = 1) -> int:
    """Weights one forward over `tokens` tokens (whole batch) reads: each weight once, but an untied
    embedding table only as the gathered rows (tokens x hidden); a tied one is read whole as lm_head."""
    cfg = resolve_config(cfg)
    emb = cfg.vocab_size * cfg.hidden_size
    n = params(cfg, plan) - (0 if cfg.tie_word_embeddings else emb - tokens * cfg.hidden_size)
    return n * dtype_bytes(dtype)


def _attention_bytes(cfg: ModelConfig, p: SharingPlan, batch: int, q_len: int, kv_len: int, e: int,
                     strategy: str) -> Bytes:
    """One forward of q_len new tokens per sequence attending over kv_len positions, weights apart."""
    kv_row = batch * kv_len * cfg.num_kv_heads * cfg.head_dim * e  # one K or V tensor over kv_len
    read = share = 0
    shared = {}
    for lp in p.layers:
        if lp.computes_attention:
            read += 2 * kv_row
        else:
            read += kv_row
            shared.setdefault(lp.attn_source, []).append(lp)
    for src, users in shared.items():
        if strategy == "recompute":
            q_bytes = batch * q_len * cfg.num_heads * cfg.head_dim * e
            share += len(users) * (q_bytes + kv_row)
        else:
            share += (1 + len(users)) * batch * cfg.num_heads * q_len * kv_len * e
    owned = sum(int(lp.has_k) + int(lp.has_v) for lp in p.layers)
    write = owned * batch * q_len * cfg.num_kv_heads * cfg.head_dim * e
    return Bytes(0, read, write, share)


def decode_step_breakdown(cfg, plan, batch_size: int, kv_len: int, dtype) -> Bytes:
    """One decode step whose attention reads kv_len cache positions (the harness reads its whole
    static buffer, masked positions included: pass the buffer length)."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    e = dtype_bytes(dtype)
    att = _attention_bytes(cfg, p, batch_size, 1, kv_len, e, "probs")  # both strategies keep P's row
    return att + Bytes(weight_bytes_read(cfg, p, dtype, batch_size), 0, 0, 0)


def decode_step_bytes(cfg, plan, batch_size: int, kv_len: int, dtype) -> int:
    """Bytes one decode step moves at least (see decode_step_breakdown)."""
    return decode_step_breakdown(cfg, plan, batch_size, kv_len, dtype).total


def prefill_breakdown(cfg, plan, batch_size: int, seq_len: int, dtype, chunk_size=None) -> Bytes:
    """A prefill of seq_len tokens per sequence, in query blocks of chunk_size (None: one block)."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    e = dtype_bytes(dtype)
    total = Bytes(0, 0, 0, 0)
    for start, end in chunk_bounds(seq_len, chunk_size):
        q = end - start
        total = total + _attention_bytes(cfg, p, batch_size, q, end, e, sa_strategy(p))
        total = total + Bytes(weight_bytes_read(cfg, p, dtype, batch_size * q), 0, 0, 0)
    return total


def prefill_bytes(cfg, plan, batch_size: int, seq_len: int, dtype, chunk_size=None) -> int:
    """Bytes a prefill moves at least (see prefill_breakdown)."""
    return prefill_breakdown(cfg, plan, batch_size, seq_len, dtype, chunk_size).total


def summary(cfg, plan, batch_size: int, seq_len: int, dtype="bfloat16", prefill_chunk=None) -> dict:
    """What `sabench inspect --json` prints for one variant."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    pre = prefill_flops(cfg, p, batch_size, seq_len)
    dec = decode_flops(cfg, p, batch_size, seq_len)
    pre_b = prefill_breakdown(cfg, p, batch_size, seq_len, dtype, prefill_chunk)
    dec_b = decode_step_breakdown(cfg, p, batch_size, seq_len + 1, dtype)  # the new token's position too
    return {
        "model": cfg.name,
        "variant": p.variant,
        "plan": p.describe(),
        "dtype": dtype if isinstance(dtype, str) else str(dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "params": params(cfg, p),
        "kv_cache_bytes_per_token": kv_bytes_per_token(cfg, p, dtype),
        "kv_cache_bytes": kv_cache_bytes(cfg, p, batch_size, seq_len, dtype),
        "flops": {"prefill": pre.total, "decode_step": dec.total,
                  "prefill_breakdown": pre.to_dict(), "decode_step_breakdown": dec.to_dict()},
        "bytes_moved": {"prefill": pre_b.total, "decode_step": dec_b.total,
                        "prefill_breakdown": pre_b.to_dict(), "decode_step_breakdown": dec_b.to_dict()},
    }


# ---------------------------------------------------------------- tensor parallelism
# parallel.py shards by KV head: a rank holds H/N query heads, Hkv/N KV heads and I/N of the MLP
# width, with embeddings, norms, lm_head and row-parallel biases whole (replicated). A rank's
# params, cache, FLOPs and bytes are then those of the rank's config (tp_shapes.rank_config); the
# whole system's are N times a rank's (replicated parts counted on every rank that holds them).
# On top, two all-reduces per layer (after o_proj and after down_proj), each of the
# B x tokens x hidden activations; a ring all-reduce sends and receives 2(N-1)/N of that per rank.
# sabench's layers wait for their all-reduce (the next norm reads its result), so the floor
# adds the link time to the compute/memory floor instead of overlapping it.
NVLINK_DATASHEET = {"bytes_per_s": 450e9,
                    "source": "datasheet: NVLink 4 (H100/H200 SXM), 450 GB/s per direction per GPU"}


def all_reduce_bytes(cfg, batch_size: int, tokens: int, dtype, tp: int) -> dict:
    """All-reduce traffic of one forward over `tokens` new tokens per sequence:
    {"payload": bytes all-reduced (2 per layer of B*tokens*hidden), "per_rank": bytes a rank
    sends over its link in a ring all-reduce (2(N-1)/N of the payload; 0 for N = 1)}."""
    cfg = resolve_config(cfg)
    payload = 2 * cfg.num_layers * batch_size * tokens * cfg.hidden_size * dtype_bytes(dtype)
    return {"payload": payload, "per_rank": payload * 2 * (tp - 1) // tp}


def _rank_figures(rank_cfg: ModelConfig, p: SharingPlan, batch: int, seq: int, dtype, chunk, tp: int) -> dict:
    pre_b = prefill_breakdown(rank_cfg, p, batch, seq, dtype, chunk)
    dec_b = decode_step_breakdown(rank_cfg, p, batch, seq + 1, dtype)
    return {
        "params": params(rank_cfg, p),
        "weight_bytes": params(rank_cfg, p) * dtype_bytes(dtype),
        "kv_cache_bytes_per_token": kv_bytes_per_token(rank_cfg, p, dtype),
        "kv_cache_bytes": kv_cache_bytes(rank_cfg, p, batch, seq, dtype),
        "flops": {"prefill": prefill_flops(rank_cfg, p, batch, seq).total,
                  "decode_step": decode_flops(rank_cfg, p, batch, seq).total},
        "bytes_moved": {"prefill": pre_b.total, "decode_step": dec_b.total},
        "link_bytes": {"prefill": all_reduce_bytes(rank_cfg, batch, seq, dtype, tp)["per_rank"],
                       "decode_step": all_reduce_bytes(rank_cfg, batch, 1, dtype, tp)["per_rank"]},
    }


def floor_s(flops: int, nbytes: int, link_bytes: int, peaks: dict, link_bytes_per_s: float) -> dict:
    """One rank's floor: max(FLOPs / peak FLOP/s, bytes / peak bandwidth) + link bytes / link bandwidth."""
    compute = flops / peaks["peak_flops_per_s"]
    memory = nbytes / peaks["peak_bandwidth_bytes_per_s"]
    link = link_bytes / link_bytes_per_s if link_bytes else 0.0
    return {"compute_s": compute, "memory_s": memory, "link_s": link, "floor_s": max(compute, memory) + link}


def tp_summary(cfg, plan, batch_size: int, seq_len: int, dtype, tp: int, prefill_chunk=None,
               link_bandwidth: dict = None, peaks: dict = None) -> dict:
    """Per-rank and total figures of a `tp`-way tensor-parallel point (what inspect --tp shows).

    link_bandwidth: {"bytes_per_s", "source"} (default NVLINK_DATASHEET, labelled so);
    peaks: {"peak_flops_per_s", "peak_bandwidth_bytes_per_s"} of one GPU, for the floors
    (omitted without)."""
    from sabench.tp_shapes import rank_config

    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    link = link_bandwidth or NVLINK_DATASHEET
    rank = _rank_figures(rank_config(cfg, tp), p, batch_size, seq_len, dtype, prefill_chunk, tp)
    total = {k: ({kk: vv * tp for kk, vv in v.items()} if isinstance(v, dict) else v * tp)
             for k, v in rank.items() if k != "kv_cache_bytes_per_token"}
    total["kv_cache_bytes_per_token"] = rank["kv_cache_bytes_per_token"] * tp
    out = {"tensor": tp, "link_bandwidth_bytes_per_s": link["bytes_per_s"],
           "link_bandwidth_source": link["source"], "per_rank": rank, "total": total}
    if peaks:
        out["floors_ms"] = {
            phase: {k.replace("_s", "_ms"): v * 1e3 for k, v in floor_s(
                rank["flops"][phase], rank["bytes_moved"][phase], rank["link_bytes"][phase], peaks,
                link["bytes_per_s"]).items()}
            for phase in ("prefill", "decode_step")}
    return out

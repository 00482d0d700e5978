"""Predicted device memory of a point, and the capacity it implies (largest batch, longest context).

A point's footprint is weights + KV cache + the phase's activation peak + the CUDA context:

- weights: params x dtype bytes (accounting.params: what the plan keeps);
- KV cache: accounting.kv_cache_bytes for the buffer the harness allocates (seq_len + decode_tokens);
- activations, derived from what model.py and ops.py allocate, per query block of the prefill
  (N = batch x block tokens, e = dtype bytes, S = positions the block attends over):
  * the MLP moment of every layer: the layer's input (still held by the caller), the residual
    after attention, the normed input, silu(gate), up and their product: N*e*(3*hidden + 3*inter);
  * an SA source layer (strategy "probs", ops.attn_probs): scores in the dtype, a float32 copy and
    the scaled float32 copy live at once: B*H*q*S*(e + 8) (float32 models: 8, `.float()` is a
    no-op), and P (B*H*q*S*e) stays alive for the rest of the block's layers;
    "recompute" keeps only the source's Q (N*H*d*e);
  * a decode step: B*(3*hidden + 3*inter)*e, the logits, the attention row B*H*S (float32) and
    SA's P row temporaries;
  * a workspace constant (cuBLAS workspaces and small buffers the allocator holds).
  This is the *live* peak: what must fit, because the caching allocator frees its cached blocks
  and retries before it reports out of memory.
- on top, what the driver sees (NVML per process, `memory_bytes.device_peak`): the caching
  allocator keeps freed blocks of other sizes (prefill: ALLOCATOR_CACHE_FACTOR x the dense peak,
  and SA's P blocks of earlier query blocks, simulated with best-fit reuse), after a prefill two
  hidden-state blocks of its largest query block stay reserved during decode, and the CUDA context
  and libraries (CUDA_CONTEXT_BYTES) come on top.

The constants are calibrated on the first H100 runs (torch 2.11+cu130, driver 580, Llama-3.1-8B
and Llama-3.2-1B, sabench 2b61a92; the runs are not in this repository, tests/data holds their readings):
CUDA context = NVML per-process peak minus the allocator's peak reserved, 0.670 GiB in every
prefill and 0.738-0.742 GiB in every decode (CUDA graphs); the workspace = allocated peak minus
tensors at the smallest points. tests/test_capacity.py checks the prediction against every
measured absolute peak of those runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sabench import accounting
from sabench.dtypes import dtype_bytes
from sabench.plan import SharingPlan, as_plan
from sabench.presets import ModelConfig, resolve_config

KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40

# NVML per-process peak minus max_memory_reserved on the H100 runs (torch 2.11+cu130):
# 0.670 GiB in all 36 prefill phases, 0.738-0.742 GiB in all 36 decode phases (CUDA graph).
CUDA_CONTEXT_BYTES = {"prefill": int(0.670 * GiB), "decode": int(0.740 * GiB)}
# Allocated peak minus tensors at the smallest points (cuBLAS workspaces, graph outputs, tables).
WORKSPACE_BYTES = {"prefill": 40 * MiB, "decode": 96 * MiB}
# Reserved / allocated of the dense prefill activations (1.44-1.50 at the large points).
ALLOCATOR_CACHE_FACTOR = 1.5
# Hidden-state blocks of the prefill's largest query block still reserved during decode (observed:
# 2 x B x block x hidden x e + <0.25 GiB at every point of those runs).
DECODE_LEFTOVER_BLOCKS = 2
# CPU: peak RSS of a point process at batch 1 of the `tiny` preset (a forkserver child with torch
# and sabench imported), measured on this repository's CPU machine (torch 2.13): 0.26 GiB. Rough:
# glibc and the CPU allocator are not modelled.
CPU_CONTEXT_BYTES = int(0.25 * GiB)



@dataclass(frozen=True)
class Prediction:
    """One phase's predicted footprint in bytes. `total` is what the driver would show
    (memory_bytes.device_peak); `needed` is what must fit (live tensors + context)."""

    weights: int
    kv_cache: int
    activations: int  # as the driver sees them: live peak + allocator caching
    activations_live: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.context

    @property
    def needed(self) -> int:
        return self.weights + self.kv_cache + self.activations_live + self.context

    def to_dict(self) -> dict:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "context": self.context, "total": self.total, "activations_live": self.activations_live,
                "needed": self.needed}


def _has_probs(p: SharingPlan) -> bool:
    return bool(p.sources_of_attention()) and accounting.sa_strategy(p) == "probs"


def _block_live(cfg: ModelConfig, p: SharingPlan, batch: int, q: int, end: int, e: int) -> tuple:
    """(dense peak, peak with SA) of one prefill block of q tokens attending over `end` positions."""
    n = batch * q
    dense = n * e * (3 * cfg.hidden_size + 3 * cfg.intermediate_size)
    if not p.sources_of_attention():
        return dense, dense
    if not _has_probs(p):  # recompute: the source's Q stays alive for the span
        return dense, dense + n * cfg.num_heads * cfg.head_dim * e
    u = batch * cfg.num_heads * q * end  # elements of P
    source = 2 * n * cfg.hidden_size * e + n * cfg.num_heads * cfg.head_dim * e + u * (8 if e >= 4 else 8 + e)
    return dense, max(dense + u * e, source)


def _probs_reserved(cfg: ModelConfig, batch: int, blocks, e: int) -> int:
    """Bytes the caching allocator reserves for SA's P temporaries over the prefill's blocks:
    ops.attn_probs' allocation sequence replayed with best-fit reuse of freed blocks."""
    free: list = []
    reserved = 0

    def alloc(size):
        nonlocal reserved
        fit = [b for b in free if b >= size]
        if fit:
            free.remove(min(fit))
            return min(fit)
        reserved += size
        return size

    for start, end in blocks[-16:]:  # the largest blocks decide; earlier ones are small
        u = batch * cfg.num_heads * (end - start) * end
        scores = alloc(u * e)
        if e < 4:
            as_float = alloc(4 * u)
            scaled = alloc(4 * u)
            free += [as_float, scores]
        else:
            scaled = alloc(4 * u)
            free.append(scores)
        masked = alloc(4 * u)
        free.append(scaled)
        soft = alloc(4 * u)
        free.append(masked)
        probs = alloc(u * e) if e < 4 else soft
        if e < 4:
            free.append(soft)
        free.append(probs)  # dropped at the end of the block
    return reserved


def _decode_live(cfg: ModelConfig, p: SharingPlan, batch: int, kv_len: int, e: int) -> int:
    per_layer = batch * (3 * cfg.hidden_size + 3 * cfg.intermediate_size) * e
    logits = batch * cfg.vocab_size * (e + 4)
    attn_row = batch * cfg.num_heads * kv_len * 4
    sa = batch * cfg.num_heads * kv_len * (8 + e) if p.sources_of_attention() else 0
    return per_layer + logits + attn_row + sa


def predict(cfg, plan, dtype, batch_size: int, seq_len: int, decode_tokens: int = 1,
            prefill_chunk: Optional[int] = None, device: str = "cuda") -> dict:
    """{"prefill": Prediction, "decode": Prediction} for one point as the point process runs it."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    e = dtype_bytes(dtype)
    cuda = str(device).startswith("cuda")
    weights = accounting.params(cfg, p) * e
    cache = accounting.kv_cache_bytes(cfg, p, batch_size, seq_len + decode_tokens, dtype)
    blocks = accounting.chunk_bounds(seq_len, prefill_chunk)
    # the live peak is at the largest block: the last full one or the final (attends over most)
    dense, live = 0, 0
    for start, end in {blocks[0], blocks[-1], blocks[max(0, len(blocks) - 2)]}:
        d, l_ = _block_live(cfg, p, batch_size, end - start, end, e)
        dense, live = max(dense, d), max(live, l_)
    biggest_block = max(end - start for start, end in blocks)
    if cuda:
        ws, ctx = WORKSPACE_BYTES, CUDA_CONTEXT_BYTES
        probs = _probs_reserved(cfg, batch_size, blocks, e) if _has_probs(p) else 0
        pre_dev = max(int(ALLOCATOR_CACHE_FACTOR * dense) + probs, live)
        leftover = DECODE_LEFTOVER_BLOCKS * batch_size * biggest_block * cfg.hidden_size * e
    else:  # CPU: no caching allocator; the context is the process's RSS before the model
        ws, ctx = {"prefill": 0, "decode": 0}, {"prefill": CPU_CONTEXT_BYTES, "decode": CPU_CONTEXT_BYTES}
        pre_dev, leftover = live, 0
    dec_live = _decode_live(cfg, p, batch_size, seq_len + decode_tokens, e)
    return {
        "prefill": Prediction(weights, cache, pre_dev + ws["prefill"], live + ws["prefill"], ctx["prefill"]),
        "decode": Prediction(weights, cache, dec_live + leftover + ws["decode"], dec_live + ws["decode"],
                             ctx["decode"]),
    }


def needed_bytes(cfg, plan, dtype, batch_size: int, seq_len: int, decode_tokens: int = 1,
                 prefill_chunk: Optional[int] = None, device: str = "cuda") -> int:
    """What must fit for the point to run both phases."""
    pred = predict(cfg, plan, dtype, batch_size, seq_len, decode_tokens, prefill_chunk, device)
    return max(ph.needed for ph in pred.values())


def _chunks(seq_len: int):
    """Candidate query blocks for prefill_chunk="auto": none, then powers of two below seq_len."""
    out, c = [None], 1
    while c < seq_len:
        out.append(c)
        c *= 2
    return [out[0]] + sorted(out[1:], reverse=True)


def _fitting_chunk(cfg, p, dtype, batch, seq_len, decode_tokens, prefill_chunk, memory, device):
    """(fits, chunk): the largest prefill block that lets the point fit (auto), or the one given."""
    candidates = _chunks(seq_len) if prefill_chunk == "auto" else [prefill_chunk]
    for c in candidates:
        if needed_bytes(cfg, p, dtype, batch, seq_len, decode_tokens, c, device) <= memory:
            return True, c
    return False, None


def max_batch(cfg, plan, dtype, seq_len: int, memory: int, decode_tokens: int = 1,
              prefill_chunk="auto", device: str = "cuda") -> tuple:
    """(largest batch that fits in `memory` bytes, the prefill block it needs); (0, None) when
    not even one sequence fits (the weights alone may not)."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)

    def fits(b):
        return _fitting_chunk(cfg, p, dtype, b, seq_len, decode_tokens, prefill_chunk, memory, device)

    if not fits(1)[0]:
        return 0, None
    lo, hi = 1, 2
    while fits(hi)[0]:
        lo, hi = hi, hi * 2
        if hi > 2 ** 30:
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid)[0] else (lo, mid)
    return lo, fits(lo)[1]


def max_seq_len(cfg, plan, dtype, memory: int, batch_size: int = 1, decode_tokens: int = 1,
                prefill_chunk="auto", device: str = "cuda") -> int:
    """Longest prompt (within the model's positions) whose point fits at `batch_size`; 0 if none."""
    cfg = resolve_config(cfg)
    p = as_plan(plan, cfg)
    limit = cfg.max_position_embeddings - decode_tokens

    def fits(t):
        return _fitting_chunk(cfg, p, dtype, batch_size, t, decode_tokens, prefill_chunk, memory, device)[0]

    if limit < 1 or not fits(1):
        return 0
    if fits(limit):
        return limit
    lo, hi = 1, limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def capacity(cfg, plan, dtype, seq_len: int, memory: int, decode_tokens: int = 1, prefill_chunk="auto",
             device: str = "cuda") -> dict:
    """What `sabench inspect --memory` prints per variant."""
    cfg = resolve_config(cfg)
    plan = as_plan(plan, cfg)
    b, chunk = max_batch(cfg, plan, dtype, seq_len, memory, decode_tokens, prefill_chunk, device)
    return {"memory_bytes": int(memory), "max_batch": b, "prefill_chunk": chunk,
            "max_seq_len_at_batch_1": max_seq_len(cfg, plan, dtype, memory, 1, decode_tokens,
                                                  prefill_chunk, device)}

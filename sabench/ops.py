"""The two attention pieces Shared Attention needs explicitly, as registered ops.

A fused kernel (SDPA/flash) never materialises P = softmax(QK^T); SA's source
layer must, so that later layers can apply it to their own V. We register the
two halves as `sabench::attn_probs` and `sabench::attn_apply` custom ops rather
than plain Python so that they show up as single nodes in a trace: the FLOP
counter (flops.py) then counts them with the causal-triangle convention instead
of seeing anonymous matmuls over a masked square.

GQA is handled by viewing the query heads as [kv_heads, group] so no K/V copy is
made (query head h uses kv head h // group, as transformers' repeat_kv does).
"""
from __future__ import annotations

from typing import Optional

import torch


def causal_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    """Bottom-right aligned: query i (at absolute position kv_len - q_len + i) sees keys <= it."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    return torch.arange(kv_len, device=device)[None, :] <= q_pos[:, None]


@torch.library.custom_op("sabench::attn_probs", mutates_args=())
def attn_probs(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor], causal: bool,
               scale: float) -> torch.Tensor:
    """P = softmax(q k^T * scale) over keys allowed by `mask` (bool, True = keep) or causality.

    q: [B, H, T, D]; k: [B, Hkv, S, D] -> P: [B, H, T, S] in q's dtype (softmax in float32).
    """
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    scores = torch.matmul(q.reshape(b, hkv, (h // hkv) * t, d), k.transpose(-1, -2))
    scores = scores.view(b, h, t, s).float() * scale
    if causal:
        mask = causal_mask(t, s, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(q.dtype)


@attn_probs.register_fake
def _attn_probs_fake(q, k, mask, causal, scale):
    return q.new_empty(q.shape[:-1] + (k.shape[-2],))


@torch.library.custom_op("sabench::attn_apply", mutates_args=())
def attn_apply(p: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """out = P v. p: [B, H, T, S]; v: [B, Hkv, S, Dv] -> [B, H, T, Dv].

    `causal` says P is lower-triangular (zeros above the diagonal); the math is the
    same, it only tells the FLOP counter which half is useful work.
    """
    b, h, t, s = p.shape
    hkv, dv = v.shape[1], v.shape[3]
    out = torch.matmul(p.reshape(b, hkv, (h // hkv) * t, s), v)
    return out.view(b, h, t, dv)


@attn_apply.register_fake
def _attn_apply_fake(p, v, causal):
    return p.new_empty(p.shape[:-1] + (v.shape[-1],))

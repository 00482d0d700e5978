"""The building blocks of sabench's Llama-family decoder (model.py): RMSNorm, RoPE, the MLP,
the preallocated KV cache, attention that follows one layer's plan, and the decoder layer.

Module names follow transformers' Llama, so a checkpoint's state dict loads as is.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sabench import ops
from sabench.plan import LayerPlan, SharingPlan
from sabench.presets import ModelConfig


# ---------------------------------------------------------------- building blocks
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back before the weight, as Llama does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling
    if not rs:
        return inv_freq
    # Llama 3.1 scaling: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(medium, blended, scaled)


def rope_tables(inv_freq: torch.Tensor, length: int, dtype: torch.dtype):
    """cos, sin [length, head_dim] for positions 0..length-1, computed in float32, cast to dtype."""
    pos = torch.arange(length, device=inv_freq.device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq.float())
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b)
        self.up_proj = nn.Linear(h, i, bias=b)
        self.down_proj = nn.Linear(i, h, bias=b)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ---------------------------------------------------------------- cache and step context
class KVCache:
    """Preallocated per-owner buffers [B, Hkv, S, D]: K only where a layer has K, V where it owns V,
    and the RoPE tables cos/sin [S, D] of its S positions.

    The tables live here, sized like the buffers, rather than on the model: everything a
    forward reads then has one length S, so a compiled step sees the same shape relations
    for every cache (no recompile when a model serves caches of several lengths).
    """

    def __init__(self, cfg: ModelConfig, plan: SharingPlan, batch_size: int, max_len: int,
                 dtype: torch.dtype, device, inv_freq: torch.Tensor):
        shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) if lp.has_k else None for lp in plan.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) if lp.has_v else None for lp in plan.layers]
        self.cos, self.sin = rope_tables(inv_freq, max_len, dtype)
        self.batch_size, self.max_len = batch_size, max_len

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in self.k + self.v if t is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def slot(self, i: int) -> "KVCache":
        """Sequence i's rows as a batch-1 cache: views, so a prefill through it fills this cache's
        slot i (serving admits a request into a free slot this way) and leaves the others alone."""
        view = copy.copy(self)
        view.k = [None if t is None else t[i: i + 1] for t in self.k]
        view.v = [None if t is None else t[i: i + 1] for t in self.v]
        view.batch_size = 1
        return view

    def layer_buffers(self, lp: LayerPlan):
        """(K, V) buffers a layer attends over (its own, or its KV group owner's); K is None
        for a layer that computes no attention. A layer writes into them iff it owns them."""
        return (self.k[lp.kv_source] if lp.computes_attention else None), self.v[lp.kv_source]


@dataclass
class DecodeStep:
    """What every layer of one forward needs to know about positions and masking: tensors
    and flags only (no Python ints), so a compiled layer never specialises on a length."""

    cos: torch.Tensor  # [T, D]; decode: [B or 1, 1, 1, D]
    sin: torch.Tensor
    write_pos: torch.Tensor  # [T] absolute positions of the new tokens; decode: [B or 1], one per sequence
    mask: Optional[torch.Tensor]  # [T, kv_len] bool (kv_len: cache positions attended over), None when
    # causal; decode: [B or 1, 1, 1, kv_len], each sequence up to its own position
    causal: bool  # a first chunk: kv_len = T
    share_probs: bool  # SA: the source layer hands on P (else its Q and K, for recompute)
    per_sequence: bool = False  # decode: write_pos holds one position per sequence (continuous batching)

    def kv_len(self, t):
        return t if self.causal else self.mask.shape[-1]

    def write(self, buf: torch.Tensor, new: torch.Tensor) -> None:
        """Store the new tokens' K or V [B, Hkv, T, D] at their positions, in place."""
        if self.per_sequence:  # T == 1: sequence b's token goes to its own write_pos[b]
            buf.scatter_(2, self.write_pos.view(-1, 1, 1, 1).expand_as(new), new)
        else:
            buf.index_copy_(2, self.write_pos, new)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, lp: LayerPlan, is_sa_source: bool):
        super().__init__()
        # flags, not the plan: a compiled layer reads only what layers of its kind share
        self.writes_k, self.writes_v = lp.has_k, lp.has_v
        self.computes_attention, self.is_sa_source = lp.computes_attention, is_sa_source
        self.h, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.head_dim ** -0.5
        hid, bias = cfg.hidden_size, cfg.qkv_bias or cfg.o_bias
        if lp.has_q:
            self.q_proj = nn.Linear(hid, self.h * self.d, bias=bias)
        if lp.has_k:
            self.k_proj = nn.Linear(hid, self.hkv * self.d, bias=bias)
        if lp.has_v:
            self.v_proj = nn.Linear(hid, self.hkv * self.d, bias=bias)
        self.o_proj = nn.Linear(self.h * self.d, hid, bias=cfg.o_bias)

    def _heads(self, proj: nn.Linear, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return proj(x).view(b, t, n, self.d).transpose(1, 2)

    def _sdpa(self, q, k, v, st: DecodeStep) -> torch.Tensor:
        """Fused attention that keeps GQA copy-free on every backend.

        Without a mask (causal prefill) `enable_gqa` lets the flash kernel read the shared
        K/V heads directly. With a mask (decode, chunked prefill) no fused CUDA kernel takes
        `enable_gqa` (SDPA would fall back to the math kernel and expand K/V), so the
        query heads of a group are folded into the query axis instead: [B, Hkv, G*T, D]
        against [B, Hkv, S, D] is plain multi-head attention with the mask repeated per head.
        """
        g = self.h // self.hkv
        if st.mask is None or g == 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=st.mask, is_causal=st.causal,
                                                  scale=self.scale, enable_gqa=g > 1)
        b, _, t, d = q.shape
        # one query row (decode) broadcasts over the folded rows; T rows repeat once per group member
        mask = st.mask if st.mask.shape[-2] == 1 else st.mask.repeat(g, 1)
        out = F.scaled_dot_product_attention(q.reshape(b, self.hkv, g * t, d), k, v, attn_mask=mask,
                                             scale=self.scale)
        return out.view(b, self.h, t, v.shape[-1])

    def forward(self, x: torch.Tensor, st: DecodeStep, k_buf: Optional[torch.Tensor], v_buf: torch.Tensor,
                shared=None):
        """k_buf, v_buf: the cache buffers this layer attends over (KVCache.layer_buffers);
        shared: what the SA source layer handed on (P, or its Q and K). Returns (output,
        what this layer hands on: P or (Q, K) for an SA source, else None)."""
        b, t, _ = x.shape
        if self.writes_k:
            st.write(k_buf, apply_rope(self._heads(self.k_proj, x, self.hkv), st.cos, st.sin))
        if self.writes_v:
            st.write(v_buf, self._heads(self.v_proj, x, self.hkv))
        kv_len = st.kv_len(t)
        v = v_buf[:, :, :kv_len]
        handed_on = None
        if self.computes_attention:
            q = apply_rope(self._heads(self.q_proj, x, self.h), st.cos, st.sin)
            k = k_buf[:, :, :kv_len]
            if self.is_sa_source and st.share_probs:  # the paper's SA: P materialised, handed on
                handed_on = ops.attn_probs(q, k, st.mask, st.causal, self.scale)
                out = ops.attn_apply(handed_on, v, st.causal)
            else:
                if self.is_sa_source:  # SA recompute: hand on Q and K, P is never stored
                    handed_on = (q, k)
                out = self._sdpa(q, k, v, st)
        elif st.share_probs:  # Shared Attention: P of the span's source layer applied to this layer's V
            out = ops.attn_apply(shared, v, st.causal)
        else:  # the same P, recomputed by a fused kernel from the source layer's Q and K
            q, k = shared
            out = self._sdpa(q, k, v, st)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.h * self.d)), handed_on


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, lp: LayerPlan, is_sa_source: bool):
        super().__init__()
        self.lp = lp  # read by the model's layer loop, never inside the (compiled) forward
        self.self_attn = Attention(cfg, lp, is_sa_source)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, pending: Optional[torch.Tensor], st: DecodeStep, k_buf, v_buf, shared=None):
        """x: the residual stream before the previous layer's MLP output `pending` is added
        (None for the first layer). Returns (stream, this layer's MLP output, handed on)."""
        if pending is not None:
            x = x + pending
        a, handed_on = self.self_attn(self.input_layernorm(x), st, k_buf, v_buf, shared)
        x = x + a
        return x, self.mlp(self.post_attention_layernorm(x)), handed_on

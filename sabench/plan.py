"""Variant strings -> per-layer sharing plans.

A variant is data, not code: for every layer it says where the layer's K/V come
from and where its attention weights come from. One decoder (``model.py``)
executes any plan, and the closed forms (``accounting.py``) read the same plan.

Grammar (whitespace is ignored)::

    variant := "baseline" | part ("+" part)*
    part    := "baseline" | "cla:" N | "sa:" span ("," span)* [strategy]
    span    := A "-" B          (A <= B, both layer indices, A >= 1)
    strategy:= "/probs" | "/recompute"     (applies to every span of the part)

``cla:N``  groups of N adjacent layers share the K/V of the group's first layer;
           when N does not divide the layer count the remainder group goes
           first (CLA paper, 10 layers with CLA3: 0 | 1,2,3 | 4,5,6 | 7,8,9).
``sa:A-B`` layers A..B reuse the post-softmax attention weights of layer A-1
           (the SA authors' convention: "SA 23~30" shares 23..30 with 22's).

How an SA span executes in prefill (``SharingPlan.sa_strategy``):

``/probs``     (the default; the canonical variant string drops it, so ``sa:2-3``
               and ``sa:2-3/probs`` are one plan) the paper's algorithm: the
               source layer materialises P = softmax(QK^T) and every shared layer
               applies it to its own V (B x H x T x T activations).
``/recompute`` P is never stored: each shared layer runs a fused attention kernel
               on the source layer's (post-RoPE) Q and K and its own V. Same P,
               O(T) memory, QK^T done again per shared layer. Params and cache are
               those of ``/probs`` (no Q/K projection, no K cache in the span).

In decode both strategies keep P: it is one row per head (B x H x context), far
smaller than the K cache a recomputation would read again for every shared layer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

from sabench.errors import UserError


class PlanError(UserError):
    """A variant string that cannot be turned into a plan for this model."""


@dataclass(frozen=True)
class LayerPlan:
    """What one layer computes and keeps.

    kv_source: the layer whose K/V this layer attends over (itself if it owns them).
    attn_source: the layer whose attention weights P this layer applies (itself
        if it computes softmax(QK^T) on its own).
    """

    index: int
    kv_source: int
    attn_source: int

    @property
    def computes_attention(self) -> bool:
        """Has Q (and reads K): computes its own softmax(QK^T)."""
        return self.attn_source == self.index

    @property
    def owns_kv(self) -> bool:
        return self.kv_source == self.index

    @property
    def has_q(self) -> bool:
        return self.computes_attention

    @property
    def has_v(self) -> bool:
        return self.owns_kv

    @property
    def has_k(self) -> bool:
        # An SA layer that owns its KV group needs V only: nobody in a valid plan
        # reads its K (validated in SharingPlan.__post_init__).
        return self.owns_kv and self.computes_attention


SA_STRATEGIES = ("probs", "recompute")


@dataclass(frozen=True)
class SharingPlan:
    variant: str
    layers: Tuple[LayerPlan, ...]
    sa_strategy: str = "probs"  # how SA spans run in prefill: "probs" | "recompute" (module docstring)

    def __post_init__(self):
        n = len(self.layers)
        for lp in self.layers:
            if not (0 <= lp.kv_source <= lp.index and 0 <= lp.attn_source <= lp.index):
                raise PlanError(f"{self.variant!r}: layer {lp.index} takes from a later layer")
        for lp in self.layers:
            src = self.layers[lp.attn_source]
            if not src.computes_attention:
                raise PlanError(
                    f"{self.variant!r}: layer {lp.index} reuses the attention weights of layer "
                    f"{src.index}, which is itself shared; merge the spans into one"
                )
            if lp.computes_attention and not self.layers[lp.kv_source].has_k:
                raise PlanError(
                    f"{self.variant!r}: layer {lp.index} computes attention over the K/V of layer "
                    f"{lp.kv_source}, an attention-sharing layer that keeps no K; "
                    "align the SA span with the CLA groups"
                )
            if not lp.owns_kv and not self.layers[lp.kv_source].owns_kv:
                raise PlanError(f"{self.variant!r}: layer {lp.index} shares K/V with a non-owner")
        if self.sa_strategy not in SA_STRATEGIES:
            raise PlanError(f"{self.variant!r}: unknown SA strategy {self.sa_strategy!r}; "
                            f"expected one of {', '.join(SA_STRATEGIES)}")
        assert n == len({lp.index for lp in self.layers})

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_baseline(self) -> bool:
        return all(lp.owns_kv and lp.computes_attention for lp in self.layers)

    def sources_of_attention(self) -> frozenset:
        """Layers whose P is reused by a later layer (they must materialise P)."""
        return frozenset(lp.attn_source for lp in self.layers if not lp.computes_attention)

    def describe(self) -> str:
        parts = []
        for lp in self.layers:
            s = f"{lp.index}:"
            s += "QKV" if lp.has_k else ("V" if lp.has_v else "")
            if not lp.computes_attention:
                s += f"(P<-{lp.attn_source})"
            elif not lp.owns_kv:
                s += f"Q(KV<-{lp.kv_source})"
            parts.append(s)
        if self.sa_strategy != "probs" and self.sources_of_attention():
            parts.append(f"[SA prefill: {self.sa_strategy}]")
        return " ".join(parts)


_INT = r"[0-9]{1,9}"  # ASCII only (\d would take "２", which int() reads as 2), and bounded
_CLA = re.compile(rf"^cla:(-?{_INT})$")
_SPAN = re.compile(rf"^(-?{_INT})-(-?{_INT})$")


def cla_groups(num_layers: int, factor: int) -> list[list[int]]:
    """Groups of `factor` adjacent layers, the remainder group first."""
    rem = num_layers % factor
    groups, start = [], 0
    if rem:
        groups.append(list(range(rem)))
        start = rem
    for g in range(start, num_layers, factor):
        groups.append(list(range(g, g + factor)))
    return groups


def _parse_cla(part: str, text: str, num_layers: int) -> dict[int, int]:
    m = _CLA.match(part)
    if "/" in part:
        raise PlanError(f"bad CLA part {part!r} in variant {text!r}: a /strategy suffix belongs to the sa part "
                        "(e.g. cla:2+sa:2-3/recompute)")
    if not m:
        raise PlanError(f"bad CLA part {part!r} in variant {text!r}: expected cla:N with N a whole number >= 1")
    factor = int(m.group(1))
    if factor < 1:
        raise PlanError(f"bad CLA factor {factor} in variant {text!r}: the factor must be >= 1")
    if factor > num_layers:
        raise PlanError(
            f"bad CLA factor {factor} in variant {text!r}: the model has only {num_layers} layers"
        )
    kv = {}
    for group in cla_groups(num_layers, factor):
        for layer in group:
            kv[layer] = group[0]
    return kv


def _parse_sa(part: str, text: str, num_layers: int) -> tuple[dict[int, int], str]:
    """-> ({shared layer: source layer}, strategy)."""
    body, slash, strategy = part[len("sa:"):].partition("/")
    if slash and strategy not in SA_STRATEGIES:
        raise PlanError(f"bad SA strategy {'/' + strategy!r} in variant {text!r}: expected "
                        f"{' or '.join('/' + s for s in SA_STRATEGIES)} after the spans, e.g. sa:2-3/recompute")
    if not body:
        raise PlanError(f"empty SA part in variant {text!r}: expected sa:A-B[,C-D...]")
    spans = []
    for span in body.split(","):
        m = _SPAN.match(span)
        if not m:
            raise PlanError(
                f"bad SA span {span!r} in variant {text!r}: expected A-B with layer indices A <= B"
            )
        a, b = int(m.group(1)), int(m.group(2))
        if a > b:
            raise PlanError(f"reversed SA span {span!r} in variant {text!r}: A must be <= B")
        if a < 1:
            raise PlanError(
                f"SA span {span!r} in variant {text!r} starts at layer {a}: layers A..B reuse the "
                f"weights of layer A-1, so A must be >= 1"
            )
        if b >= num_layers:
            raise PlanError(
                f"SA span {span!r} in variant {text!r} is outside the model's layers 0..{num_layers - 1}"
            )
        spans.append((a, b, span))
    spans.sort()
    for (a1, b1, s1), (a2, b2, s2) in zip(spans, spans[1:]):
        if a2 <= b1:
            raise PlanError(f"overlapping SA spans {s1!r} and {s2!r} in variant {text!r}")
        if a2 == b1 + 1:
            raise PlanError(
                f"SA span {s2!r} in variant {text!r} would reuse the weights of layer {b1}, "
                f"which span {s1!r} already shares: write one span {a1}-{b2} instead"
            )
    attn = {}
    for a, b, _ in spans:
        for layer in range(a, b + 1):
            attn[layer] = a - 1
    return attn, strategy or "probs"


def parse_variant(text: str, num_layers: int) -> SharingPlan:
    """Parse a variant string into a plan for a model of `num_layers` layers."""
    if not isinstance(text, str):
        raise PlanError(f"a variant must be a string, got {type(text).__name__} {text!r}")
    if num_layers < 1:
        raise PlanError(f"a model needs at least one layer, got {num_layers}")
    norm = re.sub(r"\s+", "", text).lower()
    if not norm:
        raise PlanError("empty variant string: use 'baseline', 'cla:N' or 'sa:A-B'")
    kv: dict[int, int] = {}
    attn: dict[int, int] = {}
    strategy = "probs"
    seen = set()
    for part in norm.split("+"):
        kind = part.split(":", 1)[0]
        if kind in seen:
            raise PlanError(f"variant {text!r} names {kind!r} twice; join its spans with ',' instead")
        seen.add(kind)
        if part == "baseline":
            continue
        if kind == "cla":
            kv = _parse_cla(part, text, num_layers)
        elif kind == "sa":
            attn, strategy = _parse_sa(part, text, num_layers)
        else:
            raise PlanError(
                f"unknown variant kind {part!r} in {text!r}: expected baseline, cla:N or sa:A-B[,C-D]"
            )
    if "baseline" in seen and len(seen) > 1:
        raise PlanError(f"variant {text!r} combines 'baseline' with a sharing plan; drop 'baseline'")
    layers = tuple(
        LayerPlan(index=i, kv_source=kv.get(i, i), attn_source=attn.get(i, i)) for i in range(num_layers)
    )
    # bare sa:A-B and sa:A-B/probs are one plan with one name (results stay comparable)
    canon = "+".join(p.removesuffix("/probs") for p in norm.split("+"))
    return SharingPlan(variant=canon, layers=layers, sa_strategy=strategy)


def as_plan(plan, num_layers: int) -> SharingPlan:
    """`plan` itself when it is a SharingPlan; a variant string parsed for `num_layers` layers.

    The one place a library call that was handed a string parses it (the harness parses each
    variant once and passes the SharingPlan on)."""
    return plan if isinstance(plan, SharingPlan) else parse_variant(plan, num_layers)

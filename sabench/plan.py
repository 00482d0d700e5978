"""Variant strings -> per-layer sharing plans.

A variant is data, not code: for every layer it says where the layer's K/V come
from and where its attention weights come from. One decoder (``model.py``)
executes any plan, and the closed forms (``accounting.py``) read the same plan.

Grammar (whitespace is ignored)::

    variant := "baseline" | "native" | part ("+" part)*
    part    := "baseline" | "cla:" N | "kv:" entry ("," entry)* | "sa:" span ("," span)* [strategy]
    entry   := layers "<-" S  (layers: L or A-B; they attend over layer S's K/V)
    span    := A "-" B          (A <= B, both layer indices, A >= 1)
    strategy:= "/probs" | "/recompute"     (applies to every span of the part)

``cla:N``  groups of N adjacent layers share the K/V of the group's first layer;
           when N does not divide the layer count the remainder group goes
           first (CLA paper, 10 layers with CLA3: 0 | 1,2,3 | 4,5,6 | 7,8,9).
           Shorthand: it expands to a ``kv:`` map (10 layers, ``cla:3``:
           ``kv:2-3<-1,5-6<-4,8-9<-7``).
``kv:...`` any per-layer K/V source (what serving engines call a layer's KV-sharing
           target): ``kv:20-34<-19`` is a Gemma-3n-style tail, ``kv:1<-0,3<-2`` is
           CLA2 on 4 layers. A target is an earlier layer that keeps its own K/V
           (no chains); every layer has the model's one KV-head shape.
``sa:A-B`` layers A..B reuse the post-softmax attention weights of layer A-1
           (the SA authors' convention: "SA 23~30" shares 23..30 with 22's).
``native`` the layout the model's own config declares (``layouts.py``; baseline
           for a model that declares none).

A plan's name (``SharingPlan.variant``) is computed from the plan, never copied
from the text: one plan, one name. A K/V map that equals ``cla:N`` is named
``cla:N``, any other ``kv:`` with its layers in order and runs merged, SA spans
in order, ``/probs`` dropped; so ``kv:1<-0,3<-2`` on 4 layers *is* ``cla:2``
(and ``cla:1`` is ``baseline``).

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
from dataclasses import dataclass, replace
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
        where = repr(self.variant)
        for lp in self.layers:
            if not 0 <= lp.kv_source <= lp.index:
                raise PlanError(f"{where}: layer {lp.index} takes its K/V from layer {lp.kv_source}, "
                                "not an earlier layer: a K/V target must come before the layer")
            if not 0 <= lp.attn_source <= lp.index:
                raise PlanError(f"{where}: layer {lp.index} takes its attention weights from layer "
                                f"{lp.attn_source}, not an earlier layer")
        for lp in self.layers:
            owner = self.layers[lp.kv_source]
            if not owner.owns_kv:
                raise PlanError(f"{where}: layer {lp.index} takes its K/V from layer {owner.index}, which "
                                f"takes its own from layer {owner.kv_source} (no chains): point layer "
                                f"{lp.index} at layer {owner.kv_source}")
            src = self.layers[lp.attn_source]
            if not src.computes_attention:
                raise PlanError(
                    f"{where}: layer {lp.index} reuses the attention weights of layer "
                    f"{src.index}, which is itself shared; merge the spans into one"
                )
            if lp.computes_attention and not owner.has_k:
                raise PlanError(
                    f"{where}: layer {lp.index} computes attention over the K/V of layer "
                    f"{lp.kv_source}, an attention-sharing layer that keeps no K; "
                    "align the SA span with the CLA groups"
                )
        if self.sa_strategy not in SA_STRATEGIES:
            raise PlanError(f"{where}: unknown SA strategy {self.sa_strategy!r}; "
                            f"expected one of {', '.join(SA_STRATEGIES)}")
        assert [lp.index for lp in self.layers] == list(range(len(self.layers)))

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
_KV_ENTRY = re.compile(rf"^(-?{_INT})(?:-(-?{_INT}))?<-(-?{_INT})$")


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


def _parse_kv(part: str, text: str, num_layers: int) -> dict[int, int]:
    """-> {layer: the earlier layer whose K/V it attends over}; consistency is SharingPlan's."""
    body = part[len("kv:"):]
    if not body:
        raise PlanError(f"empty KV part in variant {text!r}: expected kv:L<-S[,A-B<-S...]")
    if "/" in part:
        raise PlanError(f"bad KV part {part!r} in variant {text!r}: a /strategy suffix belongs to the sa part")
    kv: dict[int, int] = {}
    for entry in body.split(","):
        m = _KV_ENTRY.match(entry)
        if not m:
            raise PlanError(f"bad KV entry {entry!r} in variant {text!r}: expected L<-S or A-B<-S "
                            "(layers L or A..B attend over layer S's K/V)")
        a = int(m.group(1))
        b = a if m.group(2) is None else int(m.group(2))
        src = int(m.group(3))
        if a > b:
            raise PlanError(f"reversed KV range {entry!r} in variant {text!r}: A must be <= B")
        for layer in (a, b, src):
            if not 0 <= layer < num_layers:
                raise PlanError(f"KV entry {entry!r} in variant {text!r} names layer {layer}, outside the "
                                f"model's layers 0..{num_layers - 1}")
        for layer in range(a, b + 1):
            if layer in kv:
                raise PlanError(f"variant {text!r} gives layer {layer} two K/V sources "
                                f"({kv[layer]} and {src})")
            if src >= layer:
                raise PlanError(f"KV entry {entry!r} in variant {text!r}: layer {layer} takes its K/V from "
                                f"layer {src}, not an earlier layer: a K/V target must come before the layer")
            kv[layer] = src
    return kv


def parse_variant(text: str, num_layers: int, native: str | None = None) -> SharingPlan:
    """Parse a variant string into a plan for a model of `num_layers` layers.

    native: the variant string of the model's own layout, what "native" stands for
    (`plan_for` passes the model config's); None: the model's layout is not known here."""
    if not isinstance(text, str):
        raise PlanError(f"a variant must be a string, got {type(text).__name__} {text!r}")
    if num_layers < 1:
        raise PlanError(f"a model needs at least one layer, got {num_layers}")
    norm = re.sub(r"\s+", "", text).lower()
    if not norm:
        raise PlanError("empty variant string: use 'baseline', 'cla:N', 'kv:L<-S' or 'sa:A-B'")
    if norm == "native":
        if native is None:
            raise PlanError(f"variant {text!r} is the model's own layout, which only a model config gives; "
                            "pass the model (plan_for)")
        return parse_variant(native, num_layers)
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
        elif kind == "kv":
            kv = _parse_kv(part, text, num_layers)
        elif kind == "sa":
            attn, strategy = _parse_sa(part, text, num_layers)
        elif kind == "native":
            raise PlanError(f"variant {text!r} combines 'native' with other parts; write the layout out "
                            "(sabench inspect shows it) and add to that")
        else:
            raise PlanError(
                f"unknown variant kind {part!r} in {text!r}: expected baseline, native, cla:N, kv:L<-S "
                "or sa:A-B[,C-D]"
            )
    if "baseline" in seen and len(seen) > 1:
        raise PlanError(f"variant {text!r} combines 'baseline' with a sharing plan; drop 'baseline'")
    if {"cla", "kv"} <= seen:
        raise PlanError(f"variant {text!r} gives K/V sources with both cla: and kv:; write one kv: map")
    layers = tuple(
        LayerPlan(index=i, kv_source=kv.get(i, i), attn_source=attn.get(i, i)) for i in range(num_layers)
    )
    # validated under the text the user wrote, then named from its content
    return name_plan(SharingPlan(variant=text, layers=layers, sa_strategy=strategy))


def plan_from_sources(kv_sources, where: str = "K/V layout") -> SharingPlan:
    """A plan from per-layer K/V sources (layer i attends over layer kv_sources[i]'s), named canonically;
    `where` names the input in errors (e.g. a config field)."""
    layers = tuple(LayerPlan(i, int(k), i) for i, k in enumerate(kv_sources))
    return name_plan(SharingPlan(variant=where, layers=layers))


def name_plan(plan: SharingPlan) -> SharingPlan:
    """`plan` under its canonical name, computed from the plan alone (module docstring)."""
    return replace(plan, variant=canonical_name(plan))


def canonical_name(plan: SharingPlan) -> str:
    n = plan.num_layers
    kv = [lp.kv_source for lp in plan.layers]
    parts = []
    if kv != list(range(n)):
        cla = next((f for f in range(2, n + 1) if kv == _cla_sources(n, f)), None)
        parts.append(f"cla:{cla}" if cla else "kv:" + ",".join(
            f"{a}<-{s}" if a == b else f"{a}-{b}<-{s}" for a, b, s in _runs(kv)))
    attn = [lp.attn_source for lp in plan.layers]
    if attn != list(range(n)):
        spans = ",".join(f"{a}-{b}" for a, b, _ in _runs(attn))
        parts.append(f"sa:{spans}" + ("" if plan.sa_strategy == "probs" else f"/{plan.sa_strategy}"))
    return "+".join(parts) or "baseline"


def _cla_sources(num_layers: int, factor: int) -> list[int]:
    return [g[0] for g in cla_groups(num_layers, factor) for _ in g]


def _runs(sources: list[int]):
    """(first, last, source) of each run of adjacent layers taking from one other layer."""
    runs = []
    for i, s in enumerate(sources):
        if s == i:
            continue
        if runs and runs[-1][1] == i - 1 and runs[-1][2] == s:
            runs[-1] = (runs[-1][0], i, s)
        else:
            runs.append((i, i, s))
    return runs


def plan_for(text: str, cfg) -> SharingPlan:
    """The plan of variant `text` for model `cfg` (a ModelConfig): "native" is the layout its config declares."""
    return parse_variant(text, cfg.num_layers, native=getattr(cfg, "native_variant", "baseline"))


def as_plan(plan, cfg) -> SharingPlan:
    """`plan` itself when it is a SharingPlan; a variant string parsed for model `cfg`.

    The one place a library call that was handed a string parses it (the harness parses each
    variant once and passes the SharingPlan on)."""
    return plan if isinstance(plan, SharingPlan) else plan_for(plan, cfg)

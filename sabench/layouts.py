"""The K/V-sharing layout a model's config.json declares, as a per-layer K/V source map.

Each shipped model writes its layout in a field of its own; each mapping below follows the
convention of the model's own code (cited per function), so `--variant native` runs what the
checkpoint was trained with. The result is a canonical variant string (plan.py), e.g.
Gemma 3n's tail ``kv:20-23<-18,24<-19,...``.

    num_kv_shared_layers  Gemma 3n / 4: the last N layers reuse the last non-shared layer of
                          their attention type (layer_types; one type when the list is absent)
    use_cla + cla_share_factor  Hunyuan: layers i with i % f == 0 compute K/V, the next f-1 reuse them
    kv_reuse_group        Hymba: [[producer, consumer, ...], ...]
    layer_types (a string "0_0_2_2")  LCKV: layer i attends over the K/V of layer int(part i)
    num_key_value_layers  MLKV: that many layers own K/V, spread evenly from layer 0; the others
                          reuse the last one before them
"""
from __future__ import annotations

from typing import Optional

from sabench.plan import PlanError, plan_from_sources
from sabench.values import is_int

# What the closed forms leave out of an architecture sabench reads only the attention shape of
# (model_type -> one clause); inspect prints it beside "cannot run".
LEFT_OUT = {
    "gemma3n": "per-layer embeddings, AltUp, LAuReL, sliding windows (every cache counted at full length), "
               "the vision and audio towers",
    "gemma4": "per-layer embeddings, sliding windows (every cache counted at full length), the wider "
              "global_head_dim and KV heads of full-attention layers, the double-wide MLP of shared layers, MoE",
    "hunyuan": "the MoE experts (the MLP is counted as one dense gated MLP of intermediate_size), QK norm",
    "hymba": "the Mamba heads, meta tokens and sliding windows",
    "gpt_neox": "GPT-NeoX's ungated MLP and biases (counted as a gated MLP), partial rotary",
}


def left_out(model_type: Optional[str]) -> str:
    mt = str(model_type or "")
    key = next((k for k in LEFT_OUT if mt.startswith(k)), None)
    return LEFT_OUT[key] if key else "everything that is not a Llama-shaped attention and gated MLP"


def native_variant(d: dict, num_layers: int, where: str) -> str:
    """The canonical variant string of the layout config dict `d` declares ("baseline": none).

    `where` names the config in errors; a field that declares an impossible layout is refused
    with one line naming the field and the offending layer."""
    found = [(field, fn) for field, fn in _FIELDS if _declares(d, field)]
    if not found:
        return "baseline"
    if len(found) > 1:
        raise PlanError(f"{where}: declares K/V sharing in {' and '.join(f for f, _ in found)}; "
                        "sabench reads one layout, keep one field")
    field, fn = found[0]
    sources = fn(d, num_layers, f"{where}: {field}")
    if len(sources) != num_layers:
        raise PlanError(f"{where}: {field} gives {len(sources)} layers, the model has {num_layers}")
    return plan_from_sources(sources, where=f"{where}: {field}").variant


def _declares(d: dict, field: str) -> bool:
    v = d.get(field)
    if field == "layer_types":  # a list is Gemma's attention types, not LCKV's layout
        return isinstance(v, str)
    if field == "cla_share_factor":
        return bool(d.get("use_cla"))
    if field == "num_kv_shared_layers":
        return v not in (None, 0)
    return v is not None


def _int(v, what: str, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not is_int(v) or not lo <= v <= hi:
        raise PlanError(f"{what} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _gemma_tail(d: dict, n: int, what: str) -> list[int]:
    # transformers' Gemma3nTextAttention (and vLLM's Gemma 4): first = L - num_kv_shared_layers;
    # a layer >= first takes the K/V of the last layer before `first` of its own layer_types entry.
    shared = _int(d.get("num_kv_shared_layers"), what, 0, n - 1)
    first = n - shared
    types = d.get("layer_types")
    if types is None:
        types = ["full_attention"] * n  # a Llama-family model: one attention type
    if not isinstance(types, list) or len(types) != n:
        raise PlanError(f"{what}: layer_types must list one attention type per layer ({n}), got {types!r}")
    sources = list(range(n))
    for i in range(first, n):
        prev = [j for j in range(first) if types[j] == types[i]]
        if not prev:
            raise PlanError(f"{what}: layer {i} ({types[i]}) has no non-shared layer of its type before "
                            f"layer {first} to take K/V from")
        sources[i] = prev[-1]
    return sources


def _hunyuan(d: dict, n: int, what: str) -> list[int]:
    # Hunyuan's HunYuanModel.forward keeps the K/V of layers with layer_idx % cla_share_factor == 0
    # and hands them to the layers after: groups start at layer 0 (unlike cla:N, remainder last).
    f = _int(d.get("cla_share_factor"), what, 1, n)
    return [i - i % f for i in range(n)]


def _hymba(d: dict, n: int, what: str) -> list[int]:
    # Hymba's HymbaModel: {'producer': group[0], 'consumer': group[1:]} for each group.
    groups = d.get("kv_reuse_group")
    if not isinstance(groups, list) or not all(isinstance(g, list) and g for g in groups):
        raise PlanError(f"{what} must be a list of layer lists, e.g. [[1, 2], [3, 4]], got {groups!r}")
    sources = list(range(n))
    for g in groups:
        producer = _int(g[0], what, 0, n - 1)
        for c in g[1:]:
            c = _int(c, what, 0, n - 1)
            if sources[c] != c:
                raise PlanError(f"{what}: layer {c} is in two groups")
            sources[c] = producer
    return sources


def _lckv(d: dict, n: int, what: str) -> list[int]:
    # LCKV's LCKVLlamaConfig: "the i-th integer means the layer will use the key-value pair in the
    # i-th layer"; a trailing "s" marks a sliding-window layer.
    parts = d["layer_types"].split("_")
    if any(p.endswith("s") for p in parts):
        raise PlanError(f"{what}: sliding-window layers ('s') are not modelled; drop the suffix to "
                        "count them as full attention")
    sources = [_int(int(p) if p.isdigit() else p, what, 0, n - 1) for p in parts]
    later = next((i for i, s in enumerate(sources) if s > i), None)
    if later is not None:
        raise PlanError(f"{what}: layer {later} attends over the K/V of a later layer ({sources[later]}), "
                        "which needs LCKV's iterative prefill; sabench models one-pass layouts only")
    return sources


def _mlkv(d: dict, n: int, what: str) -> list[int]:
    # MLKV's GPTNeoXModel: key_value_layers = [0] + [int((i + 1) * (L / m)) for i in range(m - 1)];
    # a layer without K/V takes the passed K/V of the last key-value layer before it.
    if str(d.get("model_type", "")).endswith("swiftkv") or d.get("swiftkv"):
        raise PlanError(f"{what}: SwiftKV's num_key_value_layers computes the tail's K/V from one layer's "
                        "output, not a K/V-sharing layout sabench models")
    m = _int(d.get("num_key_value_layers"), what, 1, n)
    owners = [0] + [int((i + 1) * (n / m)) for i in range(m - 1)]
    return [max(o for o in owners if o <= i) for i in range(n)]


_FIELDS = (
    ("num_kv_shared_layers", _gemma_tail),
    ("cla_share_factor", _hunyuan),
    ("kv_reuse_group", _hymba),
    ("layer_types", _lckv),
    ("num_key_value_layers", _mlkv),
)

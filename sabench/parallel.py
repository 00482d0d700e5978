"""Megatron-style tensor parallelism for sabench's decoder (model.py), any sharing plan.

The same `SharedLlama` runs on every rank; `shard_model` slices a full model's weights
in place so that rank r of N keeps:

- attention, column-parallel: query heads [r*H/N, (r+1)*H/N) and KV heads
  [r*Hkv/N, (r+1)*Hkv/N) of q_proj, k_proj and v_proj (rows of their weights); since query
  head j reads KV head j // (H/Hkv), a rank's query heads read exactly its own KV heads;
- o_proj, row-parallel: the input columns of those query heads, then an all-reduce
  (sum over ranks) of its output;
- MLP: gate_proj and up_proj column-parallel (I/N rows each), down_proj row-parallel
  followed by an all-reduce;
- embeddings, norms and lm_head replicated (every rank computes the full logits).

Sharing plans shard by KV head with nothing else to do: a CLA group's shared cache and an
SA span's shared probabilities P are per head, so each rank keeps and hands on its own
heads' share, and the cache each rank preallocates is 1/N of the whole (the model's
`cfg` becomes the rank's config: H/N heads, Hkv/N KV heads, I/N MLP width).

A row-parallel bias (o_proj with attention_bias, down_proj with mlp_bias) is kept on rank
0 only (zeros elsewhere), so the all-reduced sum adds it once.

The all-reduces are forward hooks on o_proj and down_proj (`torch.distributed.all_reduce`
in place over `group`); with `world == 1` no hook is installed and nothing changes.
"""
from __future__ import annotations

import torch
from torch import nn

from sabench.plan import PlanError
from sabench.tp_shapes import rank_config

ROW_PARALLEL = ("o_proj", "down_proj")
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def shard_slice(kind: str, size: int, rank: int, world: int) -> slice:
    """The part [start, stop) of a dimension of `size` that rank `rank` of `world` keeps."""
    if size % world:
        raise PlanError(f"{kind}: dimension {size} is not divisible by {world} ranks")
    n = size // world
    return slice(rank * n, (rank + 1) * n)


def shard_tensor(name: str, t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """A full model's parameter `name` (state-dict naming) -> the part rank `rank` keeps.

    Column-parallel weights and biases are split along their output rows, row-parallel
    weights along their input columns (their bias stays whole on rank 0, zeros elsewhere);
    anything else is replicated. Usable on checkpoint tensors as they are read.
    """
    parts = name.split(".")
    module, leaf = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", name)
    if world == 1:
        return t
    if module in COLUMN_PARALLEL:
        return t[shard_slice(name, t.shape[0], rank, world)]
    if module in ROW_PARALLEL:
        if leaf == "weight":
            return t[:, shard_slice(name, t.shape[1], rank, world)]
        return t if rank == 0 else torch.zeros_like(t)
    return t


def _all_reduce_hook(group):
    import torch.distributed as dist

    def hook(module, inputs, output):
        dist.all_reduce(output, op=dist.ReduceOp.SUM, group=group)
        return output

    return hook


@torch.no_grad()
def shard_model(model, rank: int, world: int, group=None):
    """Turn a full `SharedLlama` into rank `rank`'s shard of a `world`-way tensor-parallel model,
    in place (works on meta, CPU or CUDA weights); returns the model.

    `group`: the torch.distributed process group of the ranks (None: the default group).
    The all-reduces need an initialised process group only when the model runs.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    full = model.cfg
    local = rank_config(full, world)
    if world == 1:
        model.tp_rank, model.tp_world, model.full_cfg = 0, 1, full
        return model
    if getattr(model, "tp_world", 1) != 1:
        raise ValueError("model is already sharded")
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if not isinstance(module, nn.Linear) or leaf not in COLUMN_PARALLEL + ROW_PARALLEL:
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            setattr(module, pname, nn.Parameter(
                shard_tensor(f"{name}.{pname}", p, rank, world).clone(), requires_grad=False))
        module.out_features, module.in_features = module.weight.shape
        if leaf in ROW_PARALLEL:
            module.register_forward_hook(_all_reduce_hook(group))
    for layer in model.model.layers:
        layer.self_attn.h, layer.self_attn.hkv = local.num_heads, local.num_kv_heads
    model.cfg, model.full_cfg = local, full
    model.tp_rank, model.tp_world, model.tp_group = rank, world, group
    return model


def load_tp_model(source, variant="baseline", dtype=torch.bfloat16, device="cuda", rank: int = 0,
                  world: int = 1, group=None, weights: str = "auto", seed: int = 0):
    """Rank `rank`'s shard of a `world`-way tensor-parallel model, built on meta and materialised
    on `device` at its shard's size (no full model in memory), as model.load_model does for one device.

    weights="auto": a model directory's safetensors, each tensor sliced for this rank as it is read;
    otherwise (a preset, or weights="random") random weights: this rank's slices of the very
    weights `SharedLlama.init_random(seed)` gives the full model on that device type, so a TP-N
    model computes what the TP-1 model of the same seed does.
    """
    from sabench.model import build_model, load_weights, rope_inv_freq
    from sabench.presets import resolve_config, weight_files

    if weights not in ("auto", "random"):
        raise ValueError(f"weights must be 'auto' or 'random', got {weights!r}")
    cfg = resolve_config(source)
    files = weight_files(source) if weights == "auto" and cfg.source != "preset" else []
    m = shard_model(build_model(cfg, variant, dtype, "meta"), rank, world, group)
    m = m.to_empty(device=device)
    m.inv_freq = rope_inv_freq(cfg).to(m.inv_freq.device)
    def keep(name, t):  # this rank's part of a whole tensor, read from the checkpoint or drawn
        return shard_tensor(name, t, rank, world)

    if files:
        m.load_report = load_weights(m, files, transform=keep)
    else:
        m.init_random(seed=seed, shard=keep)
    return m


"""Tensor-parallel shapes without torch: which degrees a model allows and what one rank runs.

sabench.parallel shards a model by these rules; accounting and the suite read them too.
"""
from __future__ import annotations

from dataclasses import replace

from sabench.plan import PlanError
from sabench.presets import ModelConfig


def check_tensor_parallel(cfg: ModelConfig, world: int) -> None:
    """PlanError naming the numbers when `cfg` cannot be split over `world` ranks."""
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise PlanError(f"tensor-parallel degree must be an integer >= 1, got {world!r}")
    problems = []
    if cfg.num_kv_heads % world:
        problems.append(f"its {cfg.num_kv_heads} KV heads")
    if cfg.num_heads % world:
        problems.append(f"its {cfg.num_heads} attention heads")
    if cfg.intermediate_size % world:
        problems.append(f"its MLP width (intermediate_size) {cfg.intermediate_size}")
    if problems:
        divisors = [n for n in range(1, cfg.num_kv_heads + 1)
                    if not (cfg.num_kv_heads % n or cfg.num_heads % n or cfg.intermediate_size % n)]
        raise PlanError(
            f"model {cfg.name!r} cannot be split over {world} tensor-parallel ranks: "
            f"{', '.join(problems[:-1]) + ' and ' if len(problems) > 1 else ''}{problems[-1]} "
            f"{'is' if len(problems) == 1 else 'are'} not divisible by {world} "
            f"(sabench shards by KV head); use a degree among {', '.join(map(str, divisors))}")


def rank_config(cfg: ModelConfig, world: int) -> ModelConfig:
    """The shape one rank of `world` runs: heads, KV heads and MLP width divided by `world`."""
    check_tensor_parallel(cfg, world)
    if world == 1:
        return cfg
    return replace(cfg, num_heads=cfg.num_heads // world, num_kv_heads=cfg.num_kv_heads // world,
                   intermediate_size=cfg.intermediate_size // world)


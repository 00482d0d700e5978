"""Tensor-parallel shapes without torch: which degrees a model allows, what one rank runs, link speeds.

sabench.parallel shards a model by these rules; accounting and the suite read them too.
"""
from __future__ import annotations

from dataclasses import replace

from sabench.errors import UserError
from sabench.plan import PlanError
from sabench.presets import ModelConfig
from sabench.units import parse_size


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


def parse_bandwidth(value) -> float:
    """'450GB/s', '900 GiB/s' or a plain number of bytes per second -> bytes/s; ValueError otherwise."""
    if isinstance(value, str):
        try:  # YAML reads 4.5e11 (no sign in the exponent) as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0 and value != float("inf"):
            return float(value)
        raise UserError(f"bad bandwidth {value!r}: must be more than 0 bytes/s")
    text = str(value).strip()
    if not text.lower().endswith("/s"):
        raise UserError(f"bad bandwidth {value!r}: expected bytes per second, e.g. 450GB/s or 4.5e11")
    try:
        return float(parse_size(text[:-2]))
    except ValueError:
        raise UserError(f"bad bandwidth {value!r}: expected a number with B, KB/KiB, MB/MiB, GB/GiB or TB/TiB "
                         "and /s, e.g. 450GB/s") from None

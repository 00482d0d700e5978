"""Shards of a suite's point grid: `sabench run SUITE --shard i/N` runs the i-th of N.

Shards are numbered from 1 (`--shard 1/8` .. `--shard 8/8`, as a Slurm array's
`$SLURM_ARRAY_TASK_ID` with `--array=1-8`). `shard_points` is a pure function of the points,
the shard and the cost of each point: every machine computes the same split, the N shards are
disjoint and together hold every point, and they are balanced by estimated cost with greedy
longest-processing-time (LPT): points by descending cost (ties: suite order), each to the
least-loaded shard (ties: the lower shard). Bound: the most- and least-loaded shards differ by
at most the costliest single point (the last point the fullest shard received went to the then
least-loaded shard), and the fullest is within 4/3 of the best possible split (Graham 1969).

The cost of a point (`point_cost`) is its analytic FLOPs, prefill plus every decode step
(sabench.accounting): what dominates a point's time once the model is built. It is an
estimate for balancing only; nothing is measured with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, TypeVar
from sabench.errors import UserError

P = TypeVar("P")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 100_000


@dataclass(frozen=True)
class Shard:
    """The `index`-th (1-based) of `count` shards."""
    index: int
    count: int

    def __post_init__(self):
        if not (1 <= self.count <= MAX_SHARDS and 1 <= self.index <= self.count):
            raise ValueError(f"shard {self.index}/{self.count}: expected 1 <= i <= N <= {MAX_SHARDS}")

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_dict(cls, d) -> "Shard":
        """From a results file's `shard` ({index, count}); ValueError if it is not one."""
        if not isinstance(d, dict) or not all(type(d.get(k)) is int for k in ("index", "count")):
            raise ValueError(f"expected {{index: int, count: int}}, got {d!r}")
        return cls(d["index"], d["count"])


def parse_shard(text: str) -> Shard:
    """'2/8' -> Shard(2, 8); ValueError with what is allowed otherwise (the CLI exits 2 on it)."""
    m = _SHARD.match(str(text))
    if not m:
        raise UserError(f"--shard {text!r}: expected i/N with 1 <= i <= N, e.g. 1/8 (shards count from 1)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or n > MAX_SHARDS:
        raise UserError(f"--shard {text!r}: N must be between 1 and {MAX_SHARDS}")
    if not 1 <= i <= n:
        raise UserError(f"--shard {text!r}: i must be between 1 and N={n} (shards count from 1, not 0)")
    return Shard(i, n)


def assign(costs: Sequence[float], count: int) -> List[int]:
    """LPT: the 0-based shard of each item, deterministic (ties broken by item order, then shard)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    for c in costs:
        if not c >= 0:  # also refuses NaN
            raise ValueError(f"a point's cost must be a number >= 0, got {c!r}")
    loads = [0.0] * count
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        s = min(range(count), key=lambda s: (loads[s], s))
        out[i] = s
        loads[s] += costs[i]
    return out


def shard_points(points: Sequence[P], index: int, count: int, cost: Callable[[P], float]) -> List[P]:
    """The points of shard `index` (1-based) of `count`, in their order in `points`."""
    Shard(index, count)
    where = assign([float(cost(p)) for p in points], count)
    return [p for p, s in zip(points, where) if s == index - 1]


def point_cost(suite) -> Callable:
    """A suite's cost of a point: analytic FLOPs of its prefill and all its decode steps.

    A `batch_size: max` point is costed at the sweep's largest explicit batch (1 if none).
    """
    from sabench.accounting import decode_flops, prefill_flops

    cfg, plans = suite.model_config, suite.plans
    explicit = [b for b in suite.batch_sizes if isinstance(b, int)]
    big = max(explicit, default=1)

    def cost(p) -> float:
        b = p.batch_size if isinstance(p.batch_size, int) else big
        plan = plans[p.variant]
        decode = decode_flops(cfg, plan, b, p.seq_len + suite.decode_tokens // 2).total * suite.decode_tokens
        return float(prefill_flops(cfg, plan, b, p.seq_len).total + decode)

    return cost


def suite_shard(suite, points: list, shard: Optional[Shard]) -> list:
    """The points this run measures: all of them, or those of `shard`."""
    if shard is None:
        return points
    return shard_points(points, shard.index, shard.count, point_cost(suite))


def check_resume(old: Optional[dict], shard: Optional[Shard], path) -> None:
    """--resume must continue the same shard the file was started with (`old`: the file's `shard`)."""
    new = shard.to_dict() if shard else None
    if old != new:
        def show(d):
            return f"shard {d['index']}/{d['count']}" if isinstance(d, dict) else "the whole suite"
        raise UserError(f"--resume: {path} holds {show(old)}, this run asks for {show(new)}; "
                         "pass the same --shard, or use another --out")

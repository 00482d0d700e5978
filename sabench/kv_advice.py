"""K/V-sharing advice that measures (`sabench quality --kv-advice`): which layers may take an
earlier layer's K/V on this checkpoint, with no retraining.

1. **Similarity** (`kv_similarity`): the baseline prefills the first windows; for every pair of
   layers, the mean cosine of their cached (post-RoPE) K vectors and of their V vectors, per
   token and KV head, averaged: an L x L matrix.
2. **Candidates** (`greedy_maps`): nested K/V maps, one sharing layer more each step. A step
   points a layer that keeps its K/V and that no other layer reads (no chains) at an earlier
   owner. Two strategies choose the pair:
   - ``similar``: the most similar pair (the neighbour-sharing intuition behind CLA);
   - ``dissimilar``: the least similar pair (published post-hoc work reports that sharing between
     dissimilar layers can cost less perplexity).
   Every step removes one layer's K/V, so both sequences save the same at each length.
3. **Measurement** (`advise_kv`): the perplexity of the ``similar`` plans that a bisection for the
   budget picks (advice.to_measure), and of the ``dissimilar`` plans of the same lengths, so the
   two strategies are compared head to head on the user's text. The Pareto set is taken over both;
   the pick is the largest saving whose measured increase is within the budget; without one, the
   smallest increase measured is reported.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable, List

import torch

from sabench import advice as sa_advice
from sabench.plan import plan_from_sources

STRATEGIES = ("similar", "dissimilar")
SIMILARITY_WINDOWS = 2  # windows prefilled for the K/V similarity


@torch.no_grad()
def kv_similarity(model, inputs: torch.Tensor) -> List[List[float]]:
    """L x L mean cosine of the layers' cached K (and V) vectors over `inputs` [n, T] (plan: baseline)."""
    ids = inputs[:SIMILARITY_WINDOWS]
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    model.prefill(ids, cache)
    n = model.cfg.num_layers

    def unit(t):  # [B, Hkv, T, d] -> unit vectors, float32
        t = t.float()
        return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    ks = [unit(cache.k[i]) for i in range(n)]
    vs = [unit(cache.v[i]) for i in range(n)]
    sim = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            s = 0.5 * ((ks[i] * ks[j]).sum(-1).mean() + (vs[i] * vs[j]).sum(-1).mean()).item()
            sim[i][j] = sim[j][i] = s
    return sim


def greedy_maps(sim, strategy: str) -> List[dict]:
    """The nested K/V maps of `strategy`, smallest first: [{variant, sources, predicted_cost}].

    predicted_cost: the sum over sharing layers of 1 - sim[target][layer] (what the "similar"
    strategy minimises step by step; "dissimilar" takes the largest term instead)."""
    n = len(sim)
    sources = list(range(n))
    cost, out = 0.0, []
    while True:
        read = {s for i, s in enumerate(sources) if s != i}
        moves = [(1.0 - float(sim[t][j]), j, t) for j in range(1, n) if sources[j] == j and j not in read
                 for t in range(j) if sources[t] == t]
        if not moves:
            return out
        # ties: the lower layer, then the nearer target, first
        pick = (min(moves, key=lambda m: (round(m[0], 6), m[1], -m[2])) if strategy == "similar"
                else min(moves, key=lambda m: (-round(m[0], 6), m[1], -m[2])))
        c, j, t = pick
        sources[j] = t
        cost += max(0.0, c)
        out.append({"variant": plan_from_sources(sources).variant, "sources": list(sources),
                    "predicted_cost": round(cost, 6)})


def advise_kv(cfg, sim, measure: Callable[[str], float], base_ppl: float, *, seq_len: int, dtype: str,
              budget: float = sa_advice.DEFAULT_BUDGET, candidates: int = sa_advice.DEFAULT_CANDIDATES) -> dict:
    """Both strategies' measured maps, their Pareto set, the pick within `budget` (module docstring)."""
    sav = sa_advice.Savings(cfg, seq_len, dtype)
    plans = {s: greedy_maps(sim, s) for s in STRATEGIES}
    rows = {s: {} for s in STRATEGIES}

    def row(strategy: str, i: int) -> sa_advice.Measured:
        p = plans[strategy][i]
        if p["variant"] not in rows[strategy]:
            ppl = measure(p["variant"])
            fr = sav.of(p["variant"])
            rows[strategy][p["variant"]] = sa_advice.Measured(
                p["variant"], i + 1, p["predicted_cost"], fr["saving"], fr["decode_bytes"], fr["prefill_flops"],
                fr["kv_bytes"], ppl, ppl / base_ppl - 1.0)
        return rows[strategy][p["variant"]]

    count = len(plans["similar"])
    idx = sa_advice.to_measure(count, lambda i: row("similar", i).increase <= budget, max(1, candidates // 2))
    # the two sequences may end at different lengths (a step may leave no legal pair): compare where both reach
    idx = [i for i in idx if i < len(plans["dissimilar"])]
    for i in idx:
        row("dissimilar", i)
    measured = [(s, r) for s in STRATEGIES for r in sorted(rows[s].values(), key=lambda r: r.shared_layers)]
    for r in sa_advice.pareto([r for _, r in measured]):
        r.pareto = True
    ok = [(s, r) for s, r in measured if r.increase <= budget]
    pick = max(ok, key=lambda sr: (sr[1].saving, -sr[1].increase)) if ok else None
    finite = [(s, r) for s, r in measured if r.increase == r.increase]
    least = min(finite, key=lambda sr: sr[1].increase) if finite else None
    head_to_head = [{"shared_layers": i + 1, **{s: rows[s][plans[s][i]["variant"]].increase for s in STRATEGIES}}
                    for i in idx]
    return {
        "budget": budget, "candidates": {s: len(plans[s]) for s in STRATEGIES},
        "similarity": [[round(x, 6) for x in r] for r in sim],
        "measured": [dict(asdict(r), strategy=s) for s, r in measured],
        "head_to_head": head_to_head,
        "cheaper_strategy": _cheaper(head_to_head),
        "pick": pick[1].variant if pick else None,
        "pick_strategy": pick[0] if pick else None,
        "smallest_increase": ({"variant": least[1].variant, "strategy": least[0], "increase": least[1].increase}
                              if least else None),
        "saving_definition": sa_advice.Savings.DEFINITION.format(seq_len=seq_len),
    }


def _cheaper(head_to_head: List[dict]) -> str | None:
    """The strategy whose measured increase is lower at more of the common lengths (None: a tie)."""
    wins = {s: sum(1 for h in head_to_head if h[s] < h[o]) for s, o in (STRATEGIES, STRATEGIES[::-1])}
    if wins["similar"] == wins["dissimilar"]:
        return None
    return max(wins, key=wins.get)


def pick_line(adv) -> str:
    """One line for the terminal."""
    if not adv or not adv["candidates"]["similar"]:
        return "KV advice: none (the model has no layer that can share)"
    pct = f"{adv['budget'] * 100:g}%"
    cheaper = adv["cheaper_strategy"] or "neither (a tie)"
    if adv["pick"] is None:
        least = adv["smallest_increase"]
        return (f"KV advice (budget {pct}): no measured map stays within the budget (smallest increase "
                f"{least['increase']:+.2%}, {least['variant']}, {least['strategy']}); cheaper here: {cheaper}")
    m = next(r for r in adv["measured"] if r["variant"] == adv["pick"] and r["strategy"] == adv["pick_strategy"])
    return (f"KV advice (budget {pct}): \"{m['variant']}\" ({m['strategy']} pairs) saves {m['saving']:.1%}, "
            f"KV bytes {m['kv_bytes_saving']:.1%}, measured perplexity {m['increase']:+.2%}; cheaper here: {cheaper}")

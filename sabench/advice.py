"""SA span advice that selects: candidate plans ranked by predicted cost per unit of saving, then
measured, a Pareto set, and the largest saving within a perplexity budget (docs/quality.md).

1. **Candidates** (`greedy_plans`): nested SA plans, each one shared layer more than the last.
   A step starts a one-layer span `a-a` (source a-1), extends a span `A-B` to `A-(B+1)` (source
   still A-1) or to `(A-1)-B` (source A-2); the plans are always contiguous spans `sa` accepts.
   A plan's predicted perplexity cost is the sum over its shared layers of 1 - sim[source][layer]
   (the measured mean cosine of the two layers' attention probabilities), a move's saving the
   change of `saving()` (decode bytes and prefill FLOPs from accounting.py), and the move with
   the least added cost per unit of saving is taken. Moves that save nothing (a new span whose
   stored P costs more than it saves) are never taken.
2. **Measurement** (`advise`): the perplexity of candidate plans on the same windows. With few
   candidates all are measured; otherwise a bisection over the nested sequence finds the largest
   plan whose measured increase is within the budget (log2 of the layer count forwards), and
   the rest of the allowance measures evenly spaced plans for the Pareto picture.
3. **Pareto set and pick**: measured plans no other beats on both saving and increase; the pick
   is the largest saving whose measured relative increase is within the budget. It is the one
   recommendation of `sabench quality`: `--variant recommended` scores it, or, when no measured
   plan is within the budget, the least costly measured plan, labelled as over budget.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple
from sabench.errors import UserError

DEFAULT_BUDGET = 0.05  # relative perplexity increase allowed for the pick (docs/quality.md)
DEFAULT_CANDIDATES = 8  # plans measured at most

Span = Tuple[int, int]


def plan_string(spans: Sequence[Span]) -> str:
    return "sa:" + ",".join(f"{a}-{b}" for a, b in sorted(spans))


def parse_budget(text) -> float:
    """'5%' or '5' -> 0.05: a relative perplexity increase, in percent."""
    s = str(text).strip()
    try:
        value = float(s[:-1] if s.endswith("%") else s) / 100.0
    except ValueError:
        raise UserError(f"--budget {text!r}: expected a percentage such as 5% or 0.5%") from None
    if not value >= 0 or value == float("inf"):
        raise UserError(f"--budget {text!r}: expected a percentage >= 0, such as 5%")
    return value


# ---------------------------------------------------------------- savings
class Savings:
    """Fractions of the baseline's decode-step bytes, prefill FLOPs and KV bytes a plan saves,
    at batch 1 and context `seq_len` (cached per plan string)."""

    DEFINITION = ("mean of the fractions of decode-step bytes (batch 1, context {seq_len}) and prefill FLOPs "
                  "(batch 1, {seq_len} tokens) saved")

    def __init__(self, cfg, seq_len: int, dtype: str):
        from sabench import accounting

        self.cfg, self.seq_len, self.dtype, self._acc = cfg, seq_len, dtype, accounting
        self._base = self._raw("baseline")
        self._cache = {}

    def _raw(self, variant: str) -> dict:
        a = self._acc
        return {"decode_bytes": a.decode_step_bytes(self.cfg, variant, 1, self.seq_len, self.dtype),
                "prefill_flops": a.prefill_flops(self.cfg, variant, 1, self.seq_len).total,
                "kv_bytes": a.kv_bytes_per_token(self.cfg, variant, self.dtype)}

    def of(self, variant: str) -> dict:
        if variant not in self._cache:
            raw = self._raw(variant)
            fr = {k: 1.0 - raw[k] / self._base[k] for k in raw}
            fr["saving"] = (fr["decode_bytes"] + fr["prefill_flops"]) / 2  # the ranking's one number
            self._cache[variant] = fr
        return self._cache[variant]


# ---------------------------------------------------------------- candidates
def _moves(spans: List[Span], n: int):
    """(new spans, added layer) for every legal one-layer growth of `spans`."""
    shared = {layer for a, b in spans for layer in range(a, b + 1)}
    starts = {a for a, _ in spans}
    for i, (a, b) in enumerate(spans):
        c = b + 1  # extend at the end (source still a-1): c must not be another span's source
        if c < n and c not in shared and c + 1 not in starts:
            yield spans[:i] + [(a, c)] + spans[i + 1:], c
        if a >= 2 and a - 2 not in shared:  # extend at the start: the source a-1 becomes shared, a-2 the source
            yield spans[:i] + [(a - 1, b)] + spans[i + 1:], a - 1
    for a in range(1, n):  # a new span a-a: a free, its source a-1 free, a not another span's source
        if a not in shared and a - 1 not in shared and a + 1 not in starts:
            yield sorted(spans + [(a, a)]), a


def predicted_cost(sim, spans: Sequence[Span]) -> float:
    """Sum over shared layers of 1 - sim[source][layer] (each term rounded to 1e-6, so float noise
    does not decide a tie)."""
    return sum(max(0.0, round(1.0 - float(sim[a - 1][layer]), 6)) for a, b in spans for layer in range(a, b + 1))


def greedy_plans(sim, savings: Callable[[str], float]) -> List[dict]:
    """The nested candidate plans, smallest first: [{variant, spans, predicted_cost, saving}]."""
    n = len(sim)
    spans: List[Span] = []
    current, cost, out = 0.0, 0.0, []
    while True:
        best = None
        for new, layer in _moves(spans, n):
            gain = savings(plan_string(new)) - current
            if gain <= 0:
                continue
            c = predicted_cost(sim, new)
            key = ((c - cost) / gain, layer)  # ties: the lower layer first
            if best is None or key < best[0]:
                best = (key, new, c, gain)
        if best is None:
            return out
        _, spans, cost, gain = best
        current += gain
        out.append({"variant": plan_string(spans), "spans": list(spans), "predicted_cost": cost,
                    "saving": current})


def to_measure(count: int, within: Callable[[int], bool], allowance: int) -> List[int]:
    """Indices (0-based) of the nested plans to measure: all when they fit the allowance, else a
    bisection for the largest plan within the budget, then evenly spaced ones."""
    if count <= allowance:
        for i in range(count):
            within(i)
        return list(range(count))
    done = []
    lo, hi = -1, count  # plans <= lo are within, >= hi are not (assuming monotone increase)
    while hi - lo > 1 and len(done) < allowance:
        mid = (lo + hi) // 2
        done.append(mid)
        if within(mid):
            lo = mid
        else:
            hi = mid
    for k in range(1, allowance + 1):
        if len(done) >= allowance:
            break
        i = round(k * (count - 1) / allowance)
        if i not in done:
            within(i)
            done.append(i)
    return sorted(done)


@dataclass
class Measured:
    variant: str
    shared_layers: int
    predicted_cost: float
    saving: float
    decode_bytes_saving: float
    prefill_flops_saving: float
    kv_bytes_saving: float
    perplexity: float
    increase: float  # relative to the baseline's perplexity
    pareto: bool = False


def advise(cfg, sim, measure: Callable[[str], float], base_ppl: float, *, seq_len: int, dtype: str,
           budget: float = DEFAULT_BUDGET, candidates: int = DEFAULT_CANDIDATES) -> dict:
    """The advice: measured candidate plans, their Pareto set, and the pick within `budget`."""
    sav = Savings(cfg, seq_len, dtype)
    plans = greedy_plans(sim, lambda v: sav.of(v)["saving"])
    measured = {}

    def within(i: int) -> bool:
        p = plans[i]
        if p["variant"] not in measured:
            ppl = measure(p["variant"])
            fr = sav.of(p["variant"])
            measured[p["variant"]] = Measured(
                p["variant"], sum(b - a + 1 for a, b in p["spans"]), p["predicted_cost"], fr["saving"],
                fr["decode_bytes"], fr["prefill_flops"], fr["kv_bytes"], ppl, ppl / base_ppl - 1.0)
        return measured[p["variant"]].increase <= budget

    idx = to_measure(len(plans), within, candidates)
    rows = [measured[plans[i]["variant"]] for i in idx]
    for r in pareto(rows):
        r.pareto = True
    ok = [r for r in rows if r.increase <= budget]
    pick = max(ok, key=lambda r: (r.saving, -r.increase)) if ok else None
    return {"budget": budget, "candidates": len(plans), "measured": [asdict(r) for r in rows],
            "pick": pick.variant if pick else None,
            "saving_definition": Savings.DEFINITION.format(seq_len=seq_len)}


def pareto(rows: Sequence[Measured]) -> List[Measured]:
    """Rows no other beats on both saving (higher) and increase (lower); NaN increases never are."""
    finite = [r for r in rows if r.increase == r.increase]
    return [r for r in finite if not any(
        (o.saving >= r.saving and o.increase <= r.increase) and (o.saving > r.saving or o.increase < r.increase)
        for o in finite)]


PICK = "pick"  # the roles of the plan `--variant recommended` scores (variant rows' `advice_role`)
OVER_BUDGET = "least costly measured, over budget"


def least_costly(adv: dict) -> Optional[dict]:
    """The measured plan with the smallest finite increase (ties: the larger saving), or None."""
    finite = [m for m in adv["measured"] if m["increase"] == m["increase"]]
    return min(finite, key=lambda m: (m["increase"], -m["saving"]), default=None)


def shown_plan(adv: Optional[dict]) -> Optional[Tuple[str, str]]:
    """(variant, role) that `--variant recommended` scores: the pick, or, when no measured plan is
    within the budget, the least costly one measured (so the user sees what the budget ruled out);
    None when the advice did not run or measured nothing."""
    if not adv:
        return None
    if adv["pick"] is not None:
        return adv["pick"], PICK
    m = least_costly(adv)
    return (m["variant"], OVER_BUDGET) if m else None


def pick_line(advice: Optional[dict]) -> str:
    """One line for the terminal: the plan string to paste into a suite."""
    if not advice or not advice["measured"]:
        return "advice: none (the model has no layer that can share)"
    pct = f"{advice['budget'] * 100:g}%"
    if advice["pick"] is None:
        m = least_costly(advice)
        if m is None:
            return f"advice (budget {pct}): no measured plan has a finite perplexity"
        return (f"advice (budget {pct}): no measured plan stays within the budget; the least costly, "
                f"\"{m['variant']}\" (shown beside the baseline), measured perplexity {m['increase']:+.2%}; "
                "raise --budget")
    m = next(r for r in advice["measured"] if r["variant"] == advice["pick"])
    return (f"advice (budget {pct}): \"{m['variant']}\"  saves {m['saving']:.1%} (decode bytes "
            f"{m['decode_bytes_saving']:.1%}, prefill FLOPs {m['prefill_flops_saving']:.1%}), measured "
            f"perplexity {m['increase']:+.2%}")

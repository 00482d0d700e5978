"""The serving section of a report: goodput, TTFT/TPOT percentiles per load, the Pareto figure
(tokens/s per user against tokens/s per device) and findings with intervals.

Every figure is recomputed from serving.json's raw per-request times (metrics.summarize). A
table cell is the median over rounds; a finding's ratio (a variant against the baseline, at one
load) is the geometric-mean ratio over rounds paired by round (the same request stream), with the
interval and verdict of sabench.stats. A "sustained rate" is the highest listed rate whose median
goodput share over rounds stays at or above the suite's `goodput_share`.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from sabench.records.serving import ServingResults
from sabench.serving.metrics import Targets, summarize
from sabench.stats import median, ratio_interval, verdict

BASELINE = "baseline"
# ratio_interval reads ratios as times (> 1: slower); for a throughput > 1 is more
_THROUGHPUT_LABEL = {"slower": "higher", "faster": "lower", "not distinguishable": "not distinguishable"}


def targets_of(results: ServingResults) -> Targets:
    t = (results.suite.get("serving") or {}).get("targets") or {}
    return Targets(t.get("ttft_ms"), t.get("tpot_ms"))


def summaries(results: ServingResults) -> dict:
    """(variant, load) -> {round: RunSummary}, loads in the suite's order."""
    targets = targets_of(results)
    out: dict = defaultdict(dict)
    for run in results.runs:
        out[(run.variant, run.load)][run.round] = summarize(run.requests, targets)
    return out


def _cells(s: dict, loads: list, variants: list):
    """(load, variant, {round: RunSummary}) for every pair that ran, loads outermost."""
    for load in loads:
        for v in variants:
            if s.get((v, load)):
                yield load, v, s[(v, load)]


def _loads(results: ServingResults) -> list:
    seen: dict = {}
    for run in sorted(results.runs, key=lambda r: (r.rate or 0, r.clients or 0)):
        seen.setdefault(run.load, run)
    return list(seen)


def _variants(results: ServingResults) -> list:
    return list(dict.fromkeys(r.variant for r in results.runs))


def _slots(results: ServingResults) -> dict:
    return {r.variant: r.slots for r in results.runs}


def ratio_finding(base: dict, cand: dict, figure: str) -> Optional[tuple]:
    """(estimate, label, reason) of cand/base on `figure` over the rounds both have; None when fewer
    than 2 rounds, or a round has 0 (a ratio of nothing: the table shows it)."""
    rounds = sorted(set(base) & set(cand))
    b = [getattr(base[r], figure) for r in rounds]
    c = [getattr(cand[r], figure) for r in rounds]
    if len(rounds) < 2 or min(b + c) <= 0:
        return None
    est = ratio_interval(b, c, paired=True, where=figure)
    v = verdict(est)
    return est, _THROUGHPUT_LABEL[v.label], v.reason


def sustained_rate(by_round_per_load: dict, share: float, offered: dict) -> Optional[str]:
    """The highest load whose median goodput share meets `share` AND whose median goodput (requests/s
    meeting every target) is at least `share` of the offered rate (`offered`: load -> req/s): a
    finite stream that arrives faster than the server drains it can still meet loose targets, and
    that is a burst served, not a rate sustained. None if no load qualifies."""
    best = None
    for load, rounds in by_round_per_load.items():
        met = median([s.goodput_share for s in rounds.values()]) >= share
        kept_up = median([s.goodput_rps for s in rounds.values()]) >= share * offered[load]
        if met and kept_up:
            best = load
    return best


def section(results: ServingResults, out_dir: Optional[Path] = None) -> str:
    """The report's serving section as markdown; the Pareto PNG written into out_dir when given."""
    s = summaries(results)
    loads, variants, slots = _loads(results), _variants(results), _slots(results)
    spec = results.suite.get("serving") or {}
    targets = targets_of(results)
    rounds = max(r.round for r in results.runs) + 1
    tgt = ", ".join(f"{k} ≤ {v:g} ms" for k, v in (("TTFT", targets.ttft_ms), ("TPOT", targets.tpot_ms))
                    if v is not None) or "none"
    mem = spec.get("cache_memory")
    lines = ["## Serving", "",
             f"{spec.get('requests')} requests a run, prompts {_len(spec.get('prompt_len'))} and outputs "
             f"{_len(spec.get('output_len'))} tokens, {rounds} round(s) on {results.env.get('gpu') or results.env.get('device')}; "
             + (f"slots at equal KV-cache memory ({mem} bytes): " if spec.get("slots") == "max" else "slots: ")
             + ", ".join(f"{v} {slots[v]}" for v in variants) + f". Targets: {tgt}. Scheduler: FCFS, a waiting "
             "request is prefilled before the next decode step. Cells: medians over rounds.", ""]
    lines += ["### Goodput and throughput", "",
              "| load | variant | slots | goodput (req/s) | meets targets | requests/s | output tokens/s | "
              "tokens/s per user |", "|---|---|---|---|---|---|---|---|"]
    for load, v, r in _cells(s, loads, variants):
        m = {k: median([getattr(x, k) for x in r.values()])
             for k in ("goodput_rps", "goodput_share", "requests_per_s", "output_tokens_per_s", "tokens_per_s_per_user")}
        lines.append(f"| {load} | {v} | {slots[v]} | {m['goodput_rps']:.2f} | {m['goodput_share']:.0%} | "
                     f"{m['requests_per_s']:.2f} | {m['output_tokens_per_s']:.0f} | {m['tokens_per_s_per_user']:.0f} |")
    lines += ["", "### Latency percentiles (ms)", "",
              "| load | variant | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | ITL p99 | queue wait p50 |",
              "|---|---|---|---|---|---|---|---|"]
    for load, v, r in _cells(s, loads, variants):
        def p(fig, q):
            return median([x.ms[fig][q] for x in r.values()])
        lines.append(f"| {load} | {v} | {p('ttft', 50):.1f} | {p('ttft', 99):.1f} | {p('tpot', 50):.2f} | "
                     f"{p('tpot', 99):.2f} | {p('itl', 99):.2f} | {p('queue_wait', 50):.1f} |")
    lines += ["", "### Findings", ""]
    lines += _findings(s, loads, variants, spec)
    lines += _simulator_check(results)
    if out_dir is not None:
        png = pareto_png(s, loads, variants, Path(out_dir))
        if png:
            lines += ["", f"![tokens/s per user against tokens/s per device]({png})",
                      "", "Each point: one load (median over rounds); up and to the right is better. "
                          "Tokens/s per user = 1 / median TPOT; per device = the run's output tokens/s."]
    return "\n".join(lines) + "\n"


def _len(v) -> str:
    if isinstance(v, list) and len(v) == 2:
        return str(v[0]) if v[0] == v[1] else f"{v[0]}-{v[1]}"
    return str(v)


def _findings(s: dict, loads: list, variants: list, spec: dict) -> list:
    out = []
    if BASELINE in variants:
        for load in loads:
            base = s.get((BASELINE, load), {})
            for v in variants:
                if v == BASELINE or (v, load) not in s:
                    continue
                for fig, name in (("goodput_rps", "goodput"), ("output_tokens_per_s", "output tokens/s")):
                    f = ratio_finding(base, s[(v, load)], fig)
                    if f is None:
                        out.append(f"- {load}, {v} vs baseline, {name}: no ratio (fewer than 2 rounds, or a round "
                                   "with none)")
                    else:
                        est, label, reason = f
                        out.append(f"- {load}, {v} vs baseline, {name}: **{label}**, {reason}")
    share = spec.get("goodput_share", 0.9)
    if spec.get("rates"):
        for v in variants:
            per_load = {ld: s[(v, ld)] for ld in loads if (v, ld) in s}
            offered = {f"{float(r):g} req/s": float(r) for r in spec["rates"]}  # a load's label (spec.Load)
            best = sustained_rate(per_load, share, offered)
            out.append(f"- {v} sustains {best or 'none of the listed rates'}: the highest listed rate at which "
                       f"≥ {share:.0%} of requests meet the targets and goodput keeps up with ≥ {share:.0%} of "
                       "the offered rate (medians over rounds)")
    return out or ["- nothing to compare (no baseline, or one variant)"]


def pareto_png(s: dict, loads: list, variants: list, out_dir: Path) -> Optional[str]:
    from sabench.report.plots import plt, save, variant_colors

    colors = variant_colors(variants)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = False
    for v in variants:
        pts = []
        for load in loads:
            r = s.get((v, load))
            if r:
                pts.append((median([x.output_tokens_per_s for x in r.values()]),
                            median([x.tokens_per_s_per_user for x in r.values()]), load))
        pts = [p for p in pts if p[1] == p[1]]  # a load of one-token outputs has no per-user speed
        if not pts:
            continue
        drawn = True
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[v], label=v)
        for x, y, load in pts:
            ax.annotate(load, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colors[v])
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("output tokens/s per device")
    ax.set_ylabel("output tokens/s per user")
    ax.set_title("Serving: per-user speed against device throughput")
    ax.legend()
    fig.tight_layout()
    return save(fig, out_dir, "serving_pareto.png")


def _simulator_check(results: ServingResults) -> list:
    from sabench.serving.simulate import held_out

    rows = held_out(results)
    if not rows:
        return []
    out = ["", "### Simulator check (held-out rates)", "",
           "The scheduler on a step-cost model fitted (non-negative least squares) on the variant's measured "
           "steps at the other rates, replaying each held-out round's own requests; medians over rounds; "
           "measured / predicted (error).", "",
           "| variant | held-out rate | TTFT p50 (ms) | TPOT p50 (ms) | output tokens/s |", "|---|---|---|---|---|"]
    for variant, rate, m, p in rows:
        cells = [f"{m[f]:.3g} / {p[f]:.3g} ({p[f] / m[f] - 1:+.0%})" for f in
                 ("ttft_p50_ms", "tpot_p50_ms", "output_tokens_per_s")]
        out.append(f"| {variant} | {rate:g} req/s | " + " | ".join(cells) + " |")
    return out

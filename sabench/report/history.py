"""The history's trends as a reader sees them: steps marked by step detection over each whole series,
and the plain-text tables of `sabench history` (the storage is sabench/history.py)."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from sabench.history import HIGHER_IS_BETTER, METRICS, RunInfo, Trend, TrendPoint, read_series
from sabench.report.results import fmt_ms, fmt_rate, human_bytes, human_flops
from sabench.stats import detect_steps

# metric -> its formatter; any other metric is printed plainly
FORMATS = {
    "median_ms": fmt_ms,
    "tokens_per_s": fmt_rate,
    "peak_memory_bytes": human_bytes,
    "joules_per_token": lambda v: f"{v:.4g} J",
    "kv_cache_bytes": human_bytes,
    "flops_analytic": human_flops,
    "flops_counted": human_flops,
}


def _plain(v) -> str:
    return f"{v:.4g}"


def mark_steps(points: List[TrendPoint], metric: str, threshold: float) -> None:
    """Mark the steps of a series: `change` is each value against the previous one (for reading);
    `step` ("up"/"down") marks where a change of level was found.

    Deterministic figures: any change at all is a step. Measured figures: step detection over the
    WHOLE series (sabench.stats.detect_steps on the per-commit values, each weighted by its own
    spread: the samples' relative IQR / 1.349, an sd), so a step is marked only where the levels
    before and after differ by more than the series' noise (2 sd) and the threshold; `kind` says
    whether it is a "regression", an "improvement", or "too short" (the new level spans one commit
    so far: not yet a confirmed regression)."""
    prev = None
    for p in points:
        p.change, p.step, p.kind, p.interval = None, None, None, None
        if p.value is None:
            continue
        if prev is not None and prev.value:
            p.change = p.value / prev.value - 1
        prev = p
    if METRICS.get(metric, ("", False))[1]:
        for p in points:
            if p.change:
                p.step = "up" if p.change > 0 else "down"
        return
    vals = [p.value if (p.value is not None and p.value > 0) else None for p in points]
    spreads = [v * p.rel_iqr / 1.349 if (v is not None and p.rel_iqr) else None for v, p in zip(vals, points)]
    fit = detect_steps(vals, spreads, threshold=threshold, higher_is_worse=metric not in HIGHER_IS_BETTER)
    for st in fit.steps:
        if st.exceeds_noise:
            p = points[st.index]
            p.step, p.kind, p.interval = ("up" if st.ratio > 1 else "down"), st.kind, (st.ratio, st.low, st.high)


def query_trend(db_path=None, suite: Optional[str] = None, metric: str = "median_ms",
                variant: Optional[str] = None, phase: Optional[str] = None, machine: Optional[str] = None,
                batch_size: Optional[int] = None, seq_len: Optional[int] = None,
                threshold: float = 0.05) -> List[Trend]:
    """Trends of one metric per (suite, machine, point), runs ordered by their created time, steps marked."""
    trends = read_series(db_path, suite=suite, metric=metric, variant=variant, phase=phase, machine=machine,
                         batch_size=batch_size, seq_len=seq_len)
    for t in trends:
        mark_steps(t.points, metric, threshold)
    return trends


def trend_groups(trends: List[Trend]) -> List[Tuple[Tuple[str, str], List[Trend], List[RunInfo]]]:
    groups: Dict[Tuple[str, str], List[Trend]] = {}
    for t in trends:
        groups.setdefault((t.suite, t.machine), []).append(t)
    out = []
    for key, ts in groups.items():
        runs: Dict[str, RunInfo] = {}
        for t in ts:
            for p in t.points:
                runs.setdefault(p.run.run_key, p.run)
        out.append((key, ts, sorted(runs.values(), key=lambda r: r.created)))
    return out


def format_trends(trends: List[Trend], last: int = 10) -> str:
    """Plain-text tables: one per (suite, machine), a row per point, a column per run (oldest first)."""
    from tabulate import tabulate

    if not trends:
        return "no matching history\n"
    metric = trends[0].metric
    unit = METRICS[metric][0]
    fmt = FORMATS.get(metric, _plain)
    out = []
    for (suite, machine), ts, runs in trend_groups(trends):
        shown = runs[-last:] if last else runs
        info = runs[0]
        out.append(f"{metric} [{unit}], suite {suite!r}, machine {machine} "
                   f"({info.host or '?'}, {info.device_name or 'cpu'}): "
                   f"{len(runs)} run(s)" + (f", showing the last {len(shown)}" if len(shown) < len(runs) else ""))
        seen: Dict[str, int] = {}
        headers = ["point"]
        for r in shown:
            n = seen.get(r.commit_short, 0) + 1
            seen[r.commit_short] = n
            headers.append(r.commit_short + (f"#{n}" if n > 1 else ""))
        rows = []
        for t in ts:
            by = {p.run.run_key: p for p in t.points}
            row = [t.label]
            for r in shown:
                p = by.get(r.run_key)
                if p is None:
                    row.append("")
                elif p.value is None:
                    row.append({"oom": "OOM", "skipped_after_oom": "skipped"}.get(p.status, p.status))
                else:
                    mark = {"up": " ▲", "down": " ▼"}.get(p.step or "", "") + ("?" if p.kind == "too short" else "")
                    row.append(fmt(p.value) + mark)
            rows.append(row)
        out.append(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                            colalign=["left"] + ["right"] * len(shown)))
        out.append("runs: " + ", ".join(f"{h} = {r.created}" for h, r in zip(headers[1:], shown)))
        steps = sum(len(t.steps) for t in ts)
        out.append(f"▲/▼: a change of level larger than the series' noise and the threshold, found by step "
                   f"detection over the whole series ({steps} step(s); ? = one commit so far, not confirmed)")
        for t in ts:
            for p in t.steps:
                if p.interval is not None and p.kind in ("regression", "improvement"):
                    r, lo, hi = p.interval
                    out.append(f"  {p.kind}: {t.label} at {p.run.commit_short}: {r:.2f}× [{lo:.2f}, {hi:.2f}] "
                               f"(level after / before, 95% interval)")
        out.append("")
    return "\n".join(out)

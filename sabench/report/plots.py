"""PNG figures for report.md (matplotlib, Agg backend: no display needed).

Every function takes the loaded results (and its record index), writes one PNG into
`out_dir` and returns its file name, or None when the run has nothing to show for it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from sabench.report.results import (BASELINE, Key, axis_values, geomean, get_num,
                                    is_ok, median_ms, peak_memory, speedup, variants_of)

DPI = 100
MAX_FACETS = 9
PHASE_MARKERS = {"prefill": "o", "decode": "^"}
FAIL_STYLE = dict(marker="X", markersize=9, markeredgecolor="red", markeredgewidth=1.5, linestyle="none")

plt.rcParams.update({
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "figure.titlesize": 13, "figure.titleweight": "bold",
})

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]


def variant_colors(variants: Sequence[str]) -> Dict[str, str]:
    colors, i = {}, 0
    for v in variants:
        if v == BASELINE:
            colors[v] = "#111111"
        else:
            colors[v] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return colors


# ---------------------------------------------------------------------------- helpers


def pick_facets(values: List[int], limit: int = MAX_FACETS) -> Tuple[List[int], str]:
    """At most `limit` values, evenly spread and keeping both ends; plus a note when some are left out."""
    if len(values) <= limit:
        return list(values), ""
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, limit)).astype(int))
    picked = [values[i] for i in idx]
    return picked, f" (showing {len(picked)} of {len(values)})"


class Grid:
    """A grid of facets laid out with fixed margins in inches (much cheaper than constrained layout)."""

    def __init__(self, n: int, w: float = 3.9, h: float = 2.8, max_cols: int = 3, legend_items: int = 0,
                 legend_cols: int = 6, right: float = 0.25, wspace: float = 0.85, hspace: float = 0.85):
        ncols = min(n, max_cols) if n != 4 else 2
        nrows = math.ceil(n / ncols)
        left, top = 0.85, 0.75
        W = left + right + ncols * w + (ncols - 1) * wspace
        if isinstance(legend_items, int):
            self.legend_cols = min(legend_cols, legend_items) or 1
            self.legend_rows = math.ceil(legend_items / self.legend_cols) if legend_items else 0
        else:  # the handles themselves: fit the columns to the width
            self.legend_cols = min(legend_cols, legend_columns(legend_items, W))
            self.legend_rows = math.ceil(len(legend_items) / self.legend_cols) if legend_items else 0
        bottom = 0.65 + 0.27 * self.legend_rows
        H = top + bottom + nrows * h + (nrows - 1) * hspace
        self.W, self.H = W, H
        self.fig = plt.figure(figsize=(W, H))
        gs = self.fig.add_gridspec(nrows, ncols, left=left / W, right=1 - right / W, top=1 - top / H,
                                   bottom=bottom / H, wspace=wspace / w, hspace=hspace / h)
        self.axes = [self.fig.add_subplot(gs[i // ncols, i % ncols]) for i in range(n)]
        self.right_edge = 1 - right / W
        self.top_edge, self.bottom_edge = 1 - top / H, bottom / H

    def title(self, text: str):
        self.fig.suptitle(text, y=1 - 0.22 / self.H, va="top")

    def legend(self, handles):
        if handles:
            self.fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.08 / self.H),
                            ncol=self.legend_cols, frameon=False, columnspacing=1.2, handletextpad=0.5)


def size_axis(ax, which: str, values: Sequence[float]):
    """Log2 axis with the actual sweep values as ticks when they span 8x or more."""
    vals = sorted({float(v) for v in values if v and v > 0})
    if not vals:
        return
    if vals[-1] / vals[0] >= 8:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=2)
    axis = ax.xaxis if which == "x" else ax.yaxis
    ticks = vals
    if len(ticks) > 8:
        step = math.ceil(len(ticks) / 8)
        ticks = ticks[::step] + ([ticks[-1]] if (len(ticks) - 1) % step else [])
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda x, _: _short_int(x)))


def _short_int(x: float) -> str:
    x = int(round(x))
    if x >= 1024 and x % 1024 == 0:
        return f"{x // 1024}k"
    return str(x)


def value_axis(ax, values: Sequence[float], which: str = "y"):
    """Log scale when the values span 20x or more, with 1-2-5 ticks labelled as plain numbers."""
    vals = [v for v in values if v is not None and v > 0]
    if not vals or max(vals) / min(vals) < 20:
        return
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    decades = math.log10(max(vals) / min(vals))
    subs = (1.0, 2.0, 5.0) if decades <= 2.2 else ((1.0, 3.0) if decades <= 3.5 else (1.0,))
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda x, _: fmt_tick(x)))


def fmt_tick(x: float) -> str:
    if x <= 0:
        return "0"
    if x >= 1e9:
        return f"{x / 1e9:g}G"
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e4:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def mark_failures(ax, xs: Sequence[float], color: str, slot: int, label: Optional[str] = None):
    """Red-edged X markers (in the series colour) along the top edge of the axes."""
    if not xs:
        return
    tr = blended_transform_factory(ax.transData, ax.transAxes)
    y = 0.965 - 0.03 * (slot % 4)
    ax.plot(xs, [y] * len(xs), transform=tr, markerfacecolor=color, clip_on=False, label=label,
            **FAIL_STYLE)


def headroom(ax, frac: float = 0.16):
    """Free the top of the axes for the failure markers."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log" and lo > 0:
        ax.set_ylim(lo, hi * (hi / lo) ** frac)
    else:
        ax.set_ylim(lo, hi + (hi - lo) * frac)


def legend_columns(handles, width_in: float) -> int:
    """As many columns as fit in the figure width (labels at ~0.075 in per character)."""
    widths = [0.75 + 0.075 * len(h.get_label()) for h in handles]
    ncol = len(handles)
    while ncol > 1:
        rows = [widths[i::ncol] for i in range(ncol)]
        if sum(max(col) for col in rows if col) <= width_in - 0.3:
            break
        ncol -= 1
    return max(1, ncol)


def save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI)
    plt.close(fig)
    return name


def _variant_handles(variants: Sequence[str], colors: Dict[str, str]) -> List[Line2D]:
    return [Line2D([], [], color=colors[v], marker="o", markersize=4,
                   linestyle="--" if v == BASELINE else "-", label=v) for v in variants]


def _fail_handle(label="OOM / error / skipped (marked at top)") -> Line2D:
    return Line2D([], [], markerfacecolor="white", label=label, **FAIL_STYLE)


# ---------------------------------------------------------------------------- figures


def _x_limits(ax, xs: Sequence[float]):
    lo, hi = min(xs), max(xs)
    if ax.get_xscale() == "log":
        ax.set_xlim(lo / 1.25, hi * 1.25)
    else:
        pad = (hi - lo) * 0.05 or 0.5
        ax.set_xlim(lo - pad, hi + pad)


def _facet_lines(results: dict, index: Dict[Key, dict], out_dir: Path, name: str, title: str, *,
                 phases: Sequence[str], facet: str, x: str, facet_label: str, xlabel: str, ylabel: str,
                 series: Sequence[Tuple[str, str]], value, extra_handles: Sequence[Line2D] = ()
                 ) -> Optional[str]:
    """One facet per `facet` value, x = `x` field, one line per (variant, series style).

    value(records_at_point, series_id) -> y or None; records_at_point are those of `phases`.
    A point whose records include a non-ok one is marked at the top of the facet.
    """
    variants = variants_of(results)
    colors = variant_colors(variants)
    recs = [r for k, r in index.items() if k[3] in phases]
    facets, note = pick_facets(sorted({int(r[facet]) for r in recs}))
    xs_all = sorted({int(r[x]) for r in recs})
    if not facets or not xs_all:
        return None
    any_fail = any(not is_ok(r) for r in recs)
    handles = _variant_handles(variants, colors) + list(extra_handles)
    if any_fail:
        handles.append(_fail_handle())
    grid = Grid(len(facets), legend_items=handles)
    have_any = False
    for ax, f in zip(grid.axes, facets):
        all_y, facet_fail = [], False
        for slot, v in enumerate(variants):
            at = {}
            for xv in xs_all:
                key = {facet: f, x: xv}
                rs = [index.get((v, key["batch_size"], key["seq_len"], p)) for p in phases]
                rs = [r for r in rs if r is not None]
                if rs:
                    at[xv] = rs
            for sid, style in series:
                xy = [(xv, value(rs, sid)) for xv, rs in at.items()]
                xy = [(a, b) for a, b in xy if b is not None and b > 0]
                if xy:
                    have_any = True
                    px, py = zip(*xy)
                    ls = "--" if (v == BASELINE and style == "-") else style
                    ax.plot(px, py, color=colors[v], linestyle=ls, marker="o" if style == "-" else None,
                            markersize=3.5, linewidth=1.6 if style == "-" else 2.2)
                    all_y += py
            fails = [xv for xv, rs in at.items() if any(not is_ok(r) for r in rs)]
            mark_failures(ax, fails, colors[v], slot)
            facet_fail = facet_fail or bool(fails)
        size_axis(ax, "x", xs_all)
        _x_limits(ax, xs_all)
        value_axis(ax, all_y)
        if facet_fail:
            headroom(ax)
        ax.set_title(f"{facet_label} {f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if not have_any:
        plt.close(grid.fig)
        return None
    grid.title(title + note)
    grid.legend(handles)
    return save(grid.fig, out_dir, name)


def _median_of(rs, _sid):
    return median_ms(rs[0]) if rs and is_ok(rs[0]) else None


def latency_vs_seq(results: dict, index: Dict[Key, dict], out_dir: Path, phase: str) -> Optional[str]:
    """Median latency vs seq_len, one line per variant, one facet per batch size."""
    if phase == "prefill":
        title, xl, yl = "Prefill latency vs sequence length", "sequence length (tokens)", "median latency (ms)"
    else:
        title, xl, yl = ("Decode per-token latency vs context length", "context length (prompt tokens)",
                         "median per-token latency (ms)")
    return _facet_lines(results, index, out_dir, f"{phase}_latency.png", title, phases=(phase,),
                        facet="batch_size", x="seq_len", facet_label="batch", xlabel=xl, ylabel=yl,
                        series=[("median", "-")], value=_median_of)


def decode_throughput(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Decode tokens/s vs batch size, one line per variant, one facet per context length."""
    def tps(rs, _sid):
        return get_num(rs[0], "tokens_per_s") if rs and is_ok(rs[0]) else None

    return _facet_lines(results, index, out_dir, "decode_throughput.png", "Decode throughput vs batch size",
                        phases=("decode",), facet="seq_len", x="batch_size", facet_label="context",
                        xlabel="batch size", ylabel="decode throughput (tokens/s)",
                        series=[("tps", "-")], value=tps)


def memory_vs_seq(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """The points' device peak (solid; max of the phases) and analytic KV-cache bytes (dotted) vs
    seq_len; failures at the top."""
    sources = sorted({peak_memory(r)[1] for r in index.values() if is_ok(r) and peak_memory(r)[1]})
    src = "/".join(sources) or "measured"
    biggest = max([peak_memory(r)[0] or 0 for r in index.values() if is_ok(r)]
                  + [get_num(r, "kv_cache_bytes") or 0 for r in index.values()] + [0])
    unit, scale = next(((u, f) for u, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20)) if biggest >= f), ("KiB", 1024))

    def value(rs, sid):
        if sid == "mem":
            peaks = [peak_memory(r)[0] for r in rs if is_ok(r)]
            peaks = [p for p in peaks if p is not None]
            return max(peaks) / scale if peaks else None
        kv = [get_num(r, "kv_cache_bytes") for r in rs]
        kv = [k for k in kv if k]
        return max(kv) / scale if kv else None

    extra = [Line2D([], [], color="gray", linestyle="-", marker="o", markersize=4,
                    label=f"device peak ({src})"),
             Line2D([], [], color="gray", linestyle=":", linewidth=2.2, label="KV cache (analytic)")]
    return _facet_lines(results, index, out_dir, "memory.png",
                        f"Device peak ({src}, solid) and KV cache (dotted) vs sequence length",
                        phases=("prefill", "decode"), facet="batch_size", x="seq_len", facet_label="batch",
                        xlabel="sequence length (tokens)", ylabel=f"memory ({unit})",
                        series=[("mem", "-"), ("kv", ":")], value=value, extra_handles=extra)


def speedup_heatmap(results: dict, index: Dict[Key, dict], out_dir: Path, phase: str) -> Optional[str]:
    """Baseline median / variant median per (batch, seq_len), one panel per non-baseline variant."""
    variants = [v for v in variants_of(results) if v != BASELINE]
    if not variants or not any(k[0] == BASELINE and k[3] == phase for k in index):
        return None
    batches = axis_values(results, "batch_size", phase)
    seqs = axis_values(results, "seq_len", phase)
    nb, ns = len(batches), len(seqs)
    data = {}
    lim = 1.05
    for v in variants:
        grid = np.full((nb, ns), np.nan)
        labels = [["" for _ in seqs] for _ in batches]
        for i, b in enumerate(batches):
            for j, s in enumerate(seqs):
                base, cur = index.get((BASELINE, b, s, phase)), index.get((v, b, s, phase))
                sp = speedup(base, cur)
                if sp is not None:
                    grid[i, j] = sp
                    labels[i][j] = f"{sp:.2f}"
                    lim = max(lim, sp, 1 / sp)
                elif cur is None:
                    labels[i][j] = "—"
                elif not is_ok(cur):
                    labels[i][j] = {"oom": "OOM", "error": "err"}.get(cur["status"], "skip")
                elif base is None:
                    labels[i][j] = "no\nbase"
                elif not is_ok(base):
                    labels[i][j] = "base\n" + {"oom": "OOM", "error": "err"}.get(base["status"], "skip")
        data[v] = (grid, labels)
    if all(np.isnan(g).all() for g, _ in data.values()):
        return None
    lim = min(max(lim, 1.25), 4.0)  # a few % either way stays pale
    norm = LogNorm(vmin=1 / lim, vmax=lim)  # symmetric around 1x on a log scale
    w = max(3.0, 0.55 * ns + 0.6)
    h = max(2.0, 0.36 * nb + 0.4)
    g = Grid(len(variants), w=w, h=h, max_cols=3 if ns <= 6 else 2, right=1.3, wspace=0.85, hspace=1.0)
    fs = 8 if ns <= 8 else 7
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#e4e4e4")
    im = None
    for ax, v in zip(g.axes, variants):
        arr, labels = data[v]
        im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, norm=norm, aspect="auto", origin="lower",
                       interpolation="nearest")
        ax.grid(False)
        for i in range(nb):
            for j in range(ns):
                txt = labels[i][j]
                if txt:
                    ax.text(j, i, txt, ha="center", va="center", color="black",
                            fontsize=fs if "\n" not in txt else fs - 1.5)
        ax.set_xticks(range(ns), [_short_int(s) for s in seqs], rotation=45 if ns > 8 else 0)
        ax.set_yticks(range(nb), [str(b) for b in batches])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("batch size")
        ax.set_title(v)
    if im is not None:
        cax = g.fig.add_axes([g.right_edge + 0.35 / g.W, g.bottom_edge, 0.18 / g.W,
                              g.top_edge - g.bottom_edge])
        cb = g.fig.colorbar(im, cax=cax, label="speedup (> 1: faster)")
        ticks = [t for t in (0.25, 1 / 3, 0.5, 2 / 3, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0)
                 if 1 / lim <= t * 1.0001 and t <= lim * 1.0001]
        cb.ax.yaxis.set_major_locator(FixedLocator(ticks))
        cb.ax.yaxis.set_minor_locator(NullLocator())
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}×"))
    g.title(f"{phase.capitalize()} speedup over baseline (baseline median / variant median)")
    return save(g.fig, out_dir, f"speedup_{phase}.png")


FLOP_PARTS = ("projections", "attention", "mlp", "lm_head")
FLOP_COLORS = {"projections": "#4c72b0", "attention": "#dd8452", "mlp": "#55a868", "lm_head": "#8172b3"}


def representative_point(results: dict, index: Dict[Key, dict]) -> Optional[Tuple[int, int]]:
    """The largest (batch x seq_len) point where every variant's prefill has a FLOP breakdown,
    preferring points where they all ran ok."""
    variants = variants_of(results)
    cands = {(k[1], k[2]) for k in index if k[3] == "prefill"}
    best = None
    for b, s in cands:
        recs = [index.get((v, b, s, "prefill")) for v in variants]
        have = sum(1 for r in recs if r and (r.get("flops") or {}).get("analytic_breakdown"))
        ok = sum(1 for r in recs if is_ok(r))
        score = (have, ok, b * s, s)
        if have and (best is None or score > best[0]):
            best = (score, (b, s))
    return best[1] if best else None


def flops_breakdown(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Stacked analytic FLOPs (projections/attention/mlp/lm_head) per variant at one representative point."""
    pt = representative_point(results, index)
    if pt is None:
        return None
    b, s = pt
    variants = variants_of(results)

    def bd_of(v, phase):
        return ((index.get((v, b, s, phase)) or {}).get("flops") or {}).get("analytic_breakdown") or {}

    phases = [p for p in ("prefill", "decode") if any(bd_of(v, p) for v in variants)]
    width = max(4.8, 0.95 * len(variants) + 2.2)
    fig, axes = plt.subplots(1, len(phases), figsize=(width * len(phases), 4.9), squeeze=False)
    fig.subplots_adjust(left=0.8 / (width * len(phases)), right=0.98, top=0.84, bottom=0.24, wspace=0.25)
    for ax, phase in zip(axes[0], phases):
        table = np.array([[float(bd_of(v, phase).get(part) or 0.0) for v in variants] for part in FLOP_PARTS])
        totals = table.sum(axis=0)
        unit, scale = _flop_unit(totals.max())
        bottoms = np.zeros(len(variants))
        for part, vals in zip(FLOP_PARTS, table):
            ax.bar(range(len(variants)), vals / scale, bottom=bottoms / scale, color=FLOP_COLORS[part],
                   label=part, width=0.65)
            bottoms += vals
        for i, t in enumerate(totals):
            if t:
                ax.text(i, t / scale, f"{t / scale:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(variants)), variants, rotation=20 if len(variants) > 4 else 0)
        ax.set_ylabel(f"analytic {unit}")
        what = "one forward" if phase == "prefill" else f"all {_decode_tokens(results, index)} decode steps"
        ax.set_title(f"{phase}: {what}")
        ax.set_ylim(0, totals.max() / scale * 1.12 if totals.max() else 1)
    handles = [plt.Rectangle((0, 0), 1, 1, color=FLOP_COLORS[p]) for p in FLOP_PARTS]
    fig.legend(handles, FLOP_PARTS, loc="lower center", ncol=4, frameon=False)
    all_ok = all(is_ok(index.get((v, b, s, "prefill"))) for v in variants)
    fig.suptitle(f"Analytic FLOPs by component at batch {b}, seq_len {s}"
                 + (" (the largest point where every variant ran)" if all_ok else ""))
    return save(fig, out_dir, "flops_breakdown.png")


def _flop_unit(x: float) -> Tuple[str, float]:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return unit, scale
    return "FLOP", 1.0


def _decode_tokens(results, index) -> str:
    dt = results.get("suite", {}).get("decode_tokens")
    if dt is None:
        vals = {r.get("decode_tokens") for k, r in index.items() if k[3] == "decode"} - {None}
        dt = vals.pop() if len(vals) == 1 else "decode"
    return str(dt)


def roofline_scatter(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    variants = variants_of(results)
    colors = variant_colors(variants)
    fig, ax = plt.subplots(figsize=(6.8, 5.6), layout="constrained")
    lo, hi = math.inf, 0.0
    phases_seen = set()
    for v in variants:
        for phase in ("prefill", "decode"):
            xs, ys = [], []
            for k, r in index.items():
                if k[0] != v or k[3] != phase or not is_ok(r):
                    continue
                f, m = get_num(r, "floor_ms"), median_ms(r)
                if f and m and f > 0 and m > 0:
                    xs.append(f)
                    ys.append(m)
            if xs:
                phases_seen.add(phase)
                ax.scatter(xs, ys, s=18, color=colors[v], marker=PHASE_MARKERS[phase], alpha=0.75,
                           edgecolors="none")
                lo, hi = min(lo, min(xs), min(ys)), max(hi, max(xs), max(ys))
    if hi == 0:
        plt.close(fig)
        return None
    lo, hi = lo / 1.5, hi * 1.5
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", linewidth=1.2, label="y = x (at the floor)")
    ax.plot(line, 2 * line, color="gray", linestyle="--", linewidth=1, label="2× floor")
    ax.plot(line, 10 * line, color="gray", linestyle=":", linewidth=1, label="10× floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda x, _: fmt_tick(x)))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi * 2)
    ax.set_xlabel("roofline floor per sample (ms)")
    ax.set_ylabel("measured median per sample (ms)")
    ax.set_title("Measured latency vs roofline floor\n(prefill: one forward; decode: one token step)")
    handles = [Line2D([], [], color=colors[v], marker="o", linestyle="none", label=v) for v in variants]
    handles += [Line2D([], [], color="gray", marker=PHASE_MARKERS[p], linestyle="none", label=p)
                for p in ("prefill", "decode") if p in phases_seen]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=True)
    return save(fig, out_dir, "roofline.png")


def all_figures(results: dict, index: Dict[Key, dict], out_dir: Path) -> Dict[str, Optional[str]]:
    """Every figure of the report: {id: file name or None}."""
    out_dir = Path(out_dir)
    figs = {}
    figs["prefill_latency"] = latency_vs_seq(results, index, out_dir, "prefill")
    figs["decode_latency"] = latency_vs_seq(results, index, out_dir, "decode")
    figs["decode_throughput"] = decode_throughput(results, index, out_dir)
    figs["memory"] = memory_vs_seq(results, index, out_dir)
    figs["speedup_prefill"] = speedup_heatmap(results, index, out_dir, "prefill")
    figs["speedup_decode"] = speedup_heatmap(results, index, out_dir, "decode")
    figs["flops_breakdown"] = flops_breakdown(results, index, out_dir)
    figs["roofline"] = roofline_scatter(results, index, out_dir)
    return figs


# ---------------------------------------------------------------------------- compare figures

RATIO_TICKS = [0.1, 0.2, 0.25, 0.33, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0,
               5.0, 10.0]
RUN_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v")]


def compare_latency(runs, shared, out_dir: Path, phase: str) -> Optional[str]:
    """Median latency vs seq_len, one facet per variant, colour = batch size, line style = run."""
    pts = {k for k in shared if k[3] == phase}
    if not pts:
        return None
    ref = runs[0]
    order = {v: i for i, v in enumerate(variants_of(ref.results))}
    variants, note = pick_facets(sorted({k[0] for k in pts}, key=lambda v: (order.get(v, 1e9), v)))
    batches_all = sorted({k[1] for k in pts})
    batches, _ = pick_facets(batches_all, 4)
    seqs = sorted({k[2] for k in pts})
    cmap = plt.get_cmap("viridis")
    bcolor = {b: cmap(0.85 * i / max(1, len(batches) - 1)) for i, b in enumerate(batches)}
    handles = [Line2D([], [], color="gray", linestyle=ls, marker=m, markersize=4, label=r.label)
               for r, (ls, m) in zip(runs, RUN_STYLES * 3)]
    handles += [Line2D([], [], color=bcolor[b], linewidth=3, label=f"batch {b}") for b in batches]
    g = Grid(len(variants), legend_items=handles, legend_cols=8)
    for ax, v in zip(g.axes, variants):
        ys_all = []
        for r, (ls, m) in zip(runs, RUN_STYLES * 3):
            for b in batches:
                xy = [(s, median_ms(r.index.get((v, b, s, phase)))) for s in seqs if (v, b, s, phase) in pts]
                xy = [(x, y) for x, y in xy if y]
                if xy:
                    xs, ys = zip(*xy)
                    ax.plot(xs, ys, color=bcolor[b], linestyle=ls, marker=m, markersize=3.5, linewidth=1.5)
                    ys_all += ys
        size_axis(ax, "x", seqs)
        _x_limits(ax, seqs)
        value_axis(ax, ys_all)
        ax.set_title(v)
        ax.set_xlabel("sequence length (tokens)" if phase == "prefill" else "context length (tokens)")
        ax.set_ylabel("median latency (ms)" if phase == "prefill" else "median per-token latency (ms)")
    more = f", {len(batches)} of {len(batches_all)} batch sizes" if len(batches) < len(batches_all) else ""
    g.title(f"{phase.capitalize()} latency per run (line style = run, colour = batch{more})" + note)
    g.legend(handles)
    return save(g.fig, out_dir, f"compare_{phase}_latency.png")


def compare_ratio(runs, shared, out_dir: Path) -> Optional[str]:
    """Per variant and phase: every shared point's latency ratio run / first run, and the geometric mean."""
    ref = runs[0]
    order = {v: i for i, v in enumerate(variants_of(ref.results))}
    variants = sorted({k[0] for k in shared}, key=lambda v: (order.get(v, 1e9), v))
    phases = [p for p in ("prefill", "decode") if any(k[3] == p for k in shared)]
    rng = np.random.default_rng(0)
    width = max(5.0, 1.0 * len(variants) * max(1, len(runs) - 1) + 2.0)
    fig, axes = plt.subplots(1, len(phases), figsize=(width * len(phases), 4.8), squeeze=False)
    fig.subplots_adjust(left=0.9 / (width * len(phases)), right=0.98, top=0.84, bottom=0.24, wspace=0.22)
    colors = _PALETTE
    drawn = False
    for ax, phase in zip(axes[0], phases):
        nrun = len(runs) - 1
        for ri, r in enumerate(runs[1:]):
            for vi, v in enumerate(variants):
                ratios = []
                for k in shared:
                    if k[0] == v and k[3] == phase:
                        a, b = median_ms(ref.index.get(k)), median_ms(r.index.get(k))
                        if a and b:
                            ratios.append(b / a)
                if not ratios:
                    continue
                drawn = True
                x0 = vi + (ri - (nrun - 1) / 2) * (0.7 / nrun)
                ax.scatter(x0 + rng.uniform(-0.12, 0.12, len(ratios)) / nrun, ratios, s=10, alpha=0.45,
                           color=colors[ri % len(colors)], edgecolors="none")
                gm = geomean(ratios)
                ax.plot([x0 - 0.2 / nrun, x0 + 0.2 / nrun], [gm, gm], color="black", linewidth=2.2)
        ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        lo, hi = min(lo, 0.95), max(hi, 1.05)
        ax.set_ylim(lo, hi)
        ticks = [t for t in RATIO_TICKS if lo <= t <= hi]
        if len(ticks) > 9:
            ticks = ticks[::math.ceil(len(ticks) / 9)] + [1.0]
        ax.yaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}×"))
        ax.set_xticks(range(len(variants)), variants, rotation=20 if len(variants) > 4 else 0)
        ax.set_xlim(-0.6, len(variants) - 0.4)
        ax.set_ylabel(f"median latency / {ref.label} (< 1 = faster)")
        ax.set_title(phase)
    if not drawn:
        plt.close(fig)
        return None
    handles = [Line2D([], [], color=colors[i % len(colors)], marker="o", linestyle="none", label=r.label)
               for i, r in enumerate(runs[1:])]
    handles.append(Line2D([], [], color="black", linewidth=2.2, label="geometric mean"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Latency of each run relative to {ref.label}, every shared point")
    return save(fig, out_dir, "compare_ratio.png")


def compare_figures(runs, shared, out_dir: Path) -> Dict[str, Optional[str]]:
    out_dir = Path(out_dir)
    return {"latency_prefill": compare_latency(runs, shared, out_dir, "prefill"),
            "latency_decode": compare_latency(runs, shared, out_dir, "decode"),
            "ratio": compare_ratio(runs, shared, out_dir)}


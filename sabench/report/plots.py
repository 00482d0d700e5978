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
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from sabench.report.results import (BASELINE, Key, axis_values, get_num, human_flops,
                                    is_ok, median_ms, peak_memory, speedup, variants_of)

DPI = 100
MAX_FACETS = 12
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


def facet_grid(n: int, w: float = 4.0, h: float = 3.0, max_cols: int = 4, sharex: bool = True):
    ncols = n if n <= 3 else min(max_cols, math.ceil(math.sqrt(n)))
    if n == 4:
        ncols = 2
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 0.4, h * nrows + 1.2),
                             squeeze=False, sharex=sharex, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


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
    vals = [v for v in values if v is not None and v > 0]
    if vals and max(vals) / min(vals) >= 20:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")


def mark_failures(ax, xs: Sequence[float], color: str, slot: int, label: Optional[str] = None):
    """Red-edged X markers (in the series colour) along the top edge of the axes."""
    if not xs:
        return
    tr = blended_transform_factory(ax.transData, ax.transAxes)
    y = 0.97 - 0.045 * (slot % 6)
    ax.plot(xs, [y] * len(xs), transform=tr, markerfacecolor=color, clip_on=False, label=label,
            **FAIL_STYLE)


def save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI)
    plt.close(fig)
    return name


def _legend(fig, variants: Sequence[str], colors: Dict[str, str], extra: Sequence[Line2D] = ()):
    handles = [Line2D([], [], color=colors[v], marker="o", markersize=4, label=v) for v in variants]
    handles += list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)


def _fail_handle(label="OOM / error / skipped (marked at top)") -> Line2D:
    return Line2D([], [], markerfacecolor="white", label=label, **FAIL_STYLE)


# ---------------------------------------------------------------------------- figures


def latency_vs_seq(results: dict, index: Dict[Key, dict], out_dir: Path, phase: str) -> Optional[str]:
    """Median latency vs seq_len, one line per variant, one facet per batch size."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    batches, note = pick_facets(axis_values(results, "batch_size", phase))
    seqs = axis_values(results, "seq_len", phase)
    if not batches or not seqs:
        return None
    if not any(is_ok(r) for k, r in index.items() if k[3] == phase):
        return None
    fig, axes = facet_grid(len(batches), sharex=True)
    any_fail = False
    for ax, b in zip(axes, batches):
        all_y = []
        for slot, v in enumerate(variants):
            pts = [(s, index.get((v, b, s, phase))) for s in seqs]
            xy = [(s, median_ms(r)) for s, r in pts if is_ok(r)]
            if xy:
                xs, ys = zip(*xy)
                ax.plot(xs, ys, color=colors[v], marker="o", markersize=3.5, linewidth=1.6,
                        linestyle="-" if v != BASELINE else "--")
                all_y += ys
            fails = [s for s, r in pts if r is not None and not is_ok(r)]
            if fails:
                any_fail = True
                mark_failures(ax, fails, colors[v], slot)
        size_axis(ax, "x", seqs)
        value_axis(ax, all_y)
        ax.set_title(f"batch {b}")
    for ax in axes:
        ax.set_xlabel("context length (tokens)" if phase == "decode" else "sequence length (tokens)")
        ax.set_ylabel("median latency (ms)" if phase == "prefill" else "median per-token latency (ms)")
    if phase == "prefill":
        fig.suptitle("Prefill latency vs sequence length" + note)
    else:
        fig.suptitle("Decode per-token latency vs context length" + note)
    _legend(fig, variants, colors, [_fail_handle()] if any_fail else [])
    return save(fig, out_dir, f"{phase}_latency.png")


def decode_throughput(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Decode tokens/s vs batch size, one line per variant, one facet per context length."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    seqs, note = pick_facets(axis_values(results, "seq_len", "decode"))
    batches = axis_values(results, "batch_size", "decode")
    if not any(is_ok(r) and r.get("tokens_per_s") for k, r in index.items() if k[3] == "decode"):
        return None
    fig, axes = facet_grid(len(seqs), sharex=True)
    any_fail = False
    for ax, s in zip(axes, seqs):
        all_y = []
        for slot, v in enumerate(variants):
            pts = [(b, index.get((v, b, s, "decode"))) for b in batches]
            xy = [(b, get_num(r, "tokens_per_s")) for b, r in pts if is_ok(r) and get_num(r, "tokens_per_s")]
            if xy:
                xs, ys = zip(*xy)
                ax.plot(xs, ys, color=colors[v], marker="o", markersize=3.5, linewidth=1.6,
                        linestyle="-" if v != BASELINE else "--")
                all_y += ys
            fails = [b for b, r in pts if r is not None and not is_ok(r)]
            if fails:
                any_fail = True
                mark_failures(ax, fails, colors[v], slot)
        size_axis(ax, "x", batches)
        value_axis(ax, all_y)
        ax.set_title(f"context {s}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode throughput (tokens/s)")
    fig.suptitle("Decode throughput vs batch size" + note)
    _legend(fig, variants, colors, [_fail_handle()] if any_fail else [])
    return save(fig, out_dir, "decode_throughput.png")


def memory_vs_seq(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Peak measured memory (solid) and analytic KV-cache bytes (dashed) vs seq_len; OOM at the top."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    batches, note = pick_facets(axis_values(results, "batch_size"))
    seqs = axis_values(results, "seq_len")
    sources = set()
    have_any = False
    fig, axes = facet_grid(len(batches), sharex=True)
    any_fail = False
    for ax, b in zip(axes, batches):
        all_y = []
        for slot, v in enumerate(variants):
            mem_xy, kv_xy, fails = [], [], []
            for s in seqs:
                recs = [index.get((v, b, s, p)) for p in ("prefill", "decode")]
                recs = [r for r in recs if r is not None]
                if not recs:
                    continue
                if any(not is_ok(r) for r in recs):
                    fails.append(s)
                peaks = [peak_memory(r) for r in recs if is_ok(r)]
                peaks = [p for p in peaks if p[0] is not None]
                if peaks:
                    val, src = max(peaks)
                    sources.add(src)
                    mem_xy.append((s, val / 2 ** 30))
                kv = [get_num(r, "kv_cache_bytes") for r in recs]
                kv = [x for x in kv if x]
                if kv:
                    kv_xy.append((s, max(kv) / 2 ** 30))
            for xy, ls in ((mem_xy, "-"), (kv_xy, ":")):
                if xy:
                    have_any = True
                    xs, ys = zip(*xy)
                    ax.plot(xs, ys, color=colors[v], linestyle=ls, marker="o" if ls == "-" else None,
                            markersize=3.5, linewidth=1.6 if ls == "-" else 2.0)
                    all_y += ys
            if fails:
                any_fail = True
                mark_failures(ax, fails, colors[v], slot)
        size_axis(ax, "x", seqs)
        value_axis(ax, all_y)
        ax.set_title(f"batch {b}")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("GiB")
    if not have_any:
        plt.close(fig)
        return None
    src = "/".join(sorted(sources)) or "measured"
    fig.suptitle(f"Peak memory ({src}, solid) and KV cache (analytic, dotted) vs sequence length" + note)
    extra = [Line2D([], [], color="gray", linestyle="-", label=f"peak memory ({src})"),
             Line2D([], [], color="gray", linestyle=":", linewidth=2, label="KV cache")]
    if any_fail:
        extra.append(_fail_handle("OOM / error (marked at top)"))
    _legend(fig, variants, colors, extra)
    return save(fig, out_dir, "memory.png")


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
                    labels[i][j] = "no base"
                elif not is_ok(base):
                    labels[i][j] = "base\nOOM" if base["status"] == "oom" else "base\nfail"
        data[v] = (grid, labels)
    lim = min(lim, 4.0)
    norm = TwoSlopeNorm(vmin=1 / lim, vcenter=1.0, vmax=lim)
    n = len(variants)
    cell_w, cell_h = 0.62, 0.42
    w = max(3.2, cell_w * ns + 1.6)
    h = max(2.4, cell_h * nb + 1.2)
    fig, axes = facet_grid(n, w=w, h=h, max_cols=3 if ns <= 8 else 2, sharex=False)
    fs = 8 if ns <= 8 else 7
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#dddddd")
    im = None
    for ax, v in zip(axes, variants):
        grid, labels = data[v]
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", origin="lower")
        ax.grid(False)
        for i in range(nb):
            for j in range(ns):
                txt = labels[i][j]
                if txt:
                    ax.text(j, i, txt, ha="center", va="center", fontsize=fs if "\n" not in txt else fs - 1,
                            color="black")
        ax.set_xticks(range(ns), [_short_int(s) for s in seqs], rotation=45 if ns > 8 else 0)
        ax.set_yticks(range(nb), [str(b) for b in batches])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("batch size")
        ax.set_title(v)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8, label="speedup over baseline (×, >1 = faster)")
        cb.ax.set_yscale("linear")
    fig.suptitle(f"{phase.capitalize()} speedup over baseline (baseline median / variant median)")
    return save(fig, out_dir, f"speedup_{phase}.png")


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
    pt = representative_point(results, index)
    if pt is None:
        return None
    b, s = pt
    variants = variants_of(results)
    phases = [p for p in ("prefill", "decode")
              if any((index.get((v, b, s, p)) or {}).get("flops", {}).get("analytic_breakdown")
                     for v in variants)]
    fig, axes = plt.subplots(1, len(phases), figsize=(max(4.5, 1.1 * len(variants) + 2) * len(phases), 4.6),
                             squeeze=False, layout="constrained")
    for ax, phase in zip(axes[0], phases):
        bottoms = np.zeros(len(variants))
        totals = []
        for part in FLOP_PARTS:
            vals = []
            for v in variants:
                bd = ((index.get((v, b, s, phase)) or {}).get("flops") or {}).get("analytic_breakdown") or {}
                vals.append(float(bd.get(part) or 0.0))
            vals = np.array(vals)
            ax.bar(range(len(variants)), vals / 1e9, bottom=bottoms / 1e9, color=FLOP_COLORS[part],
                   label=part, width=0.65)
            bottoms += vals
        totals = bottoms
        for i, t in enumerate(totals):
            if t:
                ax.text(i, t / 1e9, human_flops(t), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(variants)), variants, rotation=20 if len(variants) > 4 else 0)
        ax.set_ylabel("analytic GFLOP")
        what = "forward" if phase == "prefill" else f"all {_decode_tokens(results, index)} steps"
        ax.set_title(f"{phase} ({what})")
        ax.margins(y=0.12)
    axes[0][0].legend(loc="upper right", frameon=True)
    fig.suptitle(f"Analytic FLOPs by component at batch {b}, seq_len {s}")
    return save(fig, out_dir, "flops_breakdown.png")


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

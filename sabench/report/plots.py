"""PNG figures for report.md and compare.md (matplotlib, Agg backend: no display needed).

Every figure function writes one PNG into `out_dir` and returns its file name, or None when
the run has nothing to show for it.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, LogLocator, NullLocator  # noqa: E402

from sabench.report.results import (BASELINE, Key, axis_values, geomean, get_num,
                                    is_ok, median_ms, peak_memory, speedup, variants_of)

DPI = 100
PHASE_MARKERS = {"prefill": "o", "decode": "^"}
FAIL_STYLE = dict(marker="X", markersize=9, markeredgecolor="red", markeredgewidth=1.5, linestyle="none")
# phase -> (x label, y label) of the latency figures
LATENCY_LABELS = {"prefill": ("sequence length (tokens)", "median latency (ms)"),
                  "decode": ("context length (prompt tokens)", "median per-token latency (ms)")}

plt.rcParams.update({
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "figure.titlesize": 13, "figure.titleweight": "bold",
})

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]


def variant_colors(variants: Sequence[str]) -> Dict[str, str]:
    """Near-black for the baseline, the palette in turn for the others."""
    palette = itertools.cycle(_PALETTE)
    return {v: "#111111" if v == BASELINE else next(palette) for v in variants}


# ---------------------------------------------------------------------------- helpers


def pick_facets(values: List, limit: int = 9) -> Tuple[List, str]:
    """At most `limit` values, evenly spread and keeping both ends; plus a note when some are left out."""
    if len(values) <= limit:
        return list(values), ""
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, limit)).astype(int))
    return [values[i] for i in idx], f" (showing {len(idx)} of {len(values)})"


class Grid:
    """A grid of facets laid out with fixed margins in inches (much cheaper than constrained layout),
    with the figure legend of `handles` below it in as many columns as fit."""

    def __init__(self, n: int, w: float = 3.9, h: float = 2.8, max_cols: int = 3, handles: Sequence = (),
                 legend_cols: int = 6, right: float = 0.25, hspace: float = 0.85):
        ncols = 2 if n == 4 else min(n, max_cols)
        nrows = math.ceil(n / ncols)
        left, top, wspace = 0.85, 0.75, 0.85
        W = left + right + ncols * w + (ncols - 1) * wspace
        # legend columns as matplotlib fills them (contiguous runs), labels at ~0.075 in per character
        widths = [0.75 + 0.075 * len(hd.get_label()) for hd in handles]
        self.ncol = max(1, min(legend_cols, len(handles)))
        while self.ncol > 1 and sum(max(c) for c in np.array_split(widths, self.ncol)) > W - 0.3:
            self.ncol -= 1
        bottom = 0.65 + 0.27 * math.ceil(len(handles) / self.ncol)
        H = top + bottom + nrows * h + (nrows - 1) * hspace
        self.W, self.H, self.handles = W, H, list(handles)
        self.fig = plt.figure(figsize=(W, H))
        gs = self.fig.add_gridspec(nrows, ncols, left=left / W, right=1 - right / W, top=1 - top / H,
                                   bottom=bottom / H, wspace=wspace / w, hspace=hspace / h)
        self.axes = [self.fig.add_subplot(gs[i // ncols, i % ncols]) for i in range(n)]
        self.right_edge, self.top_edge, self.bottom_edge = 1 - right / W, 1 - top / H, bottom / H

    def save(self, out_dir: Path, name: str, title: str) -> str:
        self.fig.suptitle(title, y=1 - 0.22 / self.H, va="top")
        if self.handles:
            self.fig.legend(handles=self.handles, loc="lower center", bbox_to_anchor=(0.5, 0.08 / self.H),
                            ncol=self.ncol, frameon=False, columnspacing=1.2, handletextpad=0.5)
        return save(self.fig, out_dir, name)


def _short_int(x: float, _pos=None) -> str:
    x = int(round(x))
    return f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x)


def fmt_tick(x: float, _pos=None) -> str:
    """Plain numbers, then k from 10k, M, G (EngFormatter would also write 0.3 as 300m)."""
    if x <= 0:
        return "0"
    if x >= 1e9:
        return f"{x / 1e9:g}G"
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    return f"{x / 1e3:g}k" if x >= 1e4 else f"{x:g}"


def size_axis(ax, values: Sequence[float]):
    """x over the sweep's sizes: log2 when they span 8x or more, the sizes themselves as ticks
    (at most ~8, both ends kept), a little room either side."""
    vals = sorted({float(v) for v in values if v and v > 0})
    if not vals:
        return
    lo, hi = vals[0], vals[-1]
    if hi / lo >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xlim(lo / 1.25, hi * 1.25)
    else:
        pad = (hi - lo) * 0.05 or 0.5
        ax.set_xlim(lo - pad, hi + pad)
    step = math.ceil(len(vals) / 8)
    ax.xaxis.set_major_locator(FixedLocator(vals[::step] + ([hi] if (len(vals) - 1) % step else [])))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(_short_int)


def value_axis(ax, values: Sequence[float]):
    """Log y scale when the values span 20x or more, with 1-2-5 ticks labelled as plain numbers."""
    vals = [v for v in values if v is not None and v > 0]
    if not vals or max(vals) / min(vals) < 20:
        return
    ax.set_yscale("log")
    decades = math.log10(max(vals) / min(vals))
    subs = (1.0, 2.0, 5.0) if decades <= 2.2 else ((1.0, 3.0) if decades <= 3.5 else (1.0,))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(fmt_tick)


def _fail_handle() -> Line2D:
    """The legend entry for mark_failures' markers."""
    return Line2D([], [], markerfacecolor="white", label="OOM / error / skipped (marked at top)", **FAIL_STYLE)


def mark_failures(ax, xs: Sequence[float], color: str, slot: int):
    """Red-edged X markers (in the series colour) along the top edge of the axes, a row per slot."""
    if xs:
        ax.plot(xs, [0.965 - 0.03 * (slot % 4)] * len(xs), transform=ax.get_xaxis_transform(),
                markerfacecolor=color, clip_on=False, **FAIL_STYLE)


def _facet_axes(ax, title: str, xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str,
                failed: bool = False):
    """Size x axis, value y axis, room at the top for failure markers, titles."""
    size_axis(ax, xs)
    value_axis(ax, ys)
    if failed:
        lo, hi = ax.get_ylim()
        log = ax.get_yscale() == "log" and lo > 0
        ax.set_ylim(lo, hi * (hi / lo) ** 0.16 if log else hi + (hi - lo) * 0.16)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)


def _unit(x: float, units: Sequence[Tuple[str, float]]) -> Tuple[str, float]:
    """The first (name, scale), largest first, that x reaches; the last one otherwise."""
    return next((u for u in units if x >= u[1]), units[-1])


def save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI)
    plt.close(fig)
    return name


# ---------------------------------------------------------------------------- figures


def _facet_lines(results: dict, index: Dict[Key, dict], out_dir: Path, name: str, title: str, *,
                 phases: Sequence[str], facet: str, facet_label: str, xlabel: str, ylabel: str,
                 series: Sequence[Tuple[str, Callable[[List[dict]], Optional[float]]]],
                 extra_handles: Sequence[Line2D] = ()) -> Optional[str]:
    """One facet per `facet` value ("batch_size" or "seq_len"), the other size on x, a line per variant
    and series. `series` is [(line style, value(records of `phases` at a point) -> y or None)]; solid
    ones get markers (dashed for the baseline). A point with a failed record is marked at the top."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    f_i, x_i = (1, 2) if facet == "batch_size" else (2, 1)  # their places in the (v, b, s, phase) key
    at: Dict[Tuple[str, int, int], List[dict]] = {}
    for k, r in index.items():
        if k[3] in phases:
            at.setdefault((k[0], k[f_i], k[x_i]), []).append(r)
    facets, note = pick_facets(sorted({f for _, f, _ in at}))
    xs_all = sorted({x for _, _, x in at})
    if not facets:
        return None
    handles = [Line2D([], [], color=colors[v], marker="o", markersize=4,
                      linestyle="--" if v == BASELINE else "-", label=v) for v in variants]
    handles += extra_handles
    if not all(is_ok(r) for rs in at.values() for r in rs):
        handles.append(_fail_handle())
    g = Grid(len(facets), handles=handles)
    drawn = False
    for ax, f in zip(g.axes, facets):
        ys_all, failed = [], False
        for slot, v in enumerate(variants):
            pts = {x: at[v, f, x] for x in xs_all if (v, f, x) in at}
            for style, value in series:
                xy = [(x, value(rs)) for x, rs in pts.items()]
                xy = [(x, y) for x, y in xy if y is not None and y > 0]
                if xy:
                    px, py = zip(*xy)
                    ax.plot(px, py, color=colors[v], linestyle="--" if v == BASELINE and style == "-" else style,
                            marker="o" if style == "-" else None, markersize=3.5,
                            linewidth=1.6 if style == "-" else 2.2)
                    ys_all += py
            fails = [x for x, rs in pts.items() if not all(is_ok(r) for r in rs)]
            mark_failures(ax, fails, colors[v], slot)
            failed = failed or bool(fails)
        drawn = drawn or bool(ys_all)
        _facet_axes(ax, f"{facet_label} {f}", xs_all, ys_all, xlabel, ylabel, failed)
    if not drawn:
        plt.close(g.fig)
        return None
    return g.save(out_dir, name, title + note)


def latency_vs_seq(results: dict, index: Dict[Key, dict], out_dir: Path, phase: str) -> Optional[str]:
    """Median latency vs seq_len, one line per variant, one facet per batch size."""
    title = ("Prefill latency vs sequence length" if phase == "prefill"
             else "Decode per-token latency vs context length")
    xlabel, ylabel = LATENCY_LABELS[phase]
    return _facet_lines(results, index, out_dir, f"{phase}_latency.png", title, phases=(phase,),
                        facet="batch_size", facet_label="batch", xlabel=xlabel, ylabel=ylabel,
                        series=[("-", lambda rs: median_ms(rs[0]))])


def decode_throughput(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Decode tokens/s vs batch size, one line per variant, one facet per context length."""
    return _facet_lines(results, index, out_dir, "decode_throughput.png", "Decode throughput vs batch size",
                        phases=("decode",), facet="seq_len", facet_label="context", xlabel="batch size",
                        ylabel="decode throughput (tokens/s)",
                        series=[("-", lambda rs: get_num(rs[0], "tokens_per_s") if is_ok(rs[0]) else None)])


def memory_vs_seq(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """The points' device peak (solid; max of the phases) and analytic KV-cache bytes (dotted) vs
    seq_len; failures at the top."""
    ok = [r for r in index.values() if is_ok(r)]
    src = "/".join(sorted({peak_memory(r)[1] for r in ok if peak_memory(r)[1]})) or "measured"
    biggest = max([peak_memory(r)[0] or 0 for r in ok] + [get_num(r, "kv_cache_bytes") or 0 for r in index.values()]
                  + [0])
    unit, scale = _unit(biggest, (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 1024)))

    def largest(xs):
        xs = [x for x in xs if x]
        return max(xs) / scale if xs else None

    extra = [Line2D([], [], color="gray", linestyle="-", marker="o", markersize=4, label=f"device peak ({src})"),
             Line2D([], [], color="gray", linestyle=":", linewidth=2.2, label="KV cache (analytic)")]
    return _facet_lines(results, index, out_dir, "memory.png",
                        f"Device peak ({src}, solid) and KV cache (dotted) vs sequence length",
                        phases=("prefill", "decode"), facet="batch_size", facet_label="batch",
                        xlabel="sequence length (tokens)", ylabel=f"memory ({unit})", extra_handles=extra,
                        series=[("-", lambda rs: largest(peak_memory(r)[0] for r in rs if is_ok(r))),
                                (":", lambda rs: largest(get_num(r, "kv_cache_bytes") for r in rs))])


def speedup_heatmap(results: dict, index: Dict[Key, dict], out_dir: Path, phase: str) -> Optional[str]:
    """Baseline median / variant median per (batch, seq_len), one panel per non-baseline variant."""
    variants = [v for v in variants_of(results) if v != BASELINE]
    if not variants or not any(k[0] == BASELINE and k[3] == phase for k in index):
        return None
    batches, seqs = axis_values(results, "batch_size", phase), axis_values(results, "seq_len", phase)
    nb, ns = len(batches), len(seqs)
    short = {"oom": "OOM", "error": "err"}  # any other failure: "skip"
    data, lim = {}, 1.05
    for v in variants:  # the speedups, and each cell's text: the speedup or why there is none
        arr, labels = np.full((nb, ns), np.nan), {}
        for (i, b), (j, s) in itertools.product(enumerate(batches), enumerate(seqs)):
            base, cur = index.get((BASELINE, b, s, phase)), index.get((v, b, s, phase))
            sp = speedup(base, cur)
            if sp is not None:
                arr[i, j], labels[i, j] = sp, f"{sp:.2f}"
                lim = max(lim, sp, 1 / sp)
            elif cur is None:
                labels[i, j] = "—"
            elif not is_ok(cur):
                labels[i, j] = short.get(cur["status"], "skip")
            elif base is None:
                labels[i, j] = "no\nbase"
            elif not is_ok(base):
                labels[i, j] = "base\n" + short.get(base["status"], "skip")
        data[v] = (arr, labels)
    if all(np.isnan(arr).all() for arr, _ in data.values()):
        return None
    lim = min(max(lim, 1.25), 4.0)  # a few % either way stays pale
    norm = LogNorm(vmin=1 / lim, vmax=lim)  # symmetric around 1x on a log scale
    g = Grid(len(variants), w=max(3.0, 0.55 * ns + 0.6), h=max(2.0, 0.36 * nb + 0.4),
             max_cols=3 if ns <= 6 else 2, right=1.3, hspace=1.0)
    fs = 8 if ns <= 8 else 7
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#e4e4e4")
    for ax, v in zip(g.axes, variants):
        arr, labels = data[v]
        im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, norm=norm, aspect="auto", origin="lower",
                       interpolation="nearest")
        ax.grid(False)
        for (i, j), txt in labels.items():
            ax.text(j, i, txt, ha="center", va="center", color="black", fontsize=fs - 1.5 if "\n" in txt else fs)
        ax.set_xticks(range(ns), [_short_int(s) for s in seqs], rotation=45 if ns > 8 else 0)
        ax.set_yticks(range(nb), [str(b) for b in batches])
        ax.set(xlabel="sequence length (tokens)", ylabel="batch size", title=v)
    cax = g.fig.add_axes([g.right_edge + 0.35 / g.W, g.bottom_edge, 0.18 / g.W, g.top_edge - g.bottom_edge])
    cb = g.fig.colorbar(im, cax=cax, label="speedup (> 1: faster)")
    ticks = ratio_ticks(1 / lim / 1.0001, lim * 1.0001, most=7)
    cb.set_ticks(ticks, labels=[f"{t:.3g}×" for t in ticks])
    cb.minorticks_off()
    return g.save(out_dir, f"speedup_{phase}.png",
                  f"{phase.capitalize()} speedup over baseline (baseline median / variant median)")


FLOP_COLORS = {"projections": "#4c72b0", "attention": "#dd8452", "mlp": "#55a868", "lm_head": "#8172b3"}


def representative_point(results: dict, index: Dict[Key, dict]) -> Optional[Tuple[int, int]]:
    """The largest (batch x seq_len) point where every variant's prefill has a FLOP breakdown,
    preferring points where they all ran ok."""
    variants = variants_of(results)

    def score(pt):
        recs = [index.get((v, *pt, "prefill")) for v in variants]
        have = sum(1 for r in recs if r and (r.get("flops") or {}).get("analytic_breakdown"))
        return have, sum(map(is_ok, recs)), pt[0] * pt[1], pt[1]

    best = max({(k[1], k[2]) for k in index if k[3] == "prefill"}, key=score, default=None)
    return best if best is not None and score(best)[0] else None


def flops_breakdown(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Stacked analytic FLOPs (projections/attention/mlp/lm_head) per variant at one representative point."""
    pt = representative_point(results, index)
    if pt is None:
        return None
    b, s = pt
    variants = variants_of(results)

    def bd_of(v, phase):
        return ((index.get((v, b, s, phase)) or {}).get("flops") or {}).get("analytic_breakdown") or {}

    decode_tokens = results.get("suite", {}).get("decode_tokens")
    if decode_tokens is None:
        found = {r.get("decode_tokens") for k, r in index.items() if k[3] == "decode"} - {None}
        decode_tokens = found.pop() if len(found) == 1 else "decode"
    phases = [p for p in ("prefill", "decode") if any(bd_of(v, p) for v in variants)]
    width = max(4.8, 0.95 * len(variants) + 2.2)
    fig, axes = plt.subplots(1, len(phases), figsize=(width * len(phases), 4.9), squeeze=False)
    fig.subplots_adjust(left=0.8 / (width * len(phases)), right=0.98, top=0.84, bottom=0.24, wspace=0.25)
    for ax, phase in zip(axes[0], phases):
        table = np.array([[float(bd_of(v, phase).get(part) or 0.0) for v in variants] for part in FLOP_COLORS])
        totals = table.sum(axis=0)
        unit, scale = _unit(totals.max(), (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6),
                                           ("FLOP", 1.0)))
        bottoms = np.zeros(len(variants))
        for (part, color), vals in zip(FLOP_COLORS.items(), table):
            bars = ax.bar(range(len(variants)), vals / scale, bottom=bottoms / scale, color=color, width=0.65)
            bottoms += vals
        ax.bar_label(bars, [f"{t / scale:.3g}" if t else "" for t in totals], fontsize=8)  # the totals on top
        ax.set_xticks(range(len(variants)), variants, rotation=20 if len(variants) > 4 else 0)
        ax.set(ylabel=f"analytic {unit}", ylim=(0, totals.max() / scale * 1.12 if totals.max() else 1),
               title=f"{phase}: " + ("one forward" if phase == "prefill" else f"all {decode_tokens} decode steps"))
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in FLOP_COLORS.values()], list(FLOP_COLORS),
               loc="lower center", ncol=4, frameon=False)
    all_ok = all(is_ok(index.get((v, b, s, "prefill"))) for v in variants)
    fig.suptitle(f"Analytic FLOPs by component at batch {b}, seq_len {s}"
                 + (" (the largest point where every variant ran)" if all_ok else ""))
    return save(fig, out_dir, "flops_breakdown.png")


def roofline_scatter(results: dict, index: Dict[Key, dict], out_dir: Path) -> Optional[str]:
    """Measured median vs roofline floor per ok point, colour = variant, marker = phase."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    pts: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for (v, _, _, phase), r in index.items():
        f, m = get_num(r, "floor_ms"), median_ms(r)
        if phase in PHASE_MARKERS and f and m and f > 0 and m > 0:
            pts.setdefault((v, phase), []).append((f, m))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 5.6), layout="constrained")
    for v, phase in itertools.product(variants, PHASE_MARKERS):
        if (v, phase) in pts:
            xs, ys = zip(*pts[v, phase])
            ax.scatter(xs, ys, s=18, color=colors[v], marker=PHASE_MARKERS[phase], alpha=0.75, edgecolors="none")
    every = [c for xy in pts.values() for p in xy for c in p]
    lo, hi = min(every) / 1.5, max(every) * 1.5
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", linewidth=1.2, label="y = x (at the floor)")
    ax.plot(line, 2 * line, color="gray", linestyle="--", linewidth=1, label="2× floor")
    ax.plot(line, 10 * line, color="gray", linestyle=":", linewidth=1, label="10× floor")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi * 2), xlabel="roofline floor per sample (ms)",
           ylabel="measured median per sample (ms)",
           title="Measured latency vs roofline floor\n(prefill: one forward; decode: one token step)")
    ax.xaxis.set_major_formatter(fmt_tick)
    ax.yaxis.set_major_formatter(fmt_tick)
    handles = [Line2D([], [], color=colors[v], marker="o", linestyle="none", label=v) for v in variants]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=p)
                for p, m in PHASE_MARKERS.items() if any(k[1] == p for k in pts)]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], loc="upper left", fontsize=8, frameon=True)
    return save(fig, out_dir, "roofline.png")


def all_figures(results: dict, index: Dict[Key, dict], out_dir: Path) -> Dict[str, Optional[str]]:
    """Every figure of the report: {id: file name or None}."""
    out_dir = Path(out_dir)
    return {"prefill_latency": latency_vs_seq(results, index, out_dir, "prefill"),
            "decode_latency": latency_vs_seq(results, index, out_dir, "decode"),
            "decode_throughput": decode_throughput(results, index, out_dir),
            "memory": memory_vs_seq(results, index, out_dir),
            "speedup_prefill": speedup_heatmap(results, index, out_dir, "prefill"),
            "speedup_decode": speedup_heatmap(results, index, out_dir, "decode"),
            "flops_breakdown": flops_breakdown(results, index, out_dir),
            "roofline": roofline_scatter(results, index, out_dir)}


# ---------------------------------------------------------------------------- compare figures

RATIO_TICKS = (0.25, 1 / 3, 0.5, 2 / 3, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0)  # fine steps near 1x


def ratio_ticks(lo: float, hi: float, most: int = 9) -> List[float]:
    """Ticks for a log ratio axis over [lo, hi]: the finest of these sets that puts at most `most`
    ticks there: fine steps near 1x, powers of 2, 1-2-5 per decade, powers of 10 (each closed
    under 1/x, so a speedup and the same slowdown get mirrored ticks)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    levels = (RATIO_TICKS, [2.0 ** k for k in range(-3 * len(decades) - 3, 3 * len(decades) + 4)],
              [m * 10.0 ** d for d in decades for m in (1, 2, 5)], [10.0 ** d for d in decades])
    for level in levels:
        ticks = sorted(t for t in level if lo <= t <= hi)
        if len(ticks) <= most:
            return ticks
    return ticks
RUN_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v")]


def _in_run_order(run, variants) -> List[str]:
    """`variants` in the run's suite order, any others after them alphabetically."""
    order = {v: i for i, v in enumerate(variants_of(run.results))}
    return sorted(variants, key=lambda v: (order.get(v, 1e9), v))


def compare_latency(runs, shared, out_dir: Path, phase: str) -> Optional[str]:
    """Median latency vs seq_len, one facet per variant, colour = batch size, line style = run."""
    pts = {k for k in shared if k[3] == phase}
    if not pts:
        return None
    variants, note = pick_facets(_in_run_order(runs[0], {k[0] for k in pts}))
    batches_all = sorted({k[1] for k in pts})
    batches, _ = pick_facets(batches_all, 4)
    seqs = sorted({k[2] for k in pts})
    cmap = plt.get_cmap("viridis")
    bcolor = {b: cmap(0.85 * i / max(1, len(batches) - 1)) for i, b in enumerate(batches)}
    styles = list(zip(runs, itertools.cycle(RUN_STYLES)))
    handles = [Line2D([], [], color="gray", linestyle=ls, marker=m, markersize=4, label=r.label)
               for r, (ls, m) in styles]
    handles += [Line2D([], [], color=bcolor[b], linewidth=3, label=f"batch {b}") for b in batches]

    def failed(r, k):  # a shared point this run did not measure (OOM, error, skipped)
        return k in pts and k[1] in bcolor and r.index.get(k) is not None and not is_ok(r.index[k])

    if any(failed(r, k) for r in runs for k in pts):
        handles.append(_fail_handle())
    g = Grid(len(variants), handles=handles, legend_cols=8)
    for ax, v in zip(g.axes, variants):
        ys_all, any_failed = [], False
        for slot, ((r, (ls, m)), b) in enumerate(itertools.product(styles, batches)):
            xy = [(s, median_ms(r.index.get((v, b, s, phase)))) for s in seqs if (v, b, s, phase) in pts]
            xy = [(x, y) for x, y in xy if y]
            if xy:
                xs, ys = zip(*xy)
                ax.plot(xs, ys, color=bcolor[b], linestyle=ls, marker=m, markersize=3.5, linewidth=1.5)
                ys_all += ys
            fails = [s for s in seqs if failed(r, (v, b, s, phase))]
            mark_failures(ax, fails, bcolor[b], slot)
            any_failed = any_failed or bool(fails)
        _facet_axes(ax, v, seqs, ys_all, *LATENCY_LABELS[phase], any_failed)
    more = f", {len(batches)} of {len(batches_all)} batch sizes" if len(batches) < len(batches_all) else ""
    return g.save(out_dir, f"compare_{phase}_latency.png",
                  f"{phase.capitalize()} latency per run (line style = run, colour = batch{more})" + note)


def compare_ratio(runs, shared, out_dir: Path) -> Optional[str]:
    """Per variant and phase: every shared point's latency ratio run / first run, and the geometric mean."""
    ref, others = runs[0], runs[1:]
    variants = _in_run_order(ref, {k[0] for k in shared})
    phases = [p for p in ("prefill", "decode") if any(k[3] == p for k in shared)]
    rng = np.random.default_rng(0)
    nrun = len(others)
    width = max(5.0, 1.0 * len(variants) * max(1, nrun) + 2.0)
    fig, axes = plt.subplots(1, len(phases), figsize=(width * len(phases), 4.8), squeeze=False)
    fig.subplots_adjust(left=0.9 / (width * len(phases)), right=0.98, top=0.84, bottom=0.24, wspace=0.22)
    colors = [_PALETTE[i % len(_PALETTE)] for i in range(nrun)]
    drawn = False
    for ax, phase in zip(axes[0], phases):
        for (ri, r), (vi, v) in itertools.product(enumerate(others), enumerate(variants)):
            meds = [(median_ms(ref.index.get(k)), median_ms(r.index.get(k)))
                    for k in shared if k[0] == v and k[3] == phase]
            ratios = [b / a for a, b in meds if a and b]
            if not ratios:
                continue
            drawn = True
            x0 = vi + (ri - (nrun - 1) / 2) * (0.7 / nrun)
            ax.scatter(x0 + rng.uniform(-0.12, 0.12, len(ratios)) / nrun, ratios, s=10, alpha=0.45,
                       color=colors[ri], edgecolors="none")
            gm = geomean(ratios)
            ax.plot([x0 - 0.2 / nrun, x0 + 0.2 / nrun], [gm, gm], color="black", linewidth=2.2)
        ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        lo, hi = min(lo, 0.95), max(hi, 1.05)
        ax.set_ylim(lo, hi)
        ticks = ratio_ticks(lo, hi)
        ax.set_yticks(ticks, [f"{t:.3g}×" for t in ticks])
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xticks(range(len(variants)), variants, rotation=20 if len(variants) > 4 else 0)
        ax.set(xlim=(-0.6, len(variants) - 0.4), ylabel=f"median latency / {ref.label} (< 1 = faster)", title=phase)
    if not drawn:
        plt.close(fig)
        return None
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=r.label) for r, c in zip(others, colors)]
    handles.append(Line2D([], [], color="black", linewidth=2.2, label="geometric mean"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Latency of each run relative to {ref.label}, every shared point")
    return save(fig, out_dir, "compare_ratio.png")


def compare_figures(runs, shared, out_dir: Path) -> Dict[str, Optional[str]]:
    out_dir = Path(out_dir)
    return {"latency_prefill": compare_latency(runs, shared, out_dir, "prefill"),
            "latency_decode": compare_latency(runs, shared, out_dir, "decode"),
            "ratio": compare_ratio(runs, shared, out_dir)}

"""PNG figures for report.md and compare.md (matplotlib, Agg backend: no display needed).

Every figure function writes one PNG into `out_dir` and returns its file name, or None when
the run has nothing to show for it. This module holds the shared style and axes helpers and the
two entry points; the figures of one run are in plots_run, those comparing runs in plots_compare.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, LogLocator, NullLocator  # noqa: E402

from sabench.report.results import BASELINE

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

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]


def variant_colors(variants: Sequence[str]) -> Dict[str, str]:
    """Near-black for the baseline, the palette in turn for the others."""
    palette = itertools.cycle(PALETTE)
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


def short_int(x: float, _pos=None) -> str:
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
    ax.xaxis.set_major_formatter(short_int)


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


def fail_handle() -> Line2D:
    """The legend entry for mark_failures' markers."""
    return Line2D([], [], markerfacecolor="white", label="OOM / error / skipped (marked at top)", **FAIL_STYLE)


def mark_failures(ax, xs: Sequence[float], color: str, slot: int):
    """Red-edged X markers (in the series colour) along the top edge of the axes, a row per slot."""
    if xs:
        ax.plot(xs, [0.965 - 0.03 * (slot % 4)] * len(xs), transform=ax.get_xaxis_transform(),
                markerfacecolor=color, clip_on=False, **FAIL_STYLE)


def facet_axes(ax, title: str, xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str,
                failed: bool = False):
    """Size x axis, value y axis, room at the top for failure markers, titles."""
    size_axis(ax, xs)
    value_axis(ax, ys)
    if failed:
        lo, hi = ax.get_ylim()
        log = ax.get_yscale() == "log" and lo > 0
        ax.set_ylim(lo, hi * (hi / lo) ** 0.16 if log else hi + (hi - lo) * 0.16)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)


def axis_unit(x: float, units: Sequence[Tuple[str, float]]) -> Tuple[str, float]:
    """The first (name, scale), largest first, that x reaches; the last one otherwise."""
    return next((u for u in units if x >= u[1]), units[-1])


def save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI)
    plt.close(fig)
    return name


# ---------------------------------------------------------------------------- ratio axes

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

"""The figures of compare.md: each run's latency per variant, and latency ratios against the first run."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from sabench.report.plots import (LATENCY_LABELS, PALETTE, Grid, facet_axes, fail_handle, mark_failures,
                                  pick_facets, plt, ratio_ticks, save)
from sabench.report.intervals import time_ratio
from sabench.stats import geomean_interval
from sabench.report.results import is_ok, median_ms, variants_of


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
        handles.append(fail_handle())
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
        facet_axes(ax, v, seqs, ys_all, *LATENCY_LABELS[phase], any_failed)
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
    colors = [PALETTE[i % len(PALETTE)] for i in range(nrun)]
    drawn = within = False
    for ax, phase in zip(axes[0], phases):
        for (ri, r), (vi, v) in itertools.product(enumerate(others), enumerate(variants)):
            ests = [time_ratio(ref.index.get(k), r.index.get(k), same_run=False)
                    for k in sorted(shared) if k[0] == v and k[3] == phase]
            ests = [e for e in ests if e is not None]
            if not ests:
                continue
            drawn = True
            x0 = vi + (ri - (nrun - 1) / 2) * (0.7 / nrun)
            xs = x0 + rng.uniform(-0.12, 0.12, len(ests)) / nrun
            ys = np.array([e.ratio for e in ests])
            err = [ys - [e.low for e in ests], [e.high for e in ests] - ys]
            ax.errorbar(xs, ys, yerr=err, fmt="o", markersize=3, alpha=0.55, color=colors[ri], linewidth=0.8)
            gm = geomean_interval(ests)
            ax.plot([x0 - 0.2 / nrun, x0 + 0.2 / nrun], [gm.ratio, gm.ratio], color="black", linewidth=2.2)
            ax.fill_between([x0 - 0.2 / nrun, x0 + 0.2 / nrun], gm.low, gm.high, color="black", alpha=0.2,
                            linewidth=0)
            within = within or gm.within_process
        ax.axhline(1.0, color="gray", linewidth=1.2, linestyle="--")
        ax.axhspan(1 / 1.05, 1.05, color="gray", alpha=0.12, linewidth=0)
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
    handles.append(Line2D([], [], color="black", linewidth=2.2, label="geometric mean (band: 95% interval)"))
    handles.append(Line2D([], [], color="gray", linestyle="--", label="no difference (band: ±5%)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Latency of each run relative to {ref.label}, every shared point with its 95% interval"
                 + (" (within-process only)" if within else ""))
    return save(fig, out_dir, "compare_ratio.png")


def compare_figures(runs, shared, out_dir: Path) -> Dict[str, Optional[str]]:
    """The figures of compare.md: {id: file name or None}."""
    out_dir = Path(out_dir)
    return {"latency_prefill": compare_latency(runs, shared, out_dir, "prefill"),
            "latency_decode": compare_latency(runs, shared, out_dir, "decode"),
            "ratio": compare_ratio(runs, shared, out_dir)}

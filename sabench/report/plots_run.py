"""The figures of one run's report: latency, throughput, memory, speedup heatmaps, FLOPs, roofline."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D

from sabench.report.plots import (LATENCY_LABELS, PHASE_MARKERS, Grid, facet_axes, fail_handle, short_int,
                                  axis_unit, fmt_tick, mark_failures, pick_facets, plt, ratio_ticks, save,
                                  variant_colors)
from sabench.report.intervals import is_noisy, latency_band, speed_verdict
from sabench.report.intervals import speedup as speedup_interval
from sabench.records import Key, PhaseRecord, RunRecord
from sabench.report.results import (BASELINE, axis_values, flops_breakdown as breakdown_of, is_ok, median_ms,
                                    peak_memory, variants_of)


def _facet_lines(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path, name: str, title: str, *,
                 phases: Sequence[str], facet: str, facet_label: str, xlabel: str, ylabel: str,
                 series: Sequence[Tuple[str, Callable[[List[PhaseRecord]], Optional[float]]]],
                 extra_handles: Sequence[Line2D] = (), band=None) -> Optional[str]:
    """One facet per `facet` value ("batch_size" or "seq_len"), the other size on x, a line per variant
    and series. `series` is [(line style, value(records of `phases` at a point) -> y or None)]; solid
    ones get markers (dashed for the baseline). A point with a failed record is marked at the top.
    band(records) -> (low, high, within_process) or None: error bars around the solid series; points
    whose timing was flagged unstable are drawn hollow."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    f_i, x_i = (1, 2) if facet == "batch_size" else (2, 1)  # their places in the (v, b, s, phase) key
    at: Dict[Tuple[str, int, int], List[PhaseRecord]] = {}
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
        handles.append(fail_handle())
    bands = {key: band(rs) for key, rs in at.items()} if band is not None else {}
    if any(bands.values()):
        within = any(b[2] for b in bands.values() if b)
        handles.append(Line2D([], [], color="gray", marker="|", markersize=9, linestyle="none",
                              label="p10–p90 of steps (within-process)" if within
                              else "range of per-round medians"))
    noisy = {key for key, rs in at.items() if any(is_noisy(r) for r in rs)}
    if band is not None and noisy:
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle="none",
                              label="noisy (p90/p10 above the stability threshold)"))
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
                    if style == "-" and band is not None:
                        _bands(ax, v, f, px, py, bands, noisy, colors[v])
            fails = [x for x, rs in pts.items() if not all(is_ok(r) for r in rs)]
            mark_failures(ax, fails, colors[v], slot)
            failed = failed or bool(fails)
        drawn = drawn or bool(ys_all)
        facet_axes(ax, f"{facet_label} {f}", xs_all, ys_all, xlabel, ylabel, failed)
    if not drawn:
        plt.close(g.fig)
        return None
    return g.save(out_dir, name, title + note)


def _bands(ax, v, f, px, py, bands, noisy, color) -> None:
    """Error bars from each point's band, and hollow markers on noisy points."""
    for x, y in zip(px, py):
        b = bands.get((v, f, x))
        if b and b[0] > 0:
            ax.errorbar([x], [y], yerr=[[max(y - b[0], 0)], [max(b[1] - y, 0)]], color=color, linewidth=1,
                        capsize=2.5, fmt="none")
        if (v, f, x) in noisy:
            ax.plot([x], [y], marker="o", markersize=6.5, markerfacecolor="white", markeredgecolor=color,
                    linestyle="none", zorder=4)


def latency_vs_seq(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path, phase: str) -> Optional[str]:
    """Median latency vs seq_len, one line per variant, one facet per batch size."""
    title = ("Prefill latency vs sequence length" if phase == "prefill"
             else "Decode per-token latency vs context length")
    xlabel, ylabel = LATENCY_LABELS[phase]
    return _facet_lines(results, index, out_dir, f"{phase}_latency.png", title, phases=(phase,),
                        facet="batch_size", facet_label="batch", xlabel=xlabel, ylabel=ylabel,
                        series=[("-", lambda rs: median_ms(rs[0]))], band=lambda rs: latency_band(rs[0]))


def decode_throughput(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path) -> Optional[str]:
    """Decode tokens/s vs batch size, one line per variant, one facet per context length."""
    return _facet_lines(results, index, out_dir, "decode_throughput.png", "Decode throughput vs batch size",
                        phases=("decode",), facet="seq_len", facet_label="context", xlabel="batch size",
                        ylabel="decode throughput (tokens/s)",
                        series=[("-", lambda rs: rs[0].tokens_per_s if is_ok(rs[0]) else None)])


def memory_vs_seq(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path) -> Optional[str]:
    """The points' device peak (solid; max of the phases) and analytic KV-cache bytes (dotted) vs
    seq_len; failures at the top."""
    ok = [r for r in index.values() if is_ok(r)]
    src = "/".join(sorted({peak_memory(r)[1] for r in ok if peak_memory(r)[1]})) or "measured"
    biggest = max([peak_memory(r)[0] or 0 for r in ok] + [r.kv_cache_bytes or 0 for r in index.values()]
                  + [0])
    unit, scale = axis_unit(biggest, (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 1024)))

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
                                (":", lambda rs: largest(r.kv_cache_bytes for r in rs))])


def speedup_heatmap(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path, phase: str) -> Optional[str]:
    """Baseline median / variant median per (batch, seq_len), one panel per non-baseline variant."""
    variants = [v for v in variants_of(results) if v != BASELINE]
    if not variants or not any(k[0] == BASELINE and k[3] == phase for k in index):
        return None
    batches, seqs = axis_values(results, "batch_size", phase), axis_values(results, "seq_len", phase)
    nb, ns = len(batches), len(seqs)
    short = {"oom": "OOM", "error": "err", "killed": "killed"}  # any other failure: "skip"
    data, lim = {}, 1.05
    for v in variants:  # the speedups, and each cell's text: the speedup or why there is none
        arr, labels = np.full((nb, ns), np.nan), {}
        for (i, b), (j, s) in itertools.product(enumerate(batches), enumerate(seqs)):
            base, cur = index.get((BASELINE, b, s, phase)), index.get((v, b, s, phase))
            est = speedup_interval(base, cur, same_run=True)
            if est is not None:  # coloured only where the verdict says so; otherwise neutral, marked ≈
                sp = est.ratio
                said = speed_verdict(est).label != "not distinguishable"
                arr[i, j] = sp if said else 1.0
                labels[i, j] = f"{'' if said else '≈'}{sp:.2f}\n[{est.low:.2f},{est.high:.2f}]"
                lim = max(lim, sp, 1 / sp)
            elif cur is None:
                labels[i, j] = "—"
            elif not is_ok(cur):
                labels[i, j] = short.get(cur.status, "skip")
            elif base is None:
                labels[i, j] = "no\nbase"
            elif not is_ok(base):
                labels[i, j] = "base\n" + short.get(base.status, "skip")
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
        ax.set_xticks(range(ns), [short_int(s) for s in seqs], rotation=45 if ns > 8 else 0)
        ax.set_yticks(range(nb), [str(b) for b in batches])
        ax.set(xlabel="sequence length (tokens)", ylabel="batch size", title=v)
    cax = g.fig.add_axes([g.right_edge + 0.35 / g.W, g.bottom_edge, 0.18 / g.W, g.top_edge - g.bottom_edge])
    cb = g.fig.colorbar(im, cax=cax, label="speedup (> 1: faster)")
    ticks = ratio_ticks(1 / lim / 1.0001, lim * 1.0001, most=7)
    cb.set_ticks(ticks, labels=[f"{t:.3g}×" for t in ticks])
    cb.minorticks_off()
    return g.save(out_dir, f"speedup_{phase}.png",
                  f"{phase.capitalize()} speedup [95% interval]; ≈: not distinguishable")


FLOP_COLORS = {"projections": "#4c72b0", "attention": "#dd8452", "mlp": "#55a868", "lm_head": "#8172b3"}


def representative_point(results: RunRecord, index: Dict[Key, PhaseRecord]) -> Optional[Tuple[int, int]]:
    """The largest (batch x seq_len) point where every variant's prefill has a FLOP breakdown,
    preferring points where they all ran ok."""
    variants = variants_of(results)

    def score(pt):
        recs = [index.get((v, *pt, "prefill")) for v in variants]
        have = sum(1 for r in recs if breakdown_of(r))
        return have, sum(map(is_ok, recs)), pt[0] * pt[1], pt[1]

    best = max({(k[1], k[2]) for k in index if k[3] == "prefill"}, key=score, default=None)
    return best if best is not None and score(best)[0] else None


def flops_breakdown(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path) -> Optional[str]:
    """Stacked analytic FLOPs (projections/attention/mlp/lm_head) per variant at one representative point."""
    pt = representative_point(results, index)
    if pt is None:
        return None
    b, s = pt
    variants = variants_of(results)

    def bd_of(v, phase):
        return breakdown_of(index.get((v, b, s, phase)))

    decode_tokens = results.suite.get("decode_tokens")
    if decode_tokens is None:
        found = {r.decode_tokens for k, r in index.items() if k[3] == "decode"} - {None}
        decode_tokens = found.pop() if len(found) == 1 else "decode"
    phases = [p for p in ("prefill", "decode") if any(bd_of(v, p) for v in variants)]
    width = max(4.8, 0.95 * len(variants) + 2.2)
    fig, axes = plt.subplots(1, len(phases), figsize=(width * len(phases), 4.9), squeeze=False)
    fig.subplots_adjust(left=0.8 / (width * len(phases)), right=0.98, top=0.84, bottom=0.24, wspace=0.25)
    for ax, phase in zip(axes[0], phases):
        table = np.array([[float(bd_of(v, phase).get(part) or 0.0) for v in variants] for part in FLOP_COLORS])
        totals = table.sum(axis=0)
        unit, scale = axis_unit(totals.max(), (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6),
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


def roofline_scatter(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path) -> Optional[str]:
    """Measured median vs roofline floor per ok point, colour = variant, marker = phase."""
    variants = variants_of(results)
    colors = variant_colors(variants)
    pts: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for (v, _, _, phase), r in index.items():
        f, m = r.floor_ms, median_ms(r)
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


def all_figures(results: RunRecord, index: Dict[Key, PhaseRecord], out_dir: Path) -> Dict[str, Optional[str]]:
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

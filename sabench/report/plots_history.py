"""The history trend plot: one panel per (suite, machine), a line per point, steps marked."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from sabench.history import METRICS, Trend
from sabench.report.history import trend_groups


def plot_trends(trends: List[Trend], path, max_lines: int = 10) -> Optional[Path]:
    """One panel per (suite, machine); x = runs in time order (commit labels), one line per point,
    steps circled in red. When there are more points than `max_lines`, the ones that moved most are drawn."""
    if not trends:
        return None
    from sabench.report import plots

    plt = plots.plt
    groups = trend_groups(trends)
    metric = trends[0].metric
    unit = METRICS[metric][0]
    n = len(groups)
    fig, axes = plt.subplots(n, 1, figsize=(10, 4.2 * n + 0.8), squeeze=False)
    fig.subplots_adjust(left=0.09, right=0.70, top=1 - 0.55 / (4.2 * n + 0.8), bottom=0.9 / (4.2 * n + 0.8),
                        hspace=0.55)
    for ax, ((suite, machine), ts, runs) in zip(axes[:, 0], groups):
        pos = {r.run_key: i for i, r in enumerate(runs)}

        def spread(t: Trend) -> float:
            vals = [p.value for p in t.points if p.value]
            return (len(t.steps), (max(vals) / min(vals)) if vals else 1.0)

        chosen = sorted(ts, key=spread, reverse=True)[:max_lines]
        chosen.sort(key=lambda t: ts.index(t))
        colors = plt.get_cmap("tab10")
        all_vals = []
        # several points of different magnitudes: plot each relative to its first value
        relative = len(chosen) > 1
        for i, t in enumerate(chosen):
            xy = [(pos[p.run.run_key], p.value) for p in t.points if p.value is not None]
            if not xy:
                continue
            ref = xy[0][1] if relative and xy[0][1] else 1.0
            xs, ys = zip(*[(x, y / ref) for x, y in xy])
            all_vals += ys
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, color=colors(i % 10), label=t.label)
            st = [(pos[p.run.run_key], p.value / ref) for p in t.points if p.step]
            if st:
                sx, sy = zip(*st)
                ax.scatter(sx, sy, s=140, facecolors="none", edgecolors="red", linewidths=1.8, zorder=5)
            fails = [pos[p.run.run_key] for p in t.points if p.value is None]
            if fails:
                plots.mark_failures(ax, fails, colors(i % 10), i)
        if relative:
            ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
        else:
            plots.value_axis(ax, all_vals)
        labels = []
        seen: Dict[str, int] = {}
        for r in runs:
            k = seen.get(r.commit_short, 0) + 1
            seen[r.commit_short] = k
            labels.append(r.commit_short + (f"#{k}" if k > 1 else "") + "\n" + r.created[:10])
        ax.set_xticks(range(len(runs)), labels, rotation=0 if len(runs) <= 8 else 45, fontsize=8)
        ax.set_xlim(-0.5, len(runs) - 0.5)
        ax.set_xlabel("run (git commit, date), oldest first")
        ax.set_ylabel(f"{unit}\nrelative to the point's first run" if relative else unit)
        host = runs[0].host or "?"
        more = f", {len(chosen)} of {len(ts)} points (most moved)" if len(chosen) < len(ts) else ""
        ax.set_title(f"suite {suite}, machine {machine} ({host}){more}", fontsize=10)
        handles, lbls = ax.get_legend_handles_labels()
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], marker="o", markersize=10, markerfacecolor="none",
                              markeredgecolor="red", linestyle="none"))
        lbls.append("step beyond noise")
        ax.legend(handles, lbls, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(f"History of {metric}", fontweight="bold")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=plots.DPI)
    plt.close(fig)
    return out

"""Output of `sabench quality`: the terminal table, and report.md with two PNGs.

Takes the dict `sabench.quality.evaluate` returns; computes nothing new but the
Pareto frontier (perplexity against KV bytes per token).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

from tabulate import tabulate

from sabench.errors import UserError
from sabench.report.results import human_bytes

HEATMAP = "attention_similarity.png"
PARETO = "perplexity_vs_kv_bytes.png"


def check_out_dir(out) -> Path:
    """--out must be a directory or not exist yet (checked before any work)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    return p


def to_json(result: dict) -> str:
    """The result as strict JSON: a non-finite perplexity (a variant that broke) becomes null."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(result), indent=2)


def weights_note(result: dict) -> str:
    if result["weights"] == "random":
        return ("random weights (a preset or a directory without safetensors): the figures exercise the "
                "tool, they say nothing about a trained model")
    return "checkpoint weights"


def pareto(variants: List[dict]) -> List[dict]:
    """Variants no other beats on both KV bytes per token and perplexity, by increasing KV bytes."""
    pts = sorted(variants, key=lambda r: (r["kv_cache_bytes_per_token"], r["perplexity"]))
    front, best = [], math.inf
    for r in pts:
        if r["perplexity"] < best:
            front.append(r)
            best = r["perplexity"]
    return front


def variant_rows(result: dict) -> List[list]:
    base = result["variants"][0]
    advised = _advised(result)
    rows = []
    for r in result["variants"]:
        rel = r["delta_vs_baseline"] / base["perplexity"] if base["perplexity"] else math.nan
        kv = r["kv_cache_bytes_per_token"] / base["kv_cache_bytes_per_token"]
        delta = "—" if r is base else f"{r['delta_vs_baseline']:+.4g} ({rel:+.2%})"
        rows.append([r["variant"], f"{r['perplexity']:.5g}", delta,
                     f"{human_bytes(r['kv_cache_bytes_per_token'])} ({kv:.1%})"]
                    + ([role_text(result, r["advice_role"])] if advised else []))
    return rows


def _advised(result: dict) -> bool:
    return any(r.get("advice_role") for r in result["variants"])


def variant_table(result: dict) -> str:
    """The variant rows; an `advice` column when one of them is the advice's plan."""
    headers = VARIANT_HEADERS + (["advice"] if _advised(result) else [])
    return tabulate(variant_rows(result), headers=headers, tablefmt="github", disable_numparse=True)


def role_text(result: dict, role) -> str:
    """A variant row's `advice_role` in words: the advice's pick, or its least costly plan over budget."""
    from sabench.advice import OVER_BUDGET, PICK

    words = {PICK: "advice pick (within {})", OVER_BUDGET: "least costly measured, over the {} budget"}
    return words[role].format(f"{result['advice']['budget'] * 100:g}%") if role else ""


VARIANT_HEADERS = ["variant", "perplexity", "Δ vs baseline", "KV bytes / token"]


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _windows_text(result: dict) -> str:
    kind = "non-overlapping " if result.get("stride") is None else f"rolling (stride {result['stride']}) "
    return f"{plural(result['windows'], kind + 'window')} of {result['seq_len']} tokens"


def _summary(result: dict) -> str:
    return (f"{result['model']}: {weights_note(result)}; {_windows_text(result)} "
            f"({result['tokens']} of the input's {result['input_tokens']}), "
            f"{result['dtype']} on {result['device']}")


def format_table(result: dict) -> str:
    sim = result["attention_similarity"]
    matrix = tabulate([[a] + [f"{x:.2f}" for x in row] for a, row in enumerate(sim)],
                      headers=["layer"] + list(range(len(sim))), tablefmt="plain",
                      disable_numparse=True)
    return "\n".join([
        _summary(result),
        variant_table(result),
        "",
        "attention similarity of the baseline's layers (mean cosine of the T x T attention weights):",
        matrix,
        *advice_text(result),
        *kv_advice_text(result),
    ])


def kv_advice_text(result: dict) -> List[str]:
    from sabench.kv_advice import pick_line

    adv = result.get("kv_advice")
    if adv is None:
        return []
    rows = [[m["strategy"], m["variant"], m["shared_layers"], f"{m['kv_bytes_saving']:.2%}", f"{m['saving']:.2%}",
             f"{m['perplexity']:.5g}", f"{m['increase']:+.2%}",
             ("pick" if (m["variant"], m["strategy"]) == (adv["pick"], adv["pick_strategy"]) else "")
             + (" Pareto" if m["pareto"] else "")] for m in adv["measured"]]
    counts = ", ".join(f"{n} {s}" for s, n in adv["candidates"].items())
    return ["", f"measured K/V maps (of {counts}; saving: {adv['saving_definition']}):",
            tabulate(rows, headers=["strategy", "map", "shared layers", "KV bytes", "saving", "perplexity",
                                    "Δ measured", ""], tablefmt="github", disable_numparse=True),
            "", pick_line(adv)]


ADVICE_HEADERS = ["#", "plan", "shared layers", "saving", "decode bytes", "prefill FLOPs", "KV bytes",
                  "predicted cost", "perplexity", "Δ measured", ""]


def advice_rows(result: dict) -> List[list]:
    from sabench.advice import OVER_BUDGET, PICK, shown_plan

    adv = result.get("advice") or {}
    shown, role = shown_plan(adv) or (None, None)
    label = {PICK: "pick", OVER_BUDGET: "least costly, over budget"}.get(role, "")
    rows = []
    for i, m in enumerate(adv.get("measured", []), 1):
        mark = (label if m["variant"] == shown else "") + (" Pareto" if m["pareto"] else "")
        rows.append([i, m["variant"], m["shared_layers"], f"{m['saving']:.2%}", f"{m['decode_bytes_saving']:.2%}",
                     f"{m['prefill_flops_saving']:.2%}", f"{m['kv_bytes_saving']:.2%}",
                     f"{m['predicted_cost']:.3g}", f"{m['perplexity']:.5g}", f"{m['increase']:+.2%}",
                     mark.strip()])
    return rows


def advice_text(result: dict) -> List[str]:
    from sabench.advice import pick_line

    adv = result.get("advice")
    if adv is None:
        return []
    lines = ["", f"measured candidate SA plans ({len(adv['measured'])} of {adv['candidates']}; saving: "
                 f"{adv['saving_definition']}):"]
    if adv["measured"]:
        lines.append(tabulate(advice_rows(result), headers=ADVICE_HEADERS, tablefmt="github",
                              disable_numparse=True))
    lines.append(pick_line(adv))
    return lines


# ---------------------------------------------------------------- report.md and figures
def write_report(result: dict, out_dir) -> Path:
    out = check_out_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heatmap(result, out / HEATMAP)
    pareto_plot(result, out / PARETO)
    path = out / "report.md"
    path.write_text(render_markdown(result))
    return path


def render_markdown(result: dict) -> str:
    sim = result["attention_similarity"]
    lines = [f"# sabench quality: {Path(result['model']).name or result['model']}", ""]
    if result["weights"] == "random":
        lines += [f"> **{weights_note(result).capitalize()}.**", ""]
    setup = [["model", f"`{result['model']}`"], ["weights", result["weights"]],
             ["dtype, device", f"{result['dtype']}, {result['device']}"],
             ["windows", _windows_text(result)],
             ["tokens covered", f"{result['tokens']} (of {result['input_tokens']} in the input; "
                                f"{plural(result['predictions'], 'prediction')} scored)"],
             ["perplexity convention", result["perplexity_convention"]]]
    if result.get("advice"):
        setup.append(["advice budget", f"{result['advice']['budget'] * 100:g}% perplexity increase"])
    lines += ["## Setup", "", tabulate(setup, headers=["", ""], tablefmt="github", disable_numparse=True), ""]
    lines += ["## Perplexity per variant", "",
              "Every variant is the baseline's checkpoint with no retraining: SA layers apply the source "
              "layer's attention weights to their own V, CLA non-owners attend over the owner's K/V. "
              "Perplexity = exp(mean NLL over every scored prediction; " + result["perplexity_convention"]
              + "); Δ is against the baseline; KV bytes are per token and sequence, in the evaluation "
              "dtype. The advice column marks the advice's plan (see below): its pick, or, when no measured "
              "plan is within the budget, the least costly one measured.", "",
              variant_table(result),
              "",
              f"![perplexity against KV bytes per token]({PARETO})", ""]
    lines += ["## Attention similarity of the baseline's layers", "",
              "Entry (a, b): the mean over windows and heads of the cosine similarity between the full "
              "T x T causal attention-probability matrices of layers a and b. An SA span A-B replaces "
              "layers A..B's weights by layer A-1's, so row A-1 tells how close that replacement is; the "
              "advice ranks its candidate plans by it.", "", f"![attention similarity heatmap]({HEATMAP})", "",
              tabulate([[a] + [f"{x:.3f}" for x in row] for a, row in enumerate(sim)],
                       headers=["layer"] + [str(b) for b in range(len(sim))], tablefmt="github",
                       disable_numparse=True), ""]
    if result.get("advice"):
        lines += ["## Advice: measured SA plans", "",
                  "Candidates are nested SA plans, each one shared layer more than the last, grown by the move "
                  "with the least predicted perplexity cost (1 - similarity of the layer to its span's source) "
                  "per unit of saving; the perplexity of the plans in this table was measured on the same "
                  "windows. Pareto: no other measured plan saves more for less increase. Pick: the largest "
                  "saving whose measured increase is within the budget (see docs/quality.md).", ""]
        lines += advice_text(result)[2:] + [""]
    return "\n".join(lines)


def heatmap(result: dict, path: Path) -> None:
    from sabench.report.plots import plt, save

    sim = result["attention_similarity"]
    n = len(sim)
    size = min(11.0, 3.2 + 0.28 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(sim, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    ax.grid(False)
    ax.set_xlabel("layer b")
    ax.set_ylabel("layer a")
    step = max(1, math.ceil(n / 16))
    ax.set_xticks(range(0, n, step))
    ax.set_yticks(range(0, n, step))
    if n <= 16:
        for a in range(n):
            for b in range(n):
                ax.text(b, a, f"{sim[a][b]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if sim[a][b] > 0.6 else "white")
    from sabench.advice import shown_plan

    shown, role = shown_plan(result.get("advice")) or (None, None)
    for span in (shown or "sa:")[3:].split(","):
        if span:  # the source row's cells the span reuses
            a, b = (int(x) for x in span.split("-"))
            ax.add_patch(plt.Rectangle((a - 0.5, a - 1.5), b - a + 1, 1, fill=False, edgecolor="red", lw=1.8))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean cosine similarity")
    ax.set_title(f"Attention similarity, {plural(result['windows'], 'window')} x {result['seq_len']} tokens"
                 + (" (random weights)" if result["weights"] == "random" else "")
                 + (f"\nred: {role_text(result, role)}, {shown}" if shown else ""))
    fig.tight_layout()
    save(fig, path.parent, path.name)


def pareto_plot(result: dict, path: Path) -> None:
    from matplotlib.ticker import FuncFormatter

    from sabench.report.plots import plt, save, variant_colors

    rows = [r for r in result["variants"] if math.isfinite(r["perplexity"])]  # a broken variant has no point
    colors = variant_colors([r["variant"] for r in rows])
    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    front = pareto(rows)
    ax.step([r["kv_cache_bytes_per_token"] for r in front], [r["perplexity"] for r in front], where="post",
            color="#888888", linestyle="--", linewidth=1.2, label="Pareto frontier", zorder=1)
    for i, r in enumerate(rows, 1):  # numbered markers, named in the legend: no long labels to overlap
        on_front = r in front
        ax.scatter(r["kv_cache_bytes_per_token"], r["perplexity"], s=60 if on_front else 40, zorder=3,
                   color=colors[r["variant"]], edgecolors="black" if on_front else "none",
                   label=f"{i}  {r['variant']}")
    ppl = [r["perplexity"] for r in rows]
    if ppl and max(ppl) / min(ppl) >= 4:  # a variant that breaks without retraining: keep the rest readable
        ax.set_yscale("log")
    ax.autoscale_view()
    for (x, y), numbers in _label_groups(ax, rows):
        ax.annotate(",".join(numbers), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
    ax.set_xlabel("KV cache bytes per token (lower is better)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("What sharing saves and what it costs" + (" (random weights)" if result["weights"] == "random"
                                                           else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8,
              title="point  variant", title_fontsize=8)
    fig.tight_layout()
    save(fig, path.parent, path.name)


LABEL_MERGE_PX = 10  # points closer than this on the figure share one label ("2,3")


def _label_groups(ax, rows):
    """[((x, y), [numbers])]: points whose markers (nearly) coincide on the drawn axes share a label."""
    groups = []
    for i, r in enumerate(rows, 1):
        xy = (r["kv_cache_bytes_per_token"], r["perplexity"])
        px = ax.transData.transform(xy)
        for g in groups:
            if abs(g[2][0] - px[0]) < LABEL_MERGE_PX and abs(g[2][1] - px[1]) < LABEL_MERGE_PX:
                g[1].append(str(i))
                break
        else:
            groups.append((xy, [str(i)], px))
    return [(xy, numbers) for xy, numbers, _ in groups]

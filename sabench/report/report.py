"""report.md (+ PNGs) for one run: setup, computed findings, figures, per-phase tables."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sabench.constants import STABLE_RATIO
from sabench.records import Key, PhaseRecord, PointSpec, RunRecord, load_results, results_path
from sabench.report.results import (BASELINE, fmt_ms, listing, fmt_pct, fmt_rate, fmt_x, human_bytes,
                                    index_records, is_ok, median_ms, MEMORY_SOURCES, one_line, p90_ms,
                                    peak_memory, phases_of, phase_rise, predicted_memory, truncate,
                                    utilisation, variants_of)
from sabench.io import write_atomic
from sabench.stats import geomean, median
from sabench.report import devices, speed_quality, topology
from sabench.report.capacity import equal_memory_section
from sabench.report.swap import staging_dir, swap_in
from sabench.report.tables import md_table, phase_table, setup_table
from sabench.report.intervals import WITHIN_NOTE
from sabench.report.verdicts import speed_findings
from sabench.stats import DEFAULT_THRESHOLD

FIGURE_FILES = ("prefill_latency.png", "decode_latency.png", "decode_throughput.png", "memory.png",
                "speedup_prefill.png", "speedup_decode.png", "flops_breakdown.png", "roofline.png")
MAX_LISTED = 12


def write_report(run_dir) -> Path:
    """Write RUN_DIR/report.md and its PNGs beside it; returns the report path.

    `run_dir` may also be the results.json path itself.
    """
    src = results_path(run_dir)
    results = load_results(src)
    out_dir = src.parent
    index = index_records(results)
    from sabench.report import plots_run  # matplotlib is imported only when figures are drawn

    with staging_dir(out_dir) as stage:  # a failure leaves the run's report and figures as they were
        figs = plots_run.all_figures(results, index, stage)
        write_atomic(stage / "report.md", render_markdown(results, index, figs))
        swap_in(stage, out_dir, FIGURE_FILES + ("report.md",))  # stale figures of an earlier report go
    return out_dir / "report.md"


def _pt(k: Tuple) -> str:
    """'b=4 s=512': a point's place in the sweep, where the variant is named apart."""
    return PointSpec(k[0], k[1], k[2]).size


def findings(results: RunRecord, index: Dict[Key, PhaseRecord]) -> List[str]:
    """Markdown bullets computed from the numbers (each one depends on the data)."""
    out: List[str] = []
    variants = variants_of(results)
    others = [v for v in variants if v != BASELINE]
    has_base = BASELINE in variants
    phases = phases_of(results)

    if not index:
        return ["The results hold no measurements."]
    if not has_base:
        out.append("No `baseline` variant in this run, so speedups and savings against it are not computed.")
    # --- speedups: named only where the interval says so
    speed = speed_findings(results, index, DEFAULT_THRESHOLD)
    out.extend(speed)
    if has_base and others and not speed:
        out.append("No point where both baseline and another variant ran ok with two or more samples: "
                   "no speedups to report.")

    # --- KV cache and memory savings
    if has_base:
        for v in others:
            ratios = []
            for k, r in index.items():
                if k[0] != v:
                    continue
                mine = r.kv_cache_bytes
                base = getattr(index.get((BASELINE,) + k[1:]), "kv_cache_bytes", None)
                if mine is not None and base:
                    ratios.append((mine / base, k[1] * k[2], k, mine, base))
            if not ratios:
                continue
            lo, hi = min(x[0] for x in ratios), max(x[0] for x in ratios)
            _, _, k, mine, base = max(ratios, key=lambda x: x[1])
            ratio = f"{lo:.2f}×" if hi - lo < 0.005 else f"{lo:.2f}–{hi:.2f}×"
            smaller = f"{1 / hi:.2f}× smaller" if hi < 1 else ("the same size" if abs(hi - 1) < 1e-9 and lo == hi
                                                                else f"{hi:.2f}× larger at most")
            out.append(f"`{v}` keeps **{ratio}** the baseline's KV cache ({smaller}; {human_bytes(mine)} vs "
                       f"{human_bytes(base)} at {_pt(k)}).")
        for v in others:
            line = _memory_saving(index, v)
            if line:
                out.append(line)
        out.extend(_energy_findings(index, others, phases))

    # --- failures
    ooms = sorted({(k[0], k[1], k[2]) for k, r in index.items() if r.status == "oom"},
                  key=lambda t: (variants.index(t[0]) if t[0] in variants else 99, t[1], t[2]))
    if ooms:
        items = [f"`{v}` {_pt((v, b, s))}" for v, b, s in ooms]
        out.append(f"**Out of memory** at {len(ooms)} point(s): " + listing(items, MAX_LISTED) + ".")
        base_oom = [(b, s) for v, b, s in ooms if v == BASELINE]
        rescued = []
        for b, s in base_oom:
            ran = [v for v in others
                   if all(is_ok(index.get((v, b, s, p))) for p in phases if (v, b, s, p) in index)
                   and any((v, b, s, p) in index for p in phases)]
            if ran:
                rescued.append(f"{_pt((BASELINE, b, s))} ({', '.join('`' + v + '`' for v in ran)})")
        if rescued:
            out.append("Baseline ran out of memory where sharing variants fit: " + listing(rescued, MAX_LISTED) + ".")
    else:
        out.append("No point ran out of memory.")
    errors = [(k, r) for k, r in index.items() if r.status in ("error", "killed")]
    if errors:
        items = [f"`{k[0]}` {_pt(k)} {k[3]}: {truncate(one_line(r.error or 'unknown'), 80)}"
                 for k, r in errors]
        out.append(f"**Errors** at {len(errors)} point(s): " + listing(items, 5) + ".")
    skipped = [f"`{k[0]}` {_pt(k)} {k[3]}" for k, r in index.items() if r.status == "skipped_after_oom"]
    if skipped:
        out.append(f"Skipped after an OOM: {len(skipped)} measurement(s): " + listing(skipped, MAX_LISTED) + ".")

    # --- distance to the roofline floor
    dec = [(r.tokens_per_s, k, r) for k, r in index.items()
           if k[3] == "decode" and is_ok(r) and r.tokens_per_s]
    if dec:
        tps, k, r = max(dec, key=lambda t: t[0])
        line = (f"**Best decode throughput**: {fmt_rate(tps)} tokens/s, `{k[0]}` at batch {k[1]}, "
                f"context {k[2]}")
        floor, med = r.floor_ms, median_ms(r)
        if floor and med:
            line += (f"; its {fmt_ms(med)} ms per token is {med / floor:.2f}× the roofline floor "
                     f"({fmt_ms(floor)} ms)")
        if r.mbu is not None:
            line += f", MBU {fmt_pct(r.mbu)}"
        out.append(line + ".")
    for phase, name in (("prefill", "MFU"), ("decode", "MBU")):
        vals = [(utilisation(r), k) for k, r in index.items() if k[3] == phase and is_ok(r)
                and utilisation(r) is not None]
        if vals:
            hi = max(vals)
            gm_ratio = _floor_ratio(index, phase)
            out.append(f"Highest {phase} {name}: {fmt_pct(hi[0])} (`{hi[1][0]}` {_pt(hi[1])})"
                       + (f"; the median {phase} point runs at {gm_ratio:.2f}× its floor" if gm_ratio else "")
                       + ".")
    # --- timing noise
    noisy = []
    for k, r in index.items():
        m, p = median_ms(r), p90_ms(r)
        if m and p and p > 1.2 * m:
            noisy.append(f"`{k[0]}` {_pt(k)} {k[3]} (p90 {p / m:.2f}× median)")
    if noisy:
        out.append(f"**Noisy timings** (p90 more than 20% above the median) at {len(noisy)} point(s): "
                   + listing(noisy, 6) + ".")
    return out


def _floor_ratio(index, phase) -> Optional[float]:
    rs = sorted(median_ms(r) / r.floor_ms for k, r in index.items()
                if k[3] == phase and is_ok(r) and r.floor_ms and median_ms(r))
    return median(rs)


def _largest_shared(index, v):
    """The largest point (batch x seq_len, decode before prefill) where `v` and the baseline both
    ran ok with device peaks of the same source -> (key, variant record, baseline record) or None."""
    best = None
    for k, r in index.items():
        base = index.get((BASELINE,) + k[1:])
        if k[0] != v or not is_ok(r) or not is_ok(base):
            continue
        (mv, src), (mb, src_b) = peak_memory(r), peak_memory(base)
        if mv is None or mb is None or src != src_b:
            continue
        size = (k[1] * k[2], k[3] == "decode")
        if best is None or size > best[0]:
            best = (size, (k, r, base))
    return best[1] if best else None


def _saving(mine: float, base: float) -> str:
    d = base - mine
    return (f"saves {human_bytes(d)}" if d >= 0 else f"costs {human_bytes(-d)} more") + f", {mine / base:.2f}×"


def _memory_saving(index, v) -> Optional[str]:
    """How much memory `v` saves at the largest point both it and the baseline ran, measured
    (device_peak) and predicted (memory_predicted_bytes.total) side by side."""
    found = _largest_shared(index, v)
    if found is None:
        return None
    k, r, base = found
    (mv, src), (mb, _) = peak_memory(r), peak_memory(base)
    line = (f"`{v}` at the largest point both ran ({k[3]} {_pt(k)}): device peak **{human_bytes(mv)}** vs "
            f"{human_bytes(mb)} for the baseline ({_saving(mv, mb)}; {src}; one reading each, no interval)")
    pv, pb = predicted_memory(r), predicted_memory(base)
    if pv and pb:
        line += f"; predicted {human_bytes(pv)} vs {human_bytes(pb)} ({_saving(pv, pb)})"
    else:
        line += "; no prediction"
    return line + "."


def _energy_findings(index, others, phases) -> List[str]:
    """Per phase: each variant's joules per token against the baseline's (geometric mean)."""
    out = []
    for phase in phases:
        parts = []
        for v in others:
            ratios = []
            for k, r in index.items():
                if k[0] == v and k[3] == phase:
                    a = r.joules_per_token if is_ok(r) else None
                    b = getattr(index.get((BASELINE,) + k[1:]), "joules_per_token", None)
                    if a and b and is_ok(index.get((BASELINE,) + k[1:])):
                        ratios.append(a / b)
            if ratios:
                parts.append(f"`{v}` {fmt_x(geomean(ratios))} the baseline's (geometric mean over "
                             f"{len(ratios)} point{'s' if len(ratios) > 1 else ''})")
        if parts:
            out.append(f"**Energy per {phase} token** (timed calls only; one reading per point, so no "
                       f"interval): " + "; ".join(parts) + ".")
    return out


def memory_table(index: Dict[Key, PhaseRecord], variants: List[str]) -> Optional[str]:
    """Per variant, the breakdown of device_peak at its largest ok point, beside the prediction."""
    rows = []
    for v in variants:
        pts = [(k[1] * k[2], k[3] == "decode", k) for k, r in index.items()
               if k[0] == v and is_ok(r) and r.memory_breakdown]
        if not pts:
            continue
        k = max(pts)[2]
        r = index[k]
        bd = r.memory_breakdown
        peak, src = peak_memory(r)
        rows.append([v, f"{k[3]} {_pt(k)}", human_bytes(peak)] + [human_bytes(bd.get(x)) for x in
                                                                   ("weights", "kv_cache", "activations", "context")]
                    + [human_bytes(predicted_memory(r)) if predicted_memory(r) else "—",
                       human_bytes(phase_rise(r)), src or "—"])
    if not rows:
        return None
    return md_table(["variant", "largest point", "device peak", "weights", "KV cache", "activations",
                     "context", "predicted", "phase rise", "source"], rows, ["left", "left"] + ["right"] * 8)


def _figure(figs, key, alt) -> List[str]:
    name = figs.get(key)
    return [f"![{alt}]({name})", ""] if name else []


def render_markdown(results: RunRecord, index: Dict[Key, PhaseRecord], figs: Dict[str, Optional[str]]) -> str:
    suite = results.suite
    env = results.env
    title = suite.get("name") or "run"
    lines = [f"# sabench report: {title}", ""]
    n_ok = sum(1 for r in index.values() if is_ok(r))
    lines += [f"{len(index)} measurements ({n_ok} ok) from `results.json`"
              + (f", created {results.created}" if results.created else "") + ".", ""]
    lines += ["## Setup", "", setup_table(results), ""]
    lines += topology.report_note(results)
    lines += speed_quality.section(results, index)  # which weights ran; perplexity beside latency
    lines += ["## What this run says", ""]
    lines += [("- " + f) if not f.startswith("  - ") else f for f in findings(results, index)]
    lines += [""]

    if any(figs.values()):
        lines += ["## Figures", ""]
    if figs.get("prefill_latency") or figs.get("decode_latency") or figs.get("decode_throughput"):
        lines += ["### Latency", ""]
        lines += _figure(figs, "prefill_latency", "prefill latency vs sequence length")
        lines += _figure(figs, "decode_latency", "decode per-token latency vs context length")
        lines += _figure(figs, "decode_throughput", "decode throughput vs batch size")
    if figs.get("speedup_prefill") or figs.get("speedup_decode"):
        lines += ["### Speedup over baseline", ""]
        lines += _figure(figs, "speedup_prefill", "prefill speedup heatmap")
        lines += _figure(figs, "speedup_decode", "decode speedup heatmap")
    if figs.get("memory"):
        lines += ["### Memory", ""] + _figure(figs, "memory", "peak memory and KV cache vs sequence length")
    if figs.get("flops_breakdown") or figs.get("roofline"):
        lines += ["### FLOPs and roofline", ""]
        lines += _figure(figs, "flops_breakdown", "analytic FLOPs by component")
        lines += _figure(figs, "roofline", "measured latency vs roofline floor")

    mem_table = memory_table(index, variants_of(results))
    if mem_table:
        lines += ["## Memory at each variant's largest point", "",
                  "_device peak = weights + KV cache + activations + context. Activations: the allocator's "
                  "peak live bytes minus weights and cache (CPU: the RSS rise over the phase); context: the "
                  "rest (CUDA context, libraries' workspaces, the allocator's cached but unused blocks; CPU: "
                  "the interpreter and torch). Predicted: the memory model's total, where the run has one. "
                  "Phase rise: the phase's peak minus the level just before it (weights and cache excluded)._",
                  "", mem_table, ""]
    lines += equal_memory_section(results, index)
    for phase in phases_of(results):
        lines += [f"## {phase.capitalize()}", "", phase_table(results, phase, index), ""]
        lines += [_phase_notes(results, index, phase, env), ""]
    lines += devices.section(results)
    lines += _overhead_section(results)
    return "\n".join(lines).rstrip() + "\n"


def _overhead_section(results: RunRecord) -> List[str]:
    """The harness's own cost, kept apart from the measured phases so neither hides the other."""
    ovh = list(results.overhead.values())
    if not ovh:
        return []
    parts = [("process start", "process_start_s"), ("model build", "model_build_s"),
             ("FLOP counting", "count_flops_s"), ("compilation (first calls, compiled execution)", "compile_s")]
    total = sum(o.total_s or 0.0 for o in ovh)
    rows = []
    for label, key in parts:
        vals = [getattr(o, key) for o in ovh if getattr(o, key) is not None]
        if vals:
            rows.append(f"{label} {sum(vals):.2f} s (median {median(vals) * 1e3:.0f} ms a point)")
    return ["## Harness overhead", "",
            f"{len(ovh)} points took {total:.1f} s of wall time in their processes; of that, "
            + "; ".join(rows) + ". The rest is warm-up, the timed phases and memory sampling.", ""]


def _execution_note(recs: list, phase: str) -> str:
    """'Execution: compiled, graph mode.' from the records (older results: eager)."""
    execs = sorted({r.execution or "eager" for r in recs})
    modes = sorted({m for m in (r.prefill_mode if phase == "prefill" else r.decode_mode for r in recs) if m})
    if set(modes) <= set(execs):  # "eager, eager mode" says nothing twice
        modes = []
    return f"Execution: {'/'.join(execs)}" + (f", {'/'.join(modes)} mode" if modes else "") + "."


def _phase_notes(results, index, phase, env) -> str:
    recs = [r for k, r in index.items() if k[3] == phase]
    srcs = sorted({peak_memory(r)[1] for r in recs if peak_memory(r)[1]})
    notes = [_execution_note(recs, phase)]
    unstable = sum(1 for r in recs if r.stability is not None and r.stability.stable is False)
    if unstable:
        notes.append(f"{unstable} point(s) flagged unstable (p90/p10 above {STABLE_RATIO}; `stability` in results.json).")
    if phase == "prefill":
        notes.append("Latency is one forward over the whole prompt; tokens/s = batch × seq_len / median.")
        notes.append("MFU = analytic FLOPs / median / peak FLOP/s.")
    else:
        dt = results.suite.get("decode_tokens")
        notes.append("Latency is one single-token step after a prompt of seq_len tokens"
                     + (f" ({dt} steps per run)" if dt else "") + "; tokens/s = batch / median step.")
        notes.append("MBU = analytic bytes moved per step / median / peak bandwidth.")
    notes.append("Speedup = baseline time / variant time at the same batch and seq_len (ratio of geometric "
                 "means of each round's fastest step, paired by round: a busy machine only ever adds time) "
                 "with its 95% interval; the latencies shown are medians.")
    if any(r.ok and not r.rounds for r in recs):
        notes.append(WITHIN_NOTE)
    if srcs:
        notes.append("Device peak: the point's own absolute footprint during the phase; "
                     + "; ".join(f"{s} = {MEMORY_SOURCES.get(s, s)}" for s in srcs) + ".")
    if any(r.joules_per_token is not None for r in recs):
        notes.append("J/token = energy of the timed calls (NVML energy counter, or its power samples "
                     "integrated) / the tokens they produced; board-level, so anything else on the GPU counts.")
    notes.append("KV cache and FLOPs are analytic; floor = roofline floor of one sample"
                 + ("" if env.get("peak_flops_per_s") else " (no peaks known: MFU/MBU not computed)") + ".")
    return "_" + " ".join(notes) + "_"

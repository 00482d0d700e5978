"""Markdown tables (GitHub flavour) for report.md."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

from sabench.records import Key, PhaseRecord, RunRecord
from sabench.report.results import (BASELINE, analytic_flops, fmt_ms, fmt_pct, fmt_rate, human_bytes,
                                    human_flops, human_rate, index_records, is_ok, md_escape, median_ms,
                                    p90_ms, peak_memory, status_text, utilisation, variants_of)


def md_table(headers: Sequence[str], rows: List[Sequence[str]], align: Optional[Sequence[str]] = None) -> str:
    """A GitHub table; cells are taken as given (strings), `align` is 'left'/'right' per column."""
    rows = [[md_escape(str(c)) for c in row] for row in rows]
    headers = [md_escape(str(h)) for h in headers]
    kw = {}
    if align:
        kw["colalign"] = list(align)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True, **kw)


def setup_table(results: RunRecord) -> str:
    """Environment and suite in one two-column table."""
    env, suite = results.env, results.suite
    rows = []

    def add(k, v):
        if v not in (None, "", [], {}):
            rows.append((k, v))

    device = env.get("device") or suite.get("device")
    if env.get("device_name"):
        device = f"{device} ({env['device_name']})"
        if env.get("memory_total_bytes"):
            device += f", {human_bytes(env['memory_total_bytes'])}"
    add("device", device)
    add("driver / CUDA", " / ".join(str(env[k]) for k in ("driver", "cuda") if env.get(k)))
    add("software", ", ".join(f"{k} {env[k]}" for k in ("sabench", "torch", "transformers", "python")
                              if env.get(k)))
    commit = env.get("git_commit")
    if commit:
        commit = str(commit)[:12] + (" (dirty)" if env.get("git_dirty") else "")
    add("commit", commit or "unknown")
    host = env.get("host")
    if env.get("cpu"):
        host = f"{host} — {env['cpu']}" + (f" ×{env['cpu_count']}" if env.get("cpu_count") else "")
    add("host", host)
    peaks = []
    if env.get("peak_flops_per_s"):
        peaks.append(human_rate(env["peak_flops_per_s"], "FLOP/s"))
    if env.get("peak_bandwidth_bytes_per_s"):
        peaks.append(human_rate(env["peak_bandwidth_bytes_per_s"], "B/s"))
    add("roofline peaks", (", ".join(peaks) + (f" ({env['peak_source']})" if env.get("peak_source") else ""))
        if peaks else "unknown (no MFU/MBU)")
    add("suite", suite.get("name"))
    add("model", suite.get("model") if not isinstance(suite.get("model"), dict)
        else suite["model"].get("name", str(suite["model"])))
    add("dtype", suite.get("dtype"))
    add("execution", suite.get("execution") or "eager")  # results from before execution modes: eager
    add("variants", ", ".join(variants_of(results)))
    sweep = suite.get("sweep") or {}
    bs = suite.get("batch_sizes") or sweep.get("batch_size") or sorted({r.batch_size for r in results.records})
    sl = suite.get("seq_lens") or sweep.get("seq_len") or sorted({r.seq_len for r in results.records})
    add("sweep", f"batch {_list(bs)} × seq_len {_list(sl)}")
    add("decode tokens", suite.get("decode_tokens"))
    warm = suite.get("warmup", _distinct([r.warmup for r in results.records]))
    rep = suite.get("repeats", _distinct([r.repeats for r in results.records]))
    if warm is not None or rep is not None:
        add("warmup / repeats", f"{warm if warm is not None else '?'} / {rep if rep is not None else '?'}")
    add("results created", results.created)
    return md_table(["", ""], [list(r) for r in rows], ["left", "left"])


def _list(xs) -> str:
    return "{" + ", ".join(str(x) for x in xs) + "}"


def _distinct(values):
    vals = sorted({v for v in values if v is not None})
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else "–".join(str(v) for v in (vals[0], vals[-1]))


def phase_table(results: RunRecord, phase: str, index: Optional[Dict[Key, PhaseRecord]] = None) -> str:
    """variant x batch x seq_len rows for one phase, plus a footnote line when needed."""
    index = index if index is not None else index_records(results)
    recs = [r for k, r in index.items() if k[3] == phase]
    order = {v: i for i, v in enumerate(variants_of(results))}
    recs.sort(key=lambda r: (order.get(r.variant, 1e9), r.batch_size, r.seq_len))

    sources = {peak_memory(r)[1] for r in recs} - {None}
    mixed_mem = len(sources) > 1
    mem_header = f"device peak ({sources.pop()})" if len(sources) == 1 else "device peak"
    energy = any(r.joules_per_token is not None for r in recs)
    util = "MFU" if phase == "prefill" else "MBU"
    lat = "ms" if phase == "prefill" else "ms/token"
    headers = ["variant", "batch", "seq_len", f"median {lat}", f"p90 {lat}", "tokens/s",
               "speedup vs baseline", "KV cache", mem_header,
               "FLOPs" if phase == "prefill" else "FLOPs (all steps)", f"floor {lat}", util]
    align = ["left"] + ["right"] * (len(headers) - 1)
    if energy:
        headers.append("J/token")
        align.append("right")
    rows = []
    for r in recs:
        v, b, s = r.variant, r.batch_size, r.seq_len
        ok = is_ok(r)
        mem, src = peak_memory(r)
        mem_cell = human_bytes(mem) if mem is not None else "—"
        if mixed_mem and mem is not None:
            mem_cell += f" ({src})"
        base = index.get((BASELINE, b, s, phase))
        if v == BASELINE or not ok:
            sp = "—"
        elif base is not None and not is_ok(base):
            sp = "— (base " + {"oom": "OOM", "error": "error", "killed": "killed"}.get(base.status, "skipped") + ")"
        else:
            from sabench.report.verdicts import speedup_cell
            sp = speedup_cell(index, r)[1]
        flops = analytic_flops(r)
        rows.append([
            v, str(b), str(s),
            fmt_ms(median_ms(r)) if ok else status_text(r, 36),
            fmt_ms(p90_ms(r)) if ok else "—",
            fmt_rate(r.tokens_per_s) if ok else "—",
            sp,
            human_bytes(r.kv_cache_bytes),
            mem_cell if ok else "—",
            human_flops(flops),
            fmt_ms(r.floor_ms),
            fmt_pct(utilisation(r)) if ok else "—",
        ] + ([fmt_ms(r.joules_per_token) if ok else "—"] if energy else []))
    return md_table(headers, rows, align)

"""The report's "At equal memory" section: what KV and attention sharing buy in capacity.

Per variant and context: the largest batch whose decode ran (a `batch_size: max` point when the
suite asked for one: predicted by sabench.memory_model, confirmed by running, stepped down on
OOM), its decode tokens/s per GPU, beside the baseline's. Then the memory model's prediction
beside the measured absolute peak (`memory_bytes.device_peak`) wherever one was measured.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from sabench.records import Key, PhaseRecord, RunRecord
from sabench.report.results import (BASELINE, fmt_rate, human_bytes, is_ok, peak_memory, predicted_memory,
                                    variants_of)
from sabench.report.tables import md_table

MAX_ROWS = 24


def _largest_ran(index: Dict[Key, PhaseRecord], variant: str, seq: int) -> Optional[PhaseRecord]:
    ran = [r for k, r in index.items() if k[0] == variant and k[2] == seq and k[3] == "decode" and is_ok(r)
           and r.tokens_per_s]
    return max(ran, key=lambda r: r.batch_size) if ran else None


def _max_request(records: Sequence[PhaseRecord], variant: str, seq: int) -> Optional[PhaseRecord]:
    for r in records:
        if (r.batch_request == "max" and r.max_attempts and r.variant == variant
                and r.seq_len == seq and r.phase == "decode"):
            return r
    return None


def _attempts(req: Optional[PhaseRecord]) -> str:
    if not req:
        return "—"
    steps = [f"{a.batch_size}" + ("" if a.status == "ok" else f" {a.status}") for a in req.max_attempts]
    return f"predicted {req.predicted_max_batch}: " + " → ".join(steps)


def equal_memory_section(results: RunRecord, index: Dict[Key, PhaseRecord]) -> List[str]:
    """Markdown lines of the section (empty when no decode ran)."""
    records = results.records
    variants = variants_of(results)
    seqs = sorted({k[2] for k in index if k[3] == "decode"})
    asked_max = any(r.batch_request == "max" for r in records)
    rows = []
    for seq in seqs:
        base = _largest_ran(index, BASELINE, seq)
        for v in variants:
            r = _largest_ran(index, v, seq)
            req = _max_request(records, v, seq)
            if r is None and req is None:
                continue
            row = [f"`{v}`", str(seq), str(r.batch_size) if r else "none ran",
                   fmt_rate(r.tokens_per_s) if r else "—"]
            if base and r and v != BASELINE:
                row += [f"{r.batch_size / base.batch_size:.2f}×",
                        f"{r.tokens_per_s / base.tokens_per_s:.2f}×"]
            else:
                row += ["—", "—"]
            row.append(_attempts(req))
            rows.append(row)
    if not rows:
        return []
    budget = next((r.memory_budget_bytes for r in records if r.memory_budget_bytes), None)
    source = next((r.memory_budget_source for r in records if r.memory_budget_source), None)
    device = str(results.env.get("device") or results.suite.get("device") or "")
    per = "per GPU" if device.startswith("cuda") else "(CPU)"
    intro = (f"Per variant and context, the largest batch whose decode ran and its decode tokens/s {per}, "
             "beside the baseline's. ")
    if asked_max:
        intro += ("`max` points: the largest batch the memory model predicts to fit in "
                  f"{human_bytes(budget) if budget else 'the memory'}" + (f" ({source})" if source else "")
                  + ", run, and stepped down by 1/8 on out of memory; every attempt is listed.")
    else:
        intro += "This run asked for no `max` batch: the largest batch is the sweep's, not the device's limit."
    lines = ["## At equal memory", "", intro, "",
             md_table(["variant", "seq_len", "largest batch", f"decode tok/s {per}", "batch vs baseline",
                       "tok/s vs baseline", "max batch attempts"], rows,
                      ["left", "right", "right", "right", "right", "right", "left"]), ""]
    return lines + _predicted_vs_measured(index)


def _predicted_vs_measured(index: Dict[Key, PhaseRecord]) -> List[str]:
    pts = []
    for k, r in index.items():
        pred, (meas, src) = predicted_memory(r), peak_memory(r)
        if is_ok(r) and pred and meas:
            pts.append((abs(pred / meas - 1), k, pred, meas, src))
    if not pts:
        return []
    worst = max(p[0] for p in pts)
    shown = sorted(pts, key=lambda p: (p[1][0], p[1][1], p[1][2], p[1][3]))
    if len(shown) > MAX_ROWS:
        shown = sorted(pts, key=lambda p: -p[0])[:MAX_ROWS]
    rows = [[f"`{k[0]}`", str(k[1]), str(k[2]), k[3], human_bytes(pred), human_bytes(meas),
             f"{pred / meas - 1:+.1%}"] for _, k, pred, meas, _src in shown]
    srcs = sorted({p[4] for p in pts if p[4]})
    return ["### Predicted vs measured memory", "",
            f"The memory model (weights + KV cache + activation peak + CUDA context, sabench/memory_model.py) "
            f"against the measured absolute peak (`device_peak`{', ' + '/'.join(srcs) if srcs else ''}) at "
            f"{len(pts)} phases: largest error {worst:.1%}"
            + (f"; the {MAX_ROWS} largest errors are shown." if len(pts) > MAX_ROWS else "."), "",
            md_table(["variant", "batch", "seq_len", "phase", "predicted", "measured", "error"], rows,
                     ["left", "right", "right", "left", "right", "right", "right"]), ""]

"""The report's "Weights and quality" section: which weights the points ran with and, when the
suite asked for it (`quality:` with `weights: checkpoint`), each variant's perplexity beside its
median latencies, so speed and quality stand in one table."""
from __future__ import annotations

import math
from typing import Dict, List

from sabench.records import RunRecord
from sabench.report.results import BASELINE, fmt_ms, median_ms, variants_of
from sabench.report.tables import md_table


def _field(r, name):
    """A field the records schema keeps as written (PhaseRecord.extra), or a dict's key."""
    return r.extra.get(name) if hasattr(r, "extra") else r.get(name)


def weights_used(results: RunRecord) -> str:
    """'random' or 'checkpoint' (results from before the choice existed ran random weights)."""
    recs = {_field(r, "weights") for r in results.records if _field(r, "weights")}
    if len(recs) == 1:
        return recs.pop()
    return (results.suite or {}).get("weights") or "random"


def section(results: RunRecord, index: Dict[tuple, object]) -> List[str]:
    weights = weights_used(results)
    if weights == "checkpoint":
        text = (f"**Weights: checkpoint** (the safetensors of `{(results.suite or {}).get('model')}`, "
                "loaded in every point's process).")
    else:
        text = ("**Weights: random** (seeded, std 0.02). Latency, memory and FLOPs do not depend on weight "
                "values; no perplexity was measured (a suite with `weights: checkpoint` and `quality:` adds it).")
    lines = ["## Weights and quality", "", text, ""]
    ppl = {}
    conv = None
    for r in results.records:
        if isinstance(_field(r, "perplexity"), (int, float)):
            ppl.setdefault(r.variant, _field(r, "perplexity"))
            conv = conv or _field(r, "perplexity_convention")
    errors = {r.variant: _field(r, "quality_error") for r in results.records if _field(r, "quality_error")}
    if not ppl and not errors:
        return lines
    base = ppl.get(BASELINE)
    points = sorted({(k[1], k[2]) for k in index}, key=lambda p: (str(p[0]), p[1]))
    rows = []
    for v in variants_of(results):
        if v not in ppl and v not in errors:
            continue
        p = ppl.get(v)
        delta = ("—" if v == BASELINE or p is None or not base else f"{p / base - 1:+.2%}")
        cells = [f"`{v}`", f"{p:.5g}" if p is not None and math.isfinite(p) else f"n/a ({errors.get(v, '')})",
                 delta]
        for b, t in points:
            pre, dec = index.get((v, b, t, "prefill")), index.get((v, b, t, "decode"))
            cells.append(f"{_ms(pre)} / {_ms(dec)}")
        rows.append(cells)
    headers = ["variant", "perplexity", "Δ perplexity"] + [f"b={b} s={t}: prefill / decode ms" for b, t in points]
    lines += [md_table(headers, rows), "",
              f"_Perplexity of each variant on the same windows ({conv or 'see results.json'}); Δ against "
              "baseline. Latencies are medians: prefill of the whole prompt, decode per step._", ""]
    return lines


def _ms(rec) -> str:
    m = median_ms(rec) if rec else None
    return fmt_ms(m) if m is not None else "—"

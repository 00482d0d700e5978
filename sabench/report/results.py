"""The small helpers every reader of results.json shares (the records are sabench.records types).

Nothing here imports matplotlib or scipy: `sabench check` and the CLI stay quick to start.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from sabench.records import Key, PhaseRecord, RunRecord

BASELINE = "baseline"


# ---------------------------------------------------------------------------- records


def index_records(results: RunRecord) -> Dict[Key, PhaseRecord]:
    """(variant, batch, seq, phase) -> record (the last one wins on duplicates)."""
    return results.index()


def variants_of(results: RunRecord) -> List[str]:
    """Variants in suite order, then any others found in the records (first-seen order)."""
    return results.variants()


def axis_values(results: RunRecord, field: str, phase: Optional[str] = None) -> List[int]:
    """Sorted distinct batch sizes (`field` "batch_size") or sequence lengths ("seq_len")."""
    vals = {r.batch_size if field == "batch_size" else r.seq_len for r in results.records
            if phase is None or r.phase == phase}
    return sorted(vals)


def phases_of(results: RunRecord) -> List[str]:
    return results.phases()


def is_ok(r: Optional[PhaseRecord]) -> bool:
    return r is not None and r.ok


def median_ms(r: Optional[PhaseRecord]) -> Optional[float]:
    return r.latency_ms.median if is_ok(r) else None


def p90_ms(r: Optional[PhaseRecord]) -> Optional[float]:
    return r.latency_ms.p90 if is_ok(r) else None


def samples_ms(r: Optional[PhaseRecord]) -> Tuple[float, ...]:
    return r.latency_ms.samples if r is not None and r.latency_ms is not None else ()


def utilisation(r: Optional[PhaseRecord]) -> Optional[float]:
    """The phase's headline utilisation: MFU for prefill, MBU for decode."""
    if r is None:
        return None
    return r.mfu if r.phase == "prefill" else r.mbu


def analytic_flops(r: Optional[PhaseRecord]) -> Optional[float]:
    """flops.analytic, else flops.counted, else None."""
    f = r.flops if r is not None else None
    if f is None:
        return None
    return f.analytic if f.analytic is not None else f.counted


def flops_breakdown(r: Optional[PhaseRecord]) -> Dict[str, float]:
    return dict((r.flops.analytic_breakdown or {}) if r is not None and r.flops is not None else {})


# memory_source -> how a reader names it (report notes, compare)
MEMORY_SOURCES = {
    "nvml-process": "NVML per-process used memory of the point's process (CUDA context included)",
    "nvml-device": "NVML device used memory minus the level before the point's process touched CUDA",
    "rss": "peak resident memory of the point's process (CPU run: interpreter and torch included)",
}


def peak_memory(r: Optional[PhaseRecord]) -> Tuple[Optional[float], Optional[str]]:
    """(bytes, source): the point's absolute peak footprint, `memory_bytes.device_peak`, and its
    `memory_source` ("nvml-process", "nvml-device", "rss"); (None, None) when not measured.
    (v1 files that named it otherwise are upgraded on load: sabench.records.v1.)"""
    mem = r.memory_bytes if r is not None else None
    if mem is None or mem.device_peak is None:
        return None, None
    return mem.device_peak, r.memory_source


def phase_rise(r: Optional[PhaseRecord]) -> Optional[float]:
    """The phase's peak minus the level read just before it."""
    mem = r.memory_bytes if r is not None else None
    return mem.phase_rise if mem is not None else None


def predicted_memory(r: Optional[PhaseRecord]) -> Optional[float]:
    """The memory model's total for the point (`memory_predicted_bytes.total`), when written."""
    pred = r.memory_predicted_bytes if r is not None else None
    return pred.get("total") if pred else None


def status_text(r: Optional[PhaseRecord], width: int = 48) -> str:
    """How a point that did not produce numbers reads in a table: never blank, never zero."""
    if r is None:
        return "not run"
    s = r.status
    if s == "ok":
        return "ok"
    if s == "oom":
        return "OOM"
    if s == "skipped_after_oom":
        return "skipped (after OOM)"
    if s in ("error", "killed"):
        msg = one_line(r.error or "unknown")
        return f"{s}: " + truncate(msg, width)
    return str(s)


def one_line(s: str) -> str:
    return " ".join(str(s).split())


def truncate(s: str, width: int) -> str:
    return s if len(s) <= width else s[: max(1, width - 1)].rstrip() + "…"


def _num(v) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def listing(items: List[str], limit: int) -> str:
    """'a, b, c' or 'a, b, and 7 more': lists in prose stay short."""
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", and {len(items) - limit} more"


def speedup(base: Optional[PhaseRecord], cur: Optional[PhaseRecord]) -> Optional[float]:
    b, c = median_ms(base), median_ms(cur)
    if b is None or c is None or b <= 0 or c <= 0:
        return None
    return b / c


# ---------------------------------------------------------------------------- formatting


def _scaled(n, scales, small) -> str:
    """Largest unit the value reaches, 3 significant digits; `small(n)` below the last scale."""
    n = _num(n)
    if n is None:
        return "—"
    for unit, scale in scales:
        if abs(n) >= scale:
            return f"{_sig(n / scale)} {unit}"
    return small(n)


_BYTES = (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10))
_FLOPS = (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3))
_SI = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def human_bytes(n) -> str:
    return _scaled(n, _BYTES, lambda v: f"{int(v)} B")


def human_flops(n) -> str:
    return _scaled(n, _FLOPS, lambda v: f"{int(v)} FLOP")


def human_rate(n, unit: str) -> str:
    """1.2e12 FLOP/s -> '1.2 TFLOP/s'; bytes/s -> '3.35 TB/s' (SI, as datasheets state them)."""
    return _scaled(n, tuple((p + unit, s) for p, s in _SI), lambda v: f"{_sig(v)} {unit}")


def human_count(n) -> str:
    """6738415616 -> '6.74 G' (parameters and other plain counts)."""
    return human_rate(n, "").rstrip()


def fmt_ms(v) -> str:
    v = _num(v)
    if v is None:
        return "—"
    return _sig(v, 3)


def fmt_rate(v) -> str:
    v = _num(v)
    if v is None:
        return "—"
    if abs(v) >= 1e3:
        return f"{v:,.0f}"
    return _sig(v, 3)


def fmt_pct(v) -> str:
    v = _num(v)
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if abs(v) < 10 else f"{100 * v:.0f}%"


def fmt_x(v) -> str:
    v = _num(v)
    if v is None:
        return "—"
    return f"{v:.2f}×"


def _sig(v: float, digits: int = 3) -> str:
    """Three significant digits without scientific notation for everyday magnitudes."""
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    s = f"{v:.{decimals}f}"
    if "." in s and decimals > 0:
        s = s.rstrip("0").rstrip(".")
    return s


def md_escape(s: str) -> str:
    """Safe inside a GitHub table cell."""
    return one_line(s).replace("|", "\\|")


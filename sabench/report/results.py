"""Reading results.json (the contract in sabench.schema) and the small helpers every reader shares.

Nothing here imports matplotlib or scipy: `sabench check` and the CLI stay quick to start.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from sabench.errors import UserError
from sabench.schema import PHASES, SCHEMA

BASELINE = "baseline"

# (variant, batch_size, seq_len, phase)
Key = Tuple[str, int, int, str]


class ResultsError(UserError):
    """A results file (or a pair of them) that cannot be used; the message is one line."""


def results_path(path_or_dir) -> Path:
    """RUN_DIR -> RUN_DIR/results.json; a file path is returned as is."""
    p = Path(path_or_dir)
    if p.is_dir():
        return p / "results.json"
    return p


def load_results(path_or_dir) -> dict:
    """Load and validate a results.json (or the one in a run directory).

    Raises ResultsError with a one-line message for a missing/unreadable file, bad
    JSON, a wrong or missing schema, or a malformed top level.
    """
    p = results_path(path_or_dir)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if Path(path_or_dir).is_dir():
            raise ResultsError(f"no results.json in {path_or_dir}") from None
        raise ResultsError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read {p}: {e.__class__.__name__}: {e}".splitlines()[0]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{p} is not a sabench results file (top level is not an object)")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise ResultsError(f"{p} has schema {schema!r}, expected {SCHEMA!r}")
    records = data.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ResultsError(f"{p}: 'records' must be a list of objects")
    for i, r in enumerate(records):
        missing = [k for k in ("variant", "batch_size", "seq_len", "phase", "status") if k not in r]
        if missing:
            raise ResultsError(f"{p}: record {i} lacks {', '.join(missing)}")
    if not isinstance(data.get("env", {}), dict) or not isinstance(data.get("suite", {}), dict):
        raise ResultsError(f"{p}: 'env' and 'suite' must be objects")
    data.setdefault("env", {})
    data.setdefault("suite", {})
    return data


# ---------------------------------------------------------------------------- records


def rkey(r: dict) -> Key:
    return (str(r["variant"]), int(r["batch_size"]), int(r["seq_len"]), str(r["phase"]))


def index_records(results: dict) -> Dict[Key, dict]:
    """(variant, batch, seq, phase) -> record (the last one wins on duplicates)."""
    return {rkey(r): r for r in results.get("records", [])}


def variants_of(results: dict) -> List[str]:
    """Variants in suite order, then any others found in the records (first-seen order)."""
    out: List[str] = []
    for v in list(results.get("suite", {}).get("variants") or []) + [r["variant"] for r in results["records"]]:
        v = str(v)
        if v not in out:
            out.append(v)
    return out


def axis_values(results: dict, field: str, phase: Optional[str] = None) -> List[int]:
    vals = {int(r[field]) for r in results["records"] if phase is None or r["phase"] == phase}
    return sorted(vals)


def phases_of(results: dict) -> List[str]:
    present = {r["phase"] for r in results["records"]}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


def is_ok(r: Optional[dict]) -> bool:
    return bool(r) and r.get("status") == "ok"


def median_ms(r: Optional[dict]) -> Optional[float]:
    if not is_ok(r):
        return None
    lat = r.get("latency_ms") or {}
    v = lat.get("median")
    if v is None and lat.get("samples"):
        v = median(lat["samples"])
    return _num(v)


def p90_ms(r: Optional[dict]) -> Optional[float]:
    if not is_ok(r):
        return None
    return _num((r.get("latency_ms") or {}).get("p90"))


def get_num(r: Optional[dict], *path) -> Optional[float]:
    """r[path[0]][path[1]]... as a float, or None when absent / not a finite number."""
    cur = r
    for k in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return _num(cur)


# memory_source -> how a reader names it (report notes, compare)
MEMORY_SOURCES = {
    "nvml-process": "NVML per-process used memory of the point's process (CUDA context included)",
    "nvml-device": "NVML device used memory minus the level before the point's process touched CUDA",
    "rss": "peak resident memory of the point's process (CPU run: interpreter and torch included)",
}


def peak_memory(r: Optional[dict]) -> Tuple[Optional[float], Optional[str]]:
    """(bytes, source): the point's absolute peak footprint, `memory_bytes.device_peak`, and its
    `memory_source` ("nvml-process", "nvml-device", "rss"); (None, None) when not measured.

    Files written before device_peak existed: `peak_nvml_process` is an nvml-process reading and
    a CPU record's `peak_rss` an rss one; their old `peak_nvml` was the phase's rise over the level
    before it, never a footprint (see phase_rise()).
    """
    mem = (r or {}).get("memory_bytes") or {}
    v = _num(mem.get("device_peak"))
    if v is not None:
        return v, (r or {}).get("memory_source")
    v = _num(mem.get("peak_nvml_process"))
    if v is not None:
        return v, "nvml-process"
    if "peak_allocated" not in mem and "peak_nvml" not in mem and _num(mem.get("peak_rss")) is not None:
        return _num(mem["peak_rss"]), "rss"
    return None, None


def phase_rise(r: Optional[dict]) -> Optional[float]:
    """The phase's peak minus the level read just before it (`peak_nvml` in older files)."""
    mem = (r or {}).get("memory_bytes") or {}
    v = _num(mem.get("phase_rise"))
    return v if v is not None else _num(mem.get("peak_nvml"))


def predicted_memory(r: Optional[dict]) -> Optional[float]:
    """The memory model's total for the point (`memory_predicted_bytes.total`), when written."""
    return get_num(r, "memory_predicted_bytes", "total")


def status_text(r: Optional[dict], width: int = 48) -> str:
    """How a point that did not produce numbers reads in a table: never blank, never zero."""
    if r is None:
        return "not run"
    s = r.get("status")
    if s == "ok":
        return "ok"
    if s == "oom":
        return "OOM"
    if s == "skipped_after_oom":
        return "skipped (after OOM)"
    if s == "error":
        msg = one_line(r.get("error") or "unknown")
        return "error: " + truncate(msg, width)
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


def median(xs: Iterable[float]) -> Optional[float]:
    s = sorted(float(x) for x in xs)
    if not s:
        return None
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def geomean(xs: Iterable[float]) -> float:
    """Geometric mean of positive numbers (the mean of ratios that multiply)."""
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def listing(items: List[str], limit: int) -> str:
    """'a, b, c' or 'a, b, and 7 more': lists in prose stay short."""
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", and {len(items) - limit} more"


def speedup(base: Optional[dict], cur: Optional[dict]) -> Optional[float]:
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


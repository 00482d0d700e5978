"""compare.md (+ PNGs): runs of the same suite on different hardware / software, side by side."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from sabench.io import write_atomic
from sabench.paths import reports_dir
from sabench.records import Key, ResultsError, RunRecord, key_label, load_results, results_path
from sabench.report.results import (fmt_ms, listing, fmt_rate, fmt_x, human_bytes, index_records, is_ok,
                                    median_ms, peak_memory, status_text, variants_of)
from sabench.report.intervals import WITHIN_NOTE, fmt_est, time_ratio
from sabench.report.tables import md_table
from sabench.stats import geomean_interval, verdict
from sabench.report import topology

MAX_LISTED = 20


class Run:
    def __init__(self, label: str, path: Path, results: RunRecord):
        self.label, self.path, self.results = label, path, results
        self.index = index_records(results)


SOFTWARE = ("torch", "cuda", "driver", "sabench", "transformers", "python")


def _device(env: dict) -> Optional[str]:
    name = env.get("device_name") or env.get("device")
    return str(name).removeprefix("NVIDIA ").strip() if name else None


def _commit(env: dict) -> Optional[str]:
    c = env.get("git_commit")
    return (str(c)[:8] + ("+dirty" if env.get("git_dirty") else "")) if c else None


def _labels(results: Sequence[RunRecord]) -> List[str]:
    """Labels that say how the runs differ, never their directory names.

    The first of these that differs between the runs names them: the device, the execution
    mode (eager / compiled), the software versions that differ (torch, CUDA, driver,
    sabench, ...), the commit, the creation time. Runs still sharing a label get the next
    differing one appended; runs that differ in none of them are "run 1", "run 2", ...
    A run without the value says so ("commit unknown"), never "?".
    """
    envs = [r.env for r in results]
    soft = [k for k in SOFTWARE if len({str(e.get(k)) for e in envs}) > 1]
    parts = [("topology", topology.labels(results)),
             ("device", [_device(e) for e in envs]),
             ("execution", [r.suite.get("execution") for r in results]),
             ("software", [", ".join(f"{k} {e.get(k) or '?'}" for k in soft) for e in envs]
              if soft else [None] * len(envs)),
             ("commit", [_commit(e) for e in envs]),
             ("created", [r.created for r in results])]
    parts = [(kind, p) for kind, p in parts if len({str(x) for x in p}) > 1]
    if not parts:
        return [f"run {i + 1}" for i in range(len(results))]

    def name(kind, x):
        return str(x) if x is not None else f"{kind} unknown"

    labels = [name(parts[0][0], x) for x in parts[0][1]]
    for kind, more in parts[1:]:
        dup = {lab for lab in labels if labels.count(lab) > 1}
        if not dup:
            break
        labels = [f"{lab} · {name(kind, more[i])}" if lab in dup else lab for i, lab in enumerate(labels)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels


def default_out_dir() -> Path:
    base = reports_dir() / "compare" / time.strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def compare_runs(run_dirs: Sequence, out_dir=None) -> Path:
    """Write OUT_DIR/compare.md and its PNGs for two or more runs; returns the markdown path.

    The first run is the reference: ratio columns are run / first run.
    Default OUT_DIR: reports/compare/<timestamp>/ (see sabench.paths).
    """
    if len(run_dirs) < 2:
        raise ResultsError("compare needs at least two runs")
    paths = [results_path(p) for p in run_dirs]
    loaded = [load_results(p) for p in paths]
    runs = [Run(label, p, res) for label, p, res in zip(_labels(loaded), paths, loaded)]
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)

    shared = set(runs[0].index)
    for r in runs[1:]:
        shared &= set(r.index)
    if not shared:
        raise ResultsError("the runs share no (variant, batch, seq_len, phase) point: nothing to compare")

    from sabench.report import plots_compare  # matplotlib is imported only when figures are drawn

    figs = plots_compare.compare_figures(runs, shared, out)
    md = render(runs, shared, figs, out)
    p = out / "compare.md"
    write_atomic(p, md)
    return p


def _flat(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def differences(runs: List[Run], section: str) -> Tuple[List[str], List[List[str]]]:
    flats = [_flat(r.results.env if section == "env" else r.results.suite) for r in runs]
    keys = []
    for f in flats:
        for k in f:
            if k not in keys:
                keys.append(k)
    rows = []
    for k in keys:
        vals = [f.get(k) for f in flats]
        if any(v != vals[0] for v in vals[1:]):
            rows.append([k] + [_cell(v) for v in vals])
    return ["key"] + [r.label for r in runs], rows


def _sorted_points(runs: List[Run], keys) -> List[Key]:
    order = {v: i for i, v in enumerate(variants_of(runs[0].results))}
    return sorted(keys, key=lambda k: (k[3] != "prefill", order.get(k[0], 1e9), k[0], k[1], k[2]))


def _metric_table(runs: List[Run], points: List[Tuple[str, int, int]], value, fmt,
                  interval=None) -> Tuple[List[str], List[List[str]]]:
    """value(run, (v, b, s)) -> (number or None, text when there is no number[, what was measured]).

    A ratio is shown only where both numbers measure the same thing (same third element).
    interval(first run, run, (v, b, s)) -> the ratio cell with its interval, where the metric has one."""
    headers = ["variant", "batch", "seq_len"]
    for i, r in enumerate(runs):
        headers.append(r.label)
        if i:
            headers.append(f"{r.label} / {runs[0].label}")
    rows = []
    for pt in points:
        row = [pt[0], str(pt[1]), str(pt[2])]
        ref = ref_kind = None
        for i, r in enumerate(runs):
            num, text, *kind = value(r, pt)
            kind = kind[0] if kind else None
            row.append(fmt(num) if num is not None else text)
            if i == 0:
                ref, ref_kind = num, kind
            elif num is not None and ref and kind != ref_kind:
                row.append(f"— ({kind} vs {ref_kind})")
            elif interval is not None and num is not None and ref:
                row.append(interval(runs[0], r, pt))
            else:
                row.append(fmt_x(num / ref) if (num is not None and ref) else "—")
        rows.append(row)
    return headers, rows


def _lat(phase):
    def value(run: Run, pt):
        r = run.index.get(pt + (phase,))
        return (median_ms(r), status_text(r, 30)) if is_ok(r) else (None, status_text(r, 30))
    return value


def _tps(phase):
    def value(run: Run, pt):
        r = run.index.get(pt + (phase,))
        return (r.tokens_per_s, status_text(r, 30)) if is_ok(r) else (None, status_text(r, 30))
    return value


def _energy(phase):
    def value(run: Run, pt):
        r = run.index.get(pt + (phase,))
        if not is_ok(r):
            return None, status_text(r, 30)
        j = r.joules_per_token
        return (j, "—") if j is not None else (None, "not measured")
    return value


def _mem(shared):
    """The device peak of a point: the max over the phases every run has, with its source."""
    def value(run: Run, pt):
        rs = [run.index.get(pt + (p,)) for p in ("prefill", "decode") if pt + (p,) in shared]
        peaks = [peak_memory(r) for r in rs if is_ok(r)]
        peaks = [p for p in peaks if p[0] is not None]
        if peaks:
            v, src = max(peaks)
            return v, None, src
        bad = [r for r in rs if r is not None and not is_ok(r)]
        return None, status_text(bad[0], 30) if bad else "—", None
    return value


def _time_interval(phase, inverse: bool = False):
    """The ratio cell of a latency (run / first) or throughput (first / run time) table: the
    ratio with its interval over rounds (unpaired: different runs)."""
    def cell(ref: Run, run: Run, pt) -> str:
        est = time_ratio(ref.index.get(pt + (phase,)), run.index.get(pt + (phase,)), same_run=False)
        return fmt_est(est.inverted() if (est is not None and inverse) else est, "— (too few samples)")
    return cell


def point_ratios(runs: List[Run], run: Run, phase: str, shared) -> list:
    """(key, run / first latency estimate) over the shared points of a phase both ran ok."""
    out = []
    for k in sorted(k for k in shared if k[3] == phase):
        est = time_ratio(runs[0].index.get(k), run.index.get(k), same_run=False)
        if est is not None:
            out.append((k, est))
    return out


def geo_ratio(runs: List[Run], run: Run, phase: str, shared):
    """(geometric mean with interval, min, max, n, verdict counts) of run / first latency."""
    pr = point_ratios(runs, run, phase, shared)
    if not pr:
        return None
    ests = [e for _, e in pr]
    counts = {}
    for e in ests:
        lab = "one round, not judged" if e.within_process else verdict(e).label
        counts[lab] = counts.get(lab, 0) + 1
    return (geomean_interval(ests), min(e.ratio for e in ests), max(e.ratio for e in ests), len(ests),
            counts)


def render(runs: List[Run], shared, figs: Dict[str, Optional[str]], out: Path) -> str:
    ref = runs[0]
    lines = [f"# sabench compare: {', '.join(r.label for r in runs)}", ""]
    lines += ["Runs, named by what differs between them: "
              + "; ".join(f"**{r.label}** = `{r.path}`" for r in runs)
              + f". Ratios are run / {ref.label} (the first run).", ""]

    lines += ["## Environment differences", ""]
    headers, rows = differences(runs, "env")
    rows += topology.env_rows([r.results for r in runs])
    lines += [md_table(headers, rows) if rows else "The environments record the same values for every key.", ""]
    headers, rows = differences(runs, "suite")
    if rows:
        lines += ["The suites differ too (only the shared points are compared):", "", md_table(headers, rows), ""]

    # --- summary
    lines += ["## Summary", ""]
    within = False
    for r in runs[1:]:
        for phase in ("prefill", "decode"):
            g = geo_ratio(runs, r, phase, shared)
            if g:
                gm, lo, hi, n, counts = g
                said = None if gm.within_process else verdict(gm).label
                what = {"faster": f"i.e. {fmt_est(gm.inverted())} as fast",
                        "slower": f"i.e. {fmt_est(gm)} as slow",
                        None: "an estimate only (one round per point: no verdict; measure `--rounds 3` or more)"}.get(
                    said, f"i.e. not distinguishable from {ref.label} overall")
                per = ", ".join(f"{c} {lab}" for lab, c in sorted(counts.items()))
                lines.append(f"- {phase}: **{r.label}** takes **{fmt_est(gm)}** the time of {ref.label} "
                             f"(geometric mean over {n} points with its 95% interval, range "
                             f"{fmt_x(lo)}–{fmt_x(hi)}): {what}; per point: {per} (5% practical threshold).")
                within = within or gm.within_process
    flips = []
    for k in _sorted_points(runs, shared):
        sts = [r.index[k].status for r in runs]
        if len(set(sts)) > 1:
            flips.append(f"{key_label(k)} (" + ", ".join(
                f"{r.label}: {st}" for r, st in zip(runs, sts)) + ")")
    if flips:
        lines.append(f"- Status differs at {len(flips)} point(s): " + listing(flips, MAX_LISTED) + ".")
    lines.append(f"- {len(shared)} points are in every run.")
    if within:
        lines.append(f"- {WITHIN_NOTE}")
    lines.append("- Latency and throughput ratios carry 95% intervals over rounds (unpaired: different runs); "
                 "energy and memory are one reading per point, so their ratios have none.")
    left = _left_out(runs, shared)
    if left:
        lines += ["", "### Points left out (not in every run)", ""]
        for r, pts in left:
            lines.append(f"- **{r.label}**: {len(pts)} point(s) compared nowhere: " + listing(pts, MAX_LISTED) + ".")
    lines.append("")

    if any(figs.values()):
        lines += ["## Figures", ""]
        for key, alt in (("latency_prefill", "prefill latency per run"),
                         ("latency_decode", "decode per-token latency per run"),
                         ("ratio", "latency ratio against the first run")):
            if figs.get(key):
                lines += [f"![{alt}]({figs[key]})", ""]

    pts3 = sorted({k[:3] for k in shared},
                  key=lambda p: ({v: i for i, v in enumerate(variants_of(ref.results))}.get(p[0], 1e9),
                                 p[0], p[1], p[2]))
    for phase, title, value, fmt, interval in (
            ("prefill", "Prefill median latency (ms)", _lat("prefill"), fmt_ms, _time_interval("prefill")),
            ("decode", "Decode median per-token latency (ms)", _lat("decode"), fmt_ms, _time_interval("decode")),
            ("prefill", "Prefill throughput (tokens/s)", _tps("prefill"), fmt_rate,
             _time_interval("prefill", inverse=True)),
            ("decode", "Decode throughput (tokens/s)", _tps("decode"), fmt_rate,
             _time_interval("decode", inverse=True)),
            *topology.per_gpu_tables(runs),
            ("prefill", "Prefill energy per token (J)", _energy("prefill"), fmt_ms, None),
            ("decode", "Decode energy per token (J)", _energy("decode"), fmt_ms, None)):
        pts = [p for p in pts3 if p + (phase,) in shared]
        if "energy" in title and not any(getattr(r.index.get(p + (phase,)), "joules_per_token", None) is not None
                                          for r in runs for p in pts):
            continue
        if pts:
            h, rows = _metric_table(runs, pts, value, fmt, interval)
            lines += [f"## {title}", "", md_table(h, rows, ["left"] + ["right"] * (len(h) - 1)), ""]
    pts = [p for p in pts3 if any(p + (ph,) in shared for ph in ("prefill", "decode"))]
    if pts:
        srcs = []
        for r in runs:
            s = sorted({peak_memory(x)[1] for x in r.index.values() if peak_memory(x)[1]})
            srcs.append(f"{r.label}: {'/'.join(s) or 'none'}")
        h, rows = _metric_table(runs, pts, _mem(shared), human_bytes)
        lines += ["## Device peak memory", "",
                  f"_The point's own absolute footprint, max over prefill and decode; a ratio only between "
                  f"readings of the same source. Sources: {'; '.join(srcs)}._", "",
                  md_table(h, rows, ["left"] + ["right"] * (len(h) - 1)), ""]
    return "\n".join(lines).rstrip() + "\n"


def _left_out(runs: List[Run], shared):
    out = []
    for r in runs:
        extra = _sorted_points(runs, set(r.index) - shared)
        if extra:
            missing_in = []
            for k in extra:
                lacking = [o.label for o in runs if k not in o.index]
                missing_in.append(f"{key_label(k)} (not in {', '.join(lacking)})")
            out.append((r, missing_in))
    return out

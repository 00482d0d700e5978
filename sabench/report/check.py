"""`sabench check BASELINE CURRENT`: regression gate for CI.

Deterministic figures (params, kv_cache_bytes, flops.analytic, flops.counted) must
match exactly, and a point that was ok must still be ok and present (a point missing
from CURRENT is a regression unless `allow_missing`); a point that now errors is a
regression whatever it was before.

Timings are compared on the raw samples (latency_ms.samples). A point regresses only
when its median slowdown is larger than `threshold` AND a one-sided Mann-Whitney U
test says the current samples are larger (p < alpha); improvements mirror that
(median change below -threshold and "less" significant). Everything else counts as
unchanged, except points whose sample counts cannot reach p < alpha at all (the exact
test's smallest p-value is 1 / C(n_a + n_b, n_a): 5 samples a side for alpha 0.01):
those are counted apart as *unjudged* and named in the summary, never passed silently.

Memory is not gated: `memory_bytes.device_peak` changes beyond the threshold between readings
of the same source are listed apart (never compared across sources).

Exit codes (the CLI): 0 no regression, 1 regression, 2 bad input (raised as ResultsError).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from sabench.io import write_atomic
from sabench.report.results import (Key, PhaseRecord, ResultsError, RunRecord, fmt_ms, human_bytes,
                                    index_records, key_label, load_results, md_escape, peak_memory,
                                    results_path, samples_ms, status_text)

# figure name -> its value in a record
DETERMINISTIC = (("params", lambda r: r.params), ("kv_cache_bytes", lambda r: r.kv_cache_bytes),
                 ("flops.analytic", lambda r: r.flops.analytic if r.flops else None),
                 ("flops.counted", lambda r: r.flops.counted if r.flops else None))


def can_be_significant(n_a: int, n_b: int, alpha: float) -> bool:
    """Whether a one-sided Mann-Whitney U test on samples of these sizes can give p < alpha
    (its smallest p-value, with no ties, is 1 / C(n_a + n_b, n_a))."""
    return n_a > 0 and n_b > 0 and 1.0 / math.comb(n_a + n_b, n_a) < alpha


def parse_threshold(value: Union[str, float, int]) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05, '5' -> 0.05 (a bare number > 1 is a percentage, <= 1 a fraction)."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            t = float(text[:-1]) / 100.0
        else:
            t = float(text)
            if t > 1:
                t /= 100.0
    except ValueError:
        raise ResultsError(f"bad threshold {value!r}: expected e.g. 5%, 0.05 or 5") from None
    if not (0 <= t < 10) or t != t:
        raise ResultsError(f"bad threshold {value!r}: must be a non-negative fraction or percentage")
    return t


@dataclass
class Finding:
    key: Key
    metric: str                 # "latency", "status", "params", "kv_cache_bytes", "flops.analytic", ...
    baseline: str
    current: str
    change: Optional[float] = None   # relative: current / baseline - 1
    p_value: Optional[float] = None
    note: str = ""
    delta: Optional[float] = None    # deterministic figures: current - baseline

    @property
    def point(self) -> str:
        return key_label(self.key)

    def row(self) -> List[str]:
        if self.delta is not None:
            d = int(self.delta) if float(self.delta).is_integer() else self.delta
            ch = f"{d:+,}" + (f" ({self.change * 100:+.2g}%)" if self.change is not None else "")
        else:
            ch = "—" if self.change is None else f"{self.change * 100:+.1f}%"
        p = "—" if self.p_value is None else f"{self.p_value:.2g}"
        return [self.point, self.metric, self.baseline, self.current, ch, p]


HEADERS = ["point", "metric", "baseline", "current", "change", "p"]


@dataclass
class CheckResult:
    baseline_path: str
    current_path: str
    threshold: float
    alpha: float
    timings_judged: bool
    regressions: List[Finding] = field(default_factory=list)
    improvements: List[Finding] = field(default_factory=list)
    unchanged: int = 0                      # timing points judged unchanged
    unjudged: List[Key] = field(default_factory=list)  # too few samples for the test to reach alpha
    deterministic_checked: int = 0          # (point, figure) pairs compared exactly
    timing_changes: List[Finding] = field(default_factory=list)  # --timings off: listed, not judged
    memory_changes: List[Finding] = field(default_factory=list)  # device_peak beyond the threshold: listed
    notes: List[str] = field(default_factory=list)
    shared_points: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    @property
    def passed(self) -> bool:
        return not self.regressions

    def headline(self) -> str:
        verdict = "FAIL" if self.regressions else "PASS"
        timing = (f"timings: threshold {self.threshold * 100:g}%, Mann-Whitney U p < {self.alpha:g}"
                  if self.timings_judged else "timings not judged (--timings off)")
        return (f"sabench check: {verdict}: {len(self.regressions)} regression(s), "
                f"{len(self.improvements)} improvement(s), {self.unchanged} unchanged timing point(s), "
                + (f"{len(self.unjudged)} timing point(s) NOT judged (too few samples), " if self.unjudged else "")
                + f"{self.deterministic_checked} deterministic figure(s) checked over {self.shared_points} "
                f"shared point(s) ({timing})")

    def _sections(self):
        return (("Regressions", self.regressions), ("Improvements", self.improvements),
                ("Timing changes beyond the threshold (not judged)", self.timing_changes),
                ("Device peak memory changes beyond the threshold (not judged)", self.memory_changes))

    def to_text(self) -> str:
        from tabulate import tabulate

        out = [self.headline(), f"  baseline: {self.baseline_path}", f"  current:  {self.current_path}"]
        for title, items in self._sections():
            if items:
                out += ["", f"{title} ({len(items)}):",
                        tabulate([f.row() for f in items], headers=HEADERS, tablefmt="simple",
                                 disable_numparse=True)]
        if self.notes:
            out += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        from sabench.report.tables import md_table

        icon = "❌" if self.regressions else "✅"
        head = (f"{len(self.regressions)} regression(s)" if self.regressions else "no regression")
        lines = [f"### {icon} sabench check: {head}", ""]
        timing = (f"timings gated at a {self.threshold * 100:g}% median change with Mann-Whitney U "
                  f"p < {self.alpha:g}" if self.timings_judged else "timings **not** judged (`--timings off`)")
        lines += [f"Baseline `{md_escape(self.baseline_path)}` vs current `{md_escape(self.current_path)}`: "
                  f"{self.shared_points} shared points, {self.deterministic_checked} deterministic figures "
                  f"checked exactly, {timing}.", ""]
        lines += [f"**{len(self.regressions)}** regressions · **{len(self.improvements)}** improvements · "
                  f"**{self.unchanged}** unchanged timings"
                  + (f" · **{len(self.unjudged)}** timings not judged (too few samples)" if self.unjudged else ""),
                  ""]
        for title, items in self._sections():
            if items:
                lines += [f"#### {title}", "", md_table(HEADERS, [f.row() for f in items],
                                                        ["left", "left", "right", "right", "right", "right"]), ""]
        if self.notes:
            lines += ["<details><summary>Notes</summary>", ""] + [f"- {md_escape(n)}" for n in self.notes]
            lines += ["", "</details>", ""]
        return "\n".join(lines)


def _fmt_det(v) -> str:
    if v is None:
        return "missing"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int) else str(v)


def _samples(r: PhaseRecord) -> np.ndarray:
    return np.asarray(samples_ms(r), dtype=float)


def _load(x, what: str) -> Tuple[RunRecord, str]:
    if isinstance(x, RunRecord):
        return x, f"<{what}>"
    if isinstance(x, dict):
        return RunRecord.from_dict(x, f"<{what}>"), f"<{what}>"
    return load_results(x), str(results_path(x))


def check(baseline, current, threshold: Union[float, str] = 0.05, markdown=None, alpha: float = 0.01,
          timings: bool = True, allow_missing: bool = False) -> CheckResult:
    """Compare CURRENT against BASELINE (run dirs, results.json paths or loaded dicts).

    `markdown`: a file to write the PR-comment summary to; when the GITHUB_STEP_SUMMARY
    environment variable is set the same markdown is appended to that file as well.
    Raises ResultsError for unreadable / wrong-schema inputs or when no point is shared.
    """
    thr = parse_threshold(threshold) if isinstance(threshold, str) else float(threshold)
    if thr < 0:
        raise ResultsError(f"bad threshold {threshold!r}: must be >= 0")
    if not 0 < alpha < 1:
        raise ResultsError(f"bad alpha {alpha!r}: must be between 0 and 1")
    base, base_path = _load(baseline, "baseline")
    cur, cur_path = _load(current, "current")
    bi, ci = index_records(base), index_records(cur)
    shared = [k for k in bi if k in ci]
    if not shared:
        raise ResultsError(f"{base_path} and {cur_path} share no (variant, batch, seq_len, phase) point")
    res = CheckResult(base_path, cur_path, thr, alpha, timings, shared_points=len(shared))

    only_b = [k for k in bi if k not in ci]
    only_c = [k for k in ci if k not in bi]
    lost = [k for k in only_b if bi[k].ok]
    if lost and not allow_missing:
        res.regressions += [Finding(k, "status", "ok", "missing", note="not in the current run") for k in lost]
        only_b = [k for k in only_b if k not in lost]
    if only_b:
        res.notes.append(f"{len(only_b)} point(s) only in the baseline, not checked: " + _keys(only_b))
    if only_c:
        res.notes.append(f"{len(only_c)} point(s) only in the current run, not checked: " + _keys(only_c))

    candidates = []  # (key, base samples, cur samples, change, direction)
    for k in sorted(shared, key=_order):
        rb, rc = bi[k], ci[k]
        sb, sc = rb.status, rc.status
        # --- status
        if sb != sc:
            f = Finding(k, "status", status_text(rb, 40), status_text(rc, 40))
            if sb == "ok" or sc in ("error", "killed"):
                res.regressions.append(f)
            elif sc == "ok":
                res.improvements.append(f)
            else:
                res.notes.append(f"{f.point}: status {f.baseline} -> {f.current}")
        # --- deterministic figures
        for name, value in DETERMINISTIC:
            vb, vc = value(rb), value(rc)
            if vb is None and vc is None:
                continue
            if vb is None or vc is None:
                if sb == "ok" and sc == "ok":
                    res.deterministic_checked += 1
                    res.regressions.append(Finding(k, name, _fmt_det(vb), _fmt_det(vc),
                                                   note="present in one run only"))
                continue
            res.deterministic_checked += 1
            if vb != vc:
                ch = (float(vc) / float(vb) - 1) if float(vb) else None
                res.regressions.append(Finding(k, name, _fmt_det(vb), _fmt_det(vc), ch,
                                               delta=float(vc) - float(vb)))
        if not (sb == "ok" and sc == "ok"):
            continue
        _memory_change(res, k, rb, rc, thr)
        # --- timings
        a, b = _samples(rb), _samples(rc)
        if not len(a) or not len(b) or float(np.median(a)) <= 0:
            res.notes.append(f"{key_label(k)}: no usable timing samples in "
                             f"{'the baseline' if not len(a) or float(np.median(a)) <= 0 else 'the current run'}")
            if timings:
                res.unjudged.append(k)
            continue
        ma, mb = float(np.median(a)), float(np.median(b))
        change = mb / ma - 1
        if timings and not can_be_significant(len(a), len(b), alpha):
            res.unjudged.append(k)
            continue
        if not timings:
            if abs(change) > thr:
                res.timing_changes.append(Finding(k, "latency", fmt_ms(ma) + " ms", fmt_ms(mb) + " ms", change))
            continue
        if change > thr:
            candidates.append((k, a, b, change, "greater", ma, mb))
        elif change < -thr:
            candidates.append((k, a, b, change, "less", ma, mb))
        else:
            res.unchanged += 1

    if candidates:
        from scipy.stats import mannwhitneyu  # only when some median moved beyond the threshold

        for k, a, b, change, direction, ma, mb in candidates:
            p = float(mannwhitneyu(b, a, alternative=direction).pvalue)
            f = Finding(k, "latency", fmt_ms(ma) + " ms", fmt_ms(mb) + " ms", change, p)
            if p < alpha:
                (res.regressions if direction == "greater" else res.improvements).append(f)
            else:
                res.unchanged += 1
                res.notes.append(f"{f.point}: median {change * 100:+.1f}% but not significant (p = {p:.2g})")
    if res.unjudged and timings:
        res.notes.append(f"{len(res.unjudged)} timing point(s) not judged: with so few samples a Mann-Whitney U "
                         f"test cannot reach p < {alpha:g} (raise the suite's repeats to 5 or more): "
                         + _keys(res.unjudged))
    if not timings:
        res.unchanged = 0
    res.regressions.sort(key=lambda f: (f.metric == "latency", -round(f.change or 0, 3), _order(f.key)))
    res.improvements.sort(key=lambda f: (f.metric == "latency", round(f.change or 0, 3), _order(f.key)))
    res.timing_changes.sort(key=lambda f: (-round(abs(f.change or 0), 3), _order(f.key)))
    res.memory_changes.sort(key=lambda f: (-round(abs(f.change or 0), 3), _order(f.key)))

    if markdown is not None or os.environ.get("GITHUB_STEP_SUMMARY"):
        md = res.to_markdown()
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        try:
            if markdown is not None:
                Path(markdown).parent.mkdir(parents=True, exist_ok=True)
                write_atomic(markdown, md)
            if summary:
                with open(summary, "a", encoding="utf-8") as fh:
                    fh.write(md + "\n")
        except OSError as e:
            raise ResultsError(f"cannot write the markdown summary: {e}") from None
    return res


def _memory_change(res: CheckResult, k: Key, rb: PhaseRecord, rc: PhaseRecord, thr: float) -> None:
    """device_peak is listed when it moved beyond the threshold, never gated (allocator and driver
    figures move with versions), and only compared between readings of the same source."""
    (mb, src_b), (mc, src_c) = peak_memory(rb), peak_memory(rc)
    if mb is None or mc is None or mb <= 0:
        return
    if src_b != src_c:
        res.notes.append(f"{key_label(k)}: device peak not compared ({src_b} vs {src_c})")
        return
    change = mc / mb - 1
    if abs(change) > thr:
        res.memory_changes.append(Finding(k, f"device_peak ({src_c})", human_bytes(mb), human_bytes(mc), change))


def _order(k: Key):
    return (k[3] != "prefill", k[0], k[1], k[2])


def _keys(keys: List[Key], limit: int = 10) -> str:
    items = [key_label(k) for k in keys[:limit]]
    return ", ".join(items) + (f", and {len(keys) - limit} more" if len(keys) > limit else "")

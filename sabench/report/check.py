"""`sabench check BASELINE CURRENT`: the regression gate for CI, with a stated false-alarm rate.

Statuses and deterministic figures (params, kv_cache_bytes, flops.analytic, flops.counted) must
match exactly: a point that was ok in the baseline and errored, went out of memory or is missing
in the current run is a regression (a missing point is a note with `allow_missing`), and so is a
point that now errors whatever it was before.

Timings are judged on each round's fastest step (sabench.stats.ok_rounds; the runs are
different runs, so the rounds are unpaired): work on a shared machine is only ever slowed by its
neighbours, so the fastest step of a process follows the work where its median follows the
machine's load (measured: docs/methodology.md, "The regression gate"). Two families of tests:
- per point: a point REGRESSES when the whole confidence interval of its slowdown (current /
  baseline, sabench.stats.regression) lies above 1 + threshold; improvements mirror that;
- per phase: the same test on one value per round, the median over the phase's points of each
  point's value on a common scale (sabench.stats.round_centres), which catches a slowdown spread
  over every point that no single point's few rounds can resolve.
The family-wise false-alarm rate is held to `alpha` (default 5%) by Bonferroni: half of alpha
over the K points judged, half over the phases. A point with fewer than stats.MIN_ROUNDS
measured rounds a side is NOT JUDGED (counted and named, never passed silently): a one-round
run or a schema v1 file has only the steps of one process, which ignore the variation between
processes, so they never decide an exit status.

Invalid timings never reach here: sabench.records refuses them on load (<= 0, NaN, inf).
A comparison in which no point ran ok on both sides FAILS (exit 1): there is nothing to judge.

Memory is not gated: `memory_bytes.device_peak` changes beyond the threshold between readings
of the same source are listed apart (one reading per point: no interval).

Exit codes (the CLI): 0 no regression, 1 regression or nothing comparable, 2 bad input.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

from sabench.io import write_atomic
from sabench.report.intervals import fmt_est
from sabench.records import Key, PhaseRecord, ResultsError, RunRecord, key_label, load_results, results_path
from sabench.report.results import fmt_ms, human_bytes, index_records, md_escape, peak_memory, status_text
from sabench.stats import MIN_ROUNDS, RatioEstimate, geomean, ok_rounds, regression, round_centres

# figure name -> its value in a record
DETERMINISTIC = (("params", lambda r: r.params), ("kv_cache_bytes", lambda r: r.kv_cache_bytes),
                 ("flops.analytic", lambda r: r.flops.analytic if r.flops else None),
                 ("flops.counted", lambda r: r.flops.counted if r.flops else None))
DEFAULT_ALPHA = 0.05
SUITE = "*"  # the variant of a suite-level finding's key: a phase judged over all its points
DET_NAMES = tuple(n for n, _ in DETERMINISTIC)


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
    estimate: Optional[RatioEstimate] = None  # latency: current / baseline with its interval
    note: str = ""
    delta: Optional[float] = None    # deterministic figures: current - baseline

    @property
    def point(self) -> str:
        return f"{self.key[3]}, all points" if self.key[0] == SUITE else key_label(self.key)

    def row(self) -> List[str]:
        if self.delta is not None:
            d = int(self.delta) if float(self.delta).is_integer() else self.delta
            ch = f"{d:+,}" + (f" ({self.change * 100:+.2g}%)" if self.change is not None else "")
        else:
            ch = "—" if self.change is None else f"{self.change * 100:+.1f}%"
        return [self.point, self.metric, self.baseline, self.current, ch,
                fmt_est(self.estimate)]


HEADERS = ["point", "metric", "baseline", "current", "change", "current / baseline [interval]"]


@dataclass
class CheckResult:
    baseline_path: str
    current_path: str
    threshold: float
    alpha: float                            # family-wise false-alarm rate of the timing gate
    timings_judged: bool
    regressions: List[Finding] = field(default_factory=list)
    improvements: List[Finding] = field(default_factory=list)
    unchanged: int = 0                      # timing points judged unchanged
    unjudged: List[Key] = field(default_factory=list)  # fewer than MIN_ROUNDS rounds (or samples) a side
    inconclusive: List[Key] = field(default_factory=list)  # passed, but the estimate is beyond the threshold
    deterministic_checked: int = 0          # (point, figure) pairs compared exactly
    timing_changes: List[Finding] = field(default_factory=list)  # --timings off: listed, not judged
    memory_changes: List[Finding] = field(default_factory=list)  # device_peak beyond the threshold: listed
    notes: List[str] = field(default_factory=list)
    shared_points: int = 0
    comparable: int = 0                     # shared points ok on both sides
    judged: int = 0                         # K: timing points the gate judged
    confidence: float = 0.95                # each judged point's interval: 1 - alpha / K
    suite_judged: int = 0                   # phases judged as a whole (stats.round_centres)
    suite_confidence: float = 0.95          # each phase's interval: 1 - (alpha / 2) / phases

    @property
    def nothing_comparable(self) -> bool:
        return self.comparable == 0

    @property
    def exit_code(self) -> int:
        return 1 if (self.regressions or self.nothing_comparable) else 0

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def _basis(self) -> str:
        if not self.timings_judged:
            return "timings not judged (--timings off)"
        if not self.judged:
            return (f"timings NOT judged: no point has {MIN_ROUNDS} measured rounds a side "
                    f"(measure `--rounds {MIN_ROUNDS}` or more; `--resume` adds rounds)")
        s = f"{1 - self.alpha:.0%} family-wise intervals"
        if self.unjudged:
            s += f", {len(self.unjudged)} timing point(s) NOT judged (fewer than {MIN_ROUNDS} rounds a side)"
        return s

    def headline(self) -> str:
        """The one-line verdict (the first line of the text and of the markdown)."""
        pts = f"{self.comparable} point(s)"
        if self.nothing_comparable:
            return (f"FAIL: no comparable point: none of the {self.shared_points} shared point(s) ran ok in "
                    f"both runs, so nothing could be judged")
        if self.regressions:
            slow = sum(f.metric.startswith("latency") for f in self.regressions)
            status = sum(f.metric == "status" for f in self.regressions)
            det = len(self.regressions) - slow - status
            parts = [f"{slow} slower beyond {self.threshold:.0%}"] if slow else []
            parts += [f"{status} errored, out of memory or missing"] if status else []
            parts += [f"{det} deterministic figure(s) changed"] if det else []
            return f"FAIL: {len(self.regressions)} regression(s) ({', '.join(parts)}), {pts}, {self._basis()}"
        what = (f"no slowdown beyond {self.threshold:.0%} detected" if self.timings_judged and self.judged
                else "statuses and deterministic figures unchanged")
        return f"PASS: {what}, {pts}, {self._basis()}"

    def _summary(self) -> str:
        timings = (f"{self.unchanged} unchanged timing point(s), {len(self.unjudged)} not judged"
                   if self.timings_judged else "timings not judged (--timings off)")
        return (f"{len(self.regressions)} regression(s), {len(self.improvements)} improvement(s), {timings}; "
                f"{self.deterministic_checked} deterministic figure(s) checked over {self.shared_points} "
                f"shared point(s)")

    def _changed(self) -> List[Finding]:
        """Points whose status or timing changed (regressions first), then the listed timing changes."""
        keep = [f for f in self.regressions + self.improvements if f.metric not in DET_NAMES]
        return keep + self.timing_changes

    def _deterministic(self) -> List[Finding]:
        return [f for f in self.regressions + self.improvements if f.metric in DET_NAMES]

    def _sections(self):
        return (("Points that changed", self._changed()),
                ("Deterministic figures that changed", self._deterministic()),
                ("Device peak memory changes beyond the threshold (one reading each, not gated)",
                 self.memory_changes))

    def _all_notes(self) -> List[str]:
        return list(self.notes)

    def to_text(self) -> str:
        from tabulate import tabulate

        out = [self.headline(), f"  {self._summary()}", f"  baseline: {self.baseline_path}",
               f"  current:  {self.current_path}"]
        for title, items in self._sections():
            if items:
                out += ["", f"{title} ({len(items)}):",
                        tabulate([_row(f) for f in items], headers=HEADERS + ["verdict"], tablefmt="simple",
                                 disable_numparse=True)]
        out += [""] + [f"note: {n}" for n in self._all_notes()] if self._all_notes() else []
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        """First line: the verdict; then the points that changed with their intervals, the
        deterministic figures that changed, memory changes, and the notes."""
        from sabench.report.tables import md_table

        lines = [self.headline(), "",
                 f"Baseline `{md_escape(self.baseline_path)}` vs current `{md_escape(self.current_path)}`: "
                 f"{self._summary()}.", ""]
        for title, items in self._sections():
            if items:
                lines += [f"#### {title}", "", md_table(HEADERS + ["verdict"], [_row(f) for f in items],
                                                        ["left", "left", "right", "right", "right", "right",
                                                         "left"]), ""]
        notes = self._all_notes()
        if notes:
            lines += ["#### Notes", ""] + [f"- {md_escape(n)}" for n in notes] + [""]
        return "\n".join(lines)


def _row(f: Finding) -> List[str]:
    return f.row() + [f.note or ("changed" if f.metric in DET_NAMES else "")]


def _fmt_det(v) -> str:
    if v is None:
        return "missing"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int) else str(v)


def _load(x, what: str) -> Tuple[RunRecord, str]:
    if isinstance(x, RunRecord):
        return x, f"<{what}>"
    if isinstance(x, dict):
        return RunRecord.from_dict(x, f"<{what}>"), f"<{what}>"
    return load_results(x), str(results_path(x))


def check(baseline, current, threshold: Union[float, str] = 0.05, markdown=None, alpha: float = DEFAULT_ALPHA,
          timings: bool = True, allow_missing: bool = False) -> CheckResult:
    """Compare CURRENT against BASELINE (run dirs, results.json paths, loaded dicts or RunRecords).

    `alpha`: the family-wise false-alarm rate of the timing gate (Bonferroni over the points judged).
    `markdown`: a file to write the PR-comment summary to; when the GITHUB_STEP_SUMMARY
    environment variable is set the same markdown is appended to that file as well.
    Raises ResultsError for unreadable / wrong-schema / invalid inputs or when no point is shared.
    """
    thr = parse_threshold(threshold) if isinstance(threshold, str) else float(threshold)
    if thr < 0:
        raise ResultsError(f"bad threshold {threshold!r}: must be >= 0")
    if not 0 < alpha < 1:
        raise ResultsError(f"bad alpha {alpha!r}: the family-wise false-alarm rate must lie between 0 and 1")
    base, base_path = _load(baseline, "baseline")
    cur, cur_path = _load(current, "current")
    bi, ci = index_records(base), index_records(cur)
    shared = [k for k in bi if k in ci]
    if not shared:
        raise ResultsError(f"{base_path} and {cur_path} share no (variant, batch, seq_len, phase) point: "
                           f"nothing to compare; check that both ran the same suite")
    res = CheckResult(base_path, cur_path, thr, alpha, timings, shared_points=len(shared))
    _missing(res, bi, ci, allow_missing)
    timed = []  # (key, base record, current record): ok on both sides
    for k in sorted(shared, key=_order):
        rb, rc = bi[k], ci[k]
        _status(res, k, rb, rc)
        _deterministic(res, k, rb, rc)
        if not (rb.ok and rc.ok):
            continue
        res.comparable += 1
        _memory_change(res, k, rb, rc, thr)
        timed.append((k, rb, rc))
    _timings(res, timed)
    res.regressions.sort(key=lambda f: (f.metric == "latency", -round(f.change or 0, 3), _order(f.key)))
    res.improvements.sort(key=lambda f: (f.metric == "latency", round(f.change or 0, 3), _order(f.key)))
    res.timing_changes.sort(key=lambda f: (-round(abs(f.change or 0), 3), _order(f.key)))
    res.memory_changes.sort(key=lambda f: (-round(abs(f.change or 0), 3), _order(f.key)))
    _write_markdown(res, markdown)
    return res


def _missing(res: CheckResult, bi, ci, allow_missing: bool) -> None:
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


def _status(res: CheckResult, k: Key, rb: PhaseRecord, rc: PhaseRecord) -> None:
    if rb.status == rc.status:
        return
    f = Finding(k, "status", status_text(rb, 40), status_text(rc, 40))
    if rb.ok or rc.status in ("error", "killed"):
        f.note = "was ok, now " + status_text(rc, 40) if rb.ok else "now errors"
        res.regressions.append(f)
    elif rc.ok:
        f.note = "now ok"
        res.improvements.append(f)
    else:
        res.notes.append(f"{f.point}: status {f.baseline} -> {f.current}")


def _deterministic(res: CheckResult, k: Key, rb: PhaseRecord, rc: PhaseRecord) -> None:
    for name, value in DETERMINISTIC:
        vb, vc = value(rb), value(rc)
        if vb is None and vc is None:
            continue
        if vb is None or vc is None:
            if rb.ok and rc.ok:
                res.deterministic_checked += 1
                res.regressions.append(Finding(k, name, _fmt_det(vb), _fmt_det(vc), note="present in one run only"))
            continue
        res.deterministic_checked += 1
        if vb != vc:
            ch = (float(vc) / float(vb) - 1) if float(vb) else None
            res.regressions.append(Finding(k, name, _fmt_det(vb), _fmt_det(vc), ch, delta=float(vc) - float(vb)))


def _timings(res: CheckResult, timed) -> None:
    """Judge (or, with timings off, list) every point ok on both sides with MIN_ROUNDS rounds a
    side, and each phase as a whole. Half of alpha goes to the per-point tests (Bonferroni over
    the K points), half to one suite-level test per phase (per round, the median over the phase's
    points of each point's value on a common scale: stats.round_centres), so the family-wise
    false-alarm rate stays <= alpha.
    A point without rounds (one round, or schema v1) is NOT judged: the steps of one process
    ignore the variation between processes, so they never decide an exit status."""
    rounds = {k: (ok_rounds(rb, fastest=True), ok_rounds(rc, fastest=True)) for k, rb, rc in timed}
    judgeable = [k for k, (b, c) in rounds.items() if min(len(b), len(c)) >= MIN_ROUNDS]
    # --timings off judges no timing: "not judged for want of rounds" would then be beside the point
    res.unjudged = [k for k, _, _ in timed if k not in judgeable] if res.timings_judged else []
    phases = {}
    for k in judgeable:
        phases.setdefault(k[3], []).append(k)
    suites = {ph: ks for ph, ks in phases.items() if len(ks) >= 2}
    res.judged = len(judgeable) if res.timings_judged else 0
    half = res.alpha / 2 if suites else res.alpha
    res.confidence = 1 - half / max(len(judgeable), 1)
    res.suite_confidence = 1 - (res.alpha - half) / max(len(suites), 1)
    for k in judgeable:
        vb, vc = (tuple(r.values()) for r in rounds[k])
        _judge(res, k, key_label(k), regression(vb, vc, res.threshold, confidence=res.confidence,
                                                where=key_label(k)), vb, vc)
    for ph, ks in suites.items():
        vb, vc = round_centres([rounds[k][0] for k in ks], [rounds[k][1] for k in ks])
        if min(len(vb), len(vc)) < MIN_ROUNDS:
            res.notes.append(f"{ph}: the phase as a whole is not judged: fewer than {MIN_ROUNDS} rounds in "
                             f"which every one of its {len(ks)} points measured")
            continue
        scope = f"{ph}, all {len(ks)} points"
        g = regression(vb, vc, res.threshold, confidence=res.suite_confidence, where=scope)
        res.suite_judged += 1
        _judge(res, (SUITE, 0, 0, ph), scope, g, vb, vc, metric="latency (all points)")
    if res.unjudged:
        res.notes.append(f"{len(res.unjudged)} timing point(s) not judged: fewer than {MIN_ROUNDS} measured rounds "
                         f"a side (a one-round run's steps share one process and cannot be judged); measure "
                         f"`--rounds {MIN_ROUNDS}` or more (`--resume` adds rounds to a run): " + _keys(res.unjudged))
    if res.judged:
        res.notes.append(f"Timings: a point regresses when its slowdown's {res.confidence:.4%} interval "
                         f"(current / baseline, ratio of geometric means of each round's fastest step, Welch t "
                         f"on logs) lies wholly above {1 + res.threshold:.2f}; a phase regresses when the same "
                         f"holds for the per-round median over its points (each on a common scale) at "
                         f"{res.suite_confidence:.4%}. "
                         f"Bonferroni over {res.judged} point(s) and {res.suite_judged} phase(s), so the chance of "
                         f"any false alarm in this check is at most {res.alpha:g}.")


def _judge(res: CheckResult, k: Key, label: str, g, vb, vc, metric: str = "latency") -> None:
    est = g.estimate
    f = Finding(k, metric, fmt_ms(geomean(vb)) + " ms", fmt_ms(geomean(vc)) + " ms", est.ratio - 1, est,
                note="slower" if g.status == "regression" else "faster" if g.status == "improvement" else "")
    if not res.timings_judged:
        if g.status != "pass":
            f.note = f"{f.note} (not judged)".strip()
            res.timing_changes.append(f)
    elif g.status == "regression":
        res.regressions.append(f)
    elif g.status == "improvement":
        res.improvements.append(f)
    elif k[0] != SUITE:
        res.unchanged += 1
        if abs(math.log(est.ratio)) > math.log(1 + res.threshold):
            res.inconclusive.append(k)
            res.notes.append(f"{label}: {fmt_est(est)} is {'slower' if est.ratio > 1 else 'faster'} "
                             f"by its estimate, but the interval is too wide to tell (it reaches within "
                             f"{res.threshold:.0%} of 1): not a detected change; measure more rounds")


def _write_markdown(res: CheckResult, markdown) -> None:
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if markdown is None and not summary:
        return
    md = res.to_markdown()
    try:
        if markdown is not None:
            Path(markdown).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(markdown, md)
        if summary:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(md + "\n")
    except OSError as e:
        raise ResultsError(f"cannot write the markdown summary: {e}") from None


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
        res.memory_changes.append(Finding(k, f"device_peak ({src_c})", human_bytes(mb), human_bytes(mc), change,
                                          note="one reading"))


def _order(k: Key):
    return (k[3] != "prefill", k[0], k[1], k[2])


def _keys(keys: List[Key], limit: int = 10) -> str:
    items = [key_label(k) for k in keys[:limit]]
    return ", ".join(items) + (f", and {len(keys) - limit} more" if len(keys) > limit else "")

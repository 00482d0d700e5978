"""`sabench merge RUN_DIR... --out DIR`: the runs of a suite's shards as one run.

The shards must be of one suite as run (harness.same_suite: name, model, variants, sweep and
the settings that change what a number means) and of one commit (env.git_commit); the first
difference is refused with the field and both values. Each
run's `shard` ({index, count}, written by `sabench run --shard`) must agree on the count and
not repeat an index (runs without shards may be merged only with each other, e.g. runs split
by --variant). A point in two runs is refused unless its records are identical.

Points of the suite's grid absent from every run are named and make the exit code 1; what the
runs hold is still written, unless `partial=False` (`--complete`): then nothing is written.
The merged run keeps the first run's env and lists every run it came from under `merged`; it is
recorded in the history (with its report), the shard runs themselves are not.
"""
from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from sabench.errors import UserError
from sabench.harness.same_suite import differences, value
from sabench.harness.shard import Shard
from sabench.records import PHASES, MAX_REQUEST, PhaseRecord, PointSpec, RunRecord, load_results, write_results

MAX_LISTED = 20


def _first_diff(a, b, name: str) -> Optional[Tuple[str, object, object]]:
    """The first (dotted name, a's value, b's value) where a and b differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_diff(a.get(k), b.get(k), f"{name}.{k}")
            if d:
                return d
        return None
    return None if a == b else (name, a, b)


def check_same_run(runs: Sequence[RunRecord]) -> None:
    """Refuse runs of different suites, sweeps, model configs or commits (UserError)."""
    ref = runs[0]
    for r in runs[1:]:
        diff = differences(ref.suite, r.suite)
        if diff:
            d = _first_diff(value(ref.suite, diff[0]), value(r.suite, diff[0]), f"suite.{diff[0]}")
            raise UserError(f"merge: {ref.source} and {r.source} differ in {d[0]}: {d[1]!r} vs {d[2]!r}; "
                            "merge only the shards of one suite run")
        a, b = ref.env.get("git_commit"), r.env.get("git_commit")
        if a != b:
            raise UserError(f"merge: {ref.source} and {r.source} differ in env.git_commit: {a!r} vs {b!r}; "
                            "merge only shards run at one commit")


def check_shards(runs: Sequence[RunRecord]) -> List[str]:
    """Refuse inconsistent shard metadata; returns the labels of shards not given (e.g. ['3/8'])."""
    shards: List[Optional[Shard]] = []
    for r in runs:
        d = r.extra.get("shard")
        try:
            shards.append(None if d is None else Shard.from_dict(d))
        except ValueError as e:
            raise UserError(f"merge: {r.source}: shard: {e}") from None
    given = [(s, r) for s, r in zip(shards, runs) if s is not None]
    if not given:
        return []
    if len(given) < len(runs):
        whole = next(r for s, r in zip(shards, runs) if s is None)
        raise UserError(f"merge: {given[0][1].source} is shard {given[0][0].label} but {whole.source} is not a "
                        "shard run; merge shard runs only with each other")
    count = given[0][0].count
    seen: Dict[int, str] = {}
    for s, r in given:
        if s.count != count:
            raise UserError(f"merge: {given[0][1].source} is one of {count} shards, {r.source} one of {s.count} "
                            f"(shard.count: {count} vs {s.count}); merge shards of one split")
        if s.index in seen:
            raise UserError(f"merge: shard {s.label} is given twice ({seen[s.index]} and {r.source}); give each once")
        seen[s.index] = str(r.source)
    return [f"{i}/{count}" for i in range(1, count + 1) if i not in seen]


def expected_points(suite: dict) -> List[PointSpec]:
    """The suite's point grid, in suite order (a `max` batch as PointSpec(v, 'max', s))."""
    sweep = suite.get("sweep") or {}
    return [PointSpec(v, b, s) for v in suite.get("variants") or [] for b in sweep.get("batch_size") or []
            for s in sweep.get("seq_len") or []]


def _point_of(r: PhaseRecord) -> PointSpec:
    return PointSpec(r.variant, MAX_REQUEST if r.batch_request == MAX_REQUEST else r.batch_size, r.seq_len)


def combine_records(runs: Sequence[RunRecord]) -> List[PhaseRecord]:
    """Every record once; a point in two runs must have identical records (UserError otherwise)."""
    owner: Dict[tuple, Tuple[PhaseRecord, str]] = {}
    out: List[PhaseRecord] = []
    for run in runs:
        for r in run.records:
            k = (r.key, r.batch_request, r.max_attempt)
            if k in owner:
                prev, src = owner[k]
                if prev.to_dict() != r.to_dict():
                    raise UserError(f"merge: record '{r.label}' is in {src} and {run.source} with different "
                                    "results; a point may be in two shards only if identical, drop one run")
                continue
            owner[k] = (r, str(run.source))
            out.append(r)
    return out


def missing_points(suite: dict, records: Sequence[PhaseRecord]) -> List[PointSpec]:
    """Grid points without records (an explicit batch needs both phases; `max` any record)."""
    have: Dict[PointSpec, set] = {}
    for r in records:
        have.setdefault(_point_of(r), set()).add(r.phase)
    return [p for p in expected_points(suite)
            if not (p in have and (p.batch_size == MAX_REQUEST or set(PHASES) <= have[p]))]


def _ordered(suite: dict, records: List[PhaseRecord]) -> List[PhaseRecord]:
    order = {p: i for i, p in enumerate(expected_points(suite))}
    return sorted(records, key=lambda r: (order.get(_point_of(r), len(order)), r.batch_size,
                                          r.max_attempt or 0, PHASES.index(r.phase)))


def merge(runs: Sequence[RunRecord]) -> Tuple[RunRecord, List[PointSpec], List[str]]:
    """(the merged run, the grid points missing from it, the shard labels not given)."""
    if not runs:
        raise UserError("merge: give at least one run directory")
    check_same_run(runs)
    absent = check_shards(runs)
    suite = dict(runs[0].suite)
    records = _ordered(suite, combine_records(runs))
    overhead: dict = {}
    for r in runs:
        for k, v in r.overhead.items():
            overhead.setdefault(k, v)
    extra = {k: v for k, v in runs[0].extra.items() if k not in ("shard", "merged")}
    extra["merged"] = [{"path": str(r.source), "shard": r.extra.get("shard"), "host": r.env.get("host"),
                        "device_name": r.env.get("device_name"), "created": r.created} for r in runs]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    merged = RunRecord(env=dict(runs[0].env), suite=suite, records=tuple(records), overhead=overhead,
                       created=created, extra=extra)
    return merged, missing_points(suite, records), absent


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def merge_runs(run_dirs: Sequence, out, partial: bool = True, report: bool = True) -> int:
    """Merge run directories into `out`; returns the exit code (0 complete, 1 points missing)."""
    out = Path(out)
    if (out / "results.json").exists():
        raise UserError(f"--out {str(out)!r} already holds a run (results.json), choose a new directory")
    runs = [load_results(d) for d in run_dirs]
    merged, missing, absent = merge(runs)
    devices = sorted({str(r.env.get("device_name") or r.env.get("device")) for r in runs})
    if len(devices) > 1:
        print(f"sabench: note: the shards ran on different devices ({', '.join(devices)}); timings of "
              "different points are not comparable across them", file=sys.stderr)
    n_points = len(expected_points(merged.suite))
    if missing:
        print(f"sabench: {len(missing)} of {n_points} points missing: {_listing([p.label for p in missing])}"
              + (f" (shards not given: {', '.join(absent)})" if absent else ""), file=sys.stderr)
        if not partial:
            print("sabench: --complete: nothing written", file=sys.stderr)
            return 1
    out.mkdir(parents=True, exist_ok=True)
    path = write_results(out / "results.json", merged)
    print(f"merged {len(runs)} run(s), {n_points - len(missing)} of {n_points} points: {path}", file=sys.stderr)
    if report:
        from sabench.report import write_report

        print(f"report:  {write_report(out)}", file=sys.stderr)
        _record(path)
    return 1 if missing else 0


def _record(path: Path) -> None:
    """The merged run goes into the history (shard runs do not: each holds part of the points)."""
    try:
        from sabench.history import record_run

        record_run(path)
    except Exception as e:  # pragma: no cover - the merged results are written already
        print(f"sabench: history not updated ({type(e).__name__}: {e})", file=sys.stderr)

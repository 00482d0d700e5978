"""The SQLite history of runs: what the harness records after a run, and the series the report reads
back (sabench/report/history.py marks their steps and draws them).

Database: the `db_path` argument, else $SABENCH_HISTORY, else reports/history.sqlite.

Tables::

    runs(id, run_key UNIQUE, suite, machine, git_commit, git_dirty, created, host, device,
         device_name, source, recorded_at)
    metrics(run_id, variant, batch_size, seq_len, phase, metric, value, rel_iqr, status)

A run is keyed by suite name, machine fingerprint (hash of host + device_name + cpu +
driver), git commit and the results' created timestamp: recording the same results twice
adds nothing. One metrics row per record and metric (METRICS below); `value` is NULL for
timings of a point that did not run ok (its `status` says why); `rel_iqr` is the
relative inter-quartile range of the point's latency samples (the run's own noise).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from sabench.paths import reports_dir
from sabench.records import ResultsError, RunRecord, key_label, load_results, results_path
from sabench.stats import rel_iqr

ENV_VAR = "SABENCH_HISTORY"

# metric -> (unit label, deterministic?)
METRICS = {
    "median_ms": ("median latency (ms; decode: per token)", False),
    "tokens_per_s": ("throughput (tokens/s)", False),
    "peak_memory_bytes": ("device peak memory (bytes, absolute)", False),
    "joules_per_token": ("energy per token (J)", False),
    "kv_cache_bytes": ("KV cache (bytes)", True),
    "flops_analytic": ("analytic FLOPs", True),
    "flops_counted": ("counted FLOPs", True),
}
TIMING_METRICS = ("median_ms", "tokens_per_s")
MEASURED = TIMING_METRICS + ("peak_memory_bytes", "joules_per_token")
HIGHER_IS_BETTER = ("tokens_per_s", "mfu", "mbu")
_DETERMINISTIC_FIELDS = ("params", "kv_cache_bytes", "bytes_moved", "flops.counted", "flops.analytic", "warmup",
                         "repeats", "decode_tokens", "predicted_max_batch", "memory_budget_bytes",
                         "stability.threshold")


def _field_metrics() -> Dict[str, tuple]:
    """Every numeric field a phase record holds (sabench.records.fields), by its dotted name."""
    from sabench.records.fields import numeric_fields

    return {name: (name.replace("_", " "), name in _DETERMINISTIC_FIELDS)
            for name in numeric_fields() if name not in METRICS}


METRICS.update(_field_metrics())

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL UNIQUE,
    suite TEXT NOT NULL,
    machine TEXT NOT NULL,
    git_commit TEXT,
    git_dirty INTEGER,
    created TEXT NOT NULL,
    host TEXT, device TEXT, device_name TEXT,
    source TEXT,
    recorded_at TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    variant TEXT NOT NULL, batch_size INTEGER NOT NULL, seq_len INTEGER NOT NULL, phase TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    rel_iqr REAL,
    status TEXT NOT NULL,
    PRIMARY KEY (run_id, variant, batch_size, seq_len, phase, metric)
);
CREATE INDEX IF NOT EXISTS metrics_by_metric ON metrics (metric, variant, phase);
"""
RUN_COLS = ("run_key", "suite", "machine", "git_commit", "git_dirty", "created", "host", "device",
            "device_name", "source", "recorded_at")
METRIC_COLS = ("variant", "batch_size", "seq_len", "phase", "metric", "value", "rel_iqr", "status")


def resolve_db(db_path=None) -> Path:
    if db_path:
        return Path(db_path)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return reports_dir() / "history.sqlite"


def connect(db_path=None, create: bool = True) -> sqlite3.Connection:
    p = resolve_db(db_path)
    if not create and not p.exists():
        raise ResultsError(f"no history database at {p} (record a run first, or pass --db)")
    if create:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(str(p), timeout=30)
        con.execute("PRAGMA foreign_keys = ON")
        con.executescript(SCHEMA_SQL)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', 'sabench-history/1')")
        con.commit()
    except sqlite3.DatabaseError as e:
        raise ResultsError(f"{p} is not a usable history database ({e})") from None
    return con


def machine_fingerprint(env: dict) -> str:
    parts = [str(env.get(k) or "") for k in ("host", "device_name", "cpu", "driver")]
    if not env.get("device_name"):
        parts[1] = str(env.get("device") or "")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def run_key(results: RunRecord) -> str:
    env, suite = results.env, results.suite
    created = results.created
    if not created:  # no timestamp: tell runs apart by their content instead
        import json
        created = hashlib.sha256(json.dumps(results.to_dict()["records"], sort_keys=True).encode()).hexdigest()
    parts = [str(suite.get("name") or "unnamed"), machine_fingerprint(env), str(env.get("git_commit") or ""),
             str(created)]
    run_id = results.extra.get("run_id")
    if isinstance(run_id, str) and run_id:  # unique per run; files written before it keep their old key
        parts.append(run_id)
    ident = "|".join(parts)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def metric_rows(results: RunRecord) -> List[tuple]:
    from sabench.records.fields import numeric_fields

    rows = []
    for r in results.records:
        status = r.status
        ok = r.ok
        latency = r.latency_ms if ok else None
        iqr = rel_iqr(latency.samples) if latency is not None else None
        vals = {name: get(r) for name, get in numeric_fields().items()}  # every field; the aliases below win
        vals.update({
            "median_ms": latency.median if latency is not None else None,
            "tokens_per_s": r.tokens_per_s if ok else None,
            "peak_memory_bytes": r.memory_bytes.device_peak if ok and r.memory_bytes is not None else None,
            "joules_per_token": r.joules_per_token if ok else None,
            "kv_cache_bytes": r.kv_cache_bytes,
            "flops_analytic": r.flops.analytic if r.flops else None,
            "flops_counted": r.flops.counted if r.flops else None,
        })
        for m, v in vals.items():
            # measured metrics of a failed point are kept as NULL rows (their status says why);
            # figures that were simply not computed are left out
            if v is None and (ok or m not in MEASURED):
                continue
            rows.append((r.variant, r.batch_size, r.seq_len, r.phase, m, None if v is None else float(v),
                         iqr if m in TIMING_METRICS else None, status))
    return rows


@dataclass
class RecordOutcome:
    run_key: str
    inserted: bool
    db_path: Path
    metrics: int = 0


def record_run(results_path_or_dir, db_path=None, results: Optional[RunRecord] = None) -> RecordOutcome:
    """Add one run (a run dir or results.json) to the history. A run already there (same key) keeps
    what it has and gains the points it did not have: `--resume` completes a run under its key."""
    src = results_path(results_path_or_dir)
    data = results if results is not None else load_results(src)
    db = resolve_db(db_path)
    with closing(connect(db)) as con:
        return _insert(con, data, str(src.resolve()), db)


def _insert(con: sqlite3.Connection, data: RunRecord, source: str, db: Path) -> RecordOutcome:
    env, suite = data.env, data.suite
    key = run_key(data)
    row = (key, str(suite.get("name") or "unnamed"), machine_fingerprint(env), env.get("git_commit"),
           None if env.get("git_dirty") is None else int(bool(env.get("git_dirty"))),
           str(data.created or ""), env.get("host"), env.get("device"), env.get("device_name"),
           source, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with con:
        cur = con.execute(f"INSERT OR IGNORE INTO runs ({', '.join(RUN_COLS)}) VALUES "
                          f"({', '.join('?' * len(RUN_COLS))})", row)
        inserted = cur.rowcount > 0
        if inserted:
            run_id = cur.lastrowid
        else:  # already recorded: a resumed run keeps its key, so add the points it has gained
            run_id = con.execute("SELECT id FROM runs WHERE run_key = ?", (key,)).fetchone()[0]
        before = con.total_changes
        con.executemany(f"INSERT OR IGNORE INTO metrics (run_id, {', '.join(METRIC_COLS)}) VALUES "
                        f"(?, {', '.join('?' * len(METRIC_COLS))})", [(run_id,) + r for r in metric_rows(data)])
        added = con.total_changes - before
    return RecordOutcome(key, inserted, db, added)


def _is_sqlite(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def import_paths(paths: Iterable, db_path=None) -> Tuple[int, int]:
    """Merge runs into the history: directories are searched for results.json files, a results.json
    is recorded, another history .sqlite is merged. Returns (runs added, runs already present)."""
    added = present = 0
    db = resolve_db(db_path)
    with closing(connect(db)) as con:
        for raw in paths:
            p = Path(raw)
            if p.is_dir():
                found = sorted(p.rglob("results.json"))
                if not found:
                    raise ResultsError(f"no results.json under {p}")
                for f in found:
                    out = _insert(con, load_results(f), str(f.resolve()), db)
                    added, present = added + out.inserted, present + (not out.inserted)
            elif p.is_file() and _is_sqlite(p):
                if p.resolve() == db.resolve():
                    continue
                a, b = _merge(con, p)
                added, present = added + a, present + b
            elif p.is_file():
                out = _insert(con, load_results(p), str(p.resolve()), db)
                added, present = added + out.inserted, present + (not out.inserted)
            else:
                raise ResultsError(f"{p}: no such file or directory")
    return added, present


def _merge(con: sqlite3.Connection, other: Path) -> Tuple[int, int]:
    try:
        with closing(sqlite3.connect(f"file:{other}?mode=ro", uri=True, timeout=30)) as src:
            runs = src.execute(f"SELECT id, {', '.join(RUN_COLS)} FROM runs ORDER BY created, id").fetchall()
            added = present = 0
            with con:
                for run in runs:
                    cur = con.execute(f"INSERT OR IGNORE INTO runs ({', '.join(RUN_COLS)}) VALUES "
                                      f"({', '.join('?' * len(RUN_COLS))})", run[1:])
                    if cur.rowcount == 0:
                        present += 1
                        continue
                    added += 1
                    new_id = cur.lastrowid
                    rows = src.execute(f"SELECT {', '.join(METRIC_COLS)} FROM metrics WHERE run_id = ?",
                                       (run[0],)).fetchall()
                    con.executemany(f"INSERT OR REPLACE INTO metrics (run_id, {', '.join(METRIC_COLS)}) "
                                    f"VALUES (?, {', '.join('?' * len(METRIC_COLS))})",
                                    [(new_id,) + tuple(r) for r in rows])
    except sqlite3.DatabaseError as e:
        raise ResultsError(f"{other} is not a sabench history database ({e})") from None
    return added, present


# ---------------------------------------------------------------------------- reading


@dataclass
class RunInfo:
    run_key: str
    suite: str
    machine: str
    git_commit: Optional[str]
    created: str
    host: Optional[str]
    device_name: Optional[str]

    @property
    def commit_short(self) -> str:
        return (self.git_commit or "nocommit")[:7]


@dataclass
class TrendPoint:
    run: RunInfo
    value: Optional[float]
    rel_iqr: Optional[float]
    status: str
    change: Optional[float] = None     # relative to the previous point with a value
    step: Optional[str] = None         # "up" / "down" where a change of level beyond the noise starts
    kind: Optional[str] = None         # that step's "regression" | "improvement" | "too short"
    interval: Optional[Tuple[float, float, float]] = None  # the step's ratio after / before, 95% interval


@dataclass
class Trend:
    suite: str
    machine: str
    variant: str
    batch_size: int
    seq_len: int
    phase: str
    metric: str
    points: List[TrendPoint] = field(default_factory=list)

    @property
    def label(self) -> str:
        return key_label((self.variant, self.batch_size, self.seq_len, self.phase))

    @property
    def steps(self) -> List[TrendPoint]:
        return [p for p in self.points if p.step]


def read_series(db_path=None, suite: Optional[str] = None, metric: str = "median_ms",
                variant: Optional[str] = None, phase: Optional[str] = None, machine: Optional[str] = None,
                batch_size: Optional[int] = None, seq_len: Optional[int] = None) -> List[Trend]:
    """One metric's series per (suite, machine, point), runs ordered by their created time (steps
    not yet marked: sabench.report.history.mark_steps)."""
    if metric not in METRICS:
        raise ResultsError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    where, args = ["m.metric = ?"], [metric]
    for col, val in (("r.suite", suite), ("m.variant", variant), ("m.phase", phase),
                     ("m.batch_size", batch_size), ("m.seq_len", seq_len)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    if machine is not None:
        where.append("(r.machine LIKE ? OR r.host = ?)")
        args += [machine + "%", machine]
    sql = (f"SELECT r.run_key, r.suite, r.machine, r.git_commit, r.created, r.host, r.device_name, "
           f"m.variant, m.batch_size, m.seq_len, m.phase, m.value, m.rel_iqr, m.status "
           f"FROM metrics m JOIN runs r ON r.id = m.run_id WHERE {' AND '.join(where)} "
           f"ORDER BY r.created, r.id")
    with closing(connect(db_path, create=False)) as con:
        rows = con.execute(sql, args).fetchall()
    trends: Dict[tuple, Trend] = {}
    for (rk, st, mach, commit, created, host, dev, v, b, s, ph, val, iqr, status) in rows:
        key = (st, mach, v, b, s, ph)
        t = trends.get(key)
        if t is None:
            t = trends[key] = Trend(st, mach, v, b, s, ph, metric)
        t.points.append(TrendPoint(RunInfo(rk, st, mach, commit, created, host, dev), val, iqr, status))
    return sorted(trends.values(), key=lambda t: (t.suite, t.machine, t.phase != "prefill", t.variant,
                                                 t.batch_size, t.seq_len))


def list_suites(db_path=None) -> List[Tuple[str, int]]:
    with closing(connect(db_path, create=False)) as con:
        return con.execute("SELECT suite, COUNT(*) FROM runs GROUP BY suite ORDER BY suite").fetchall()

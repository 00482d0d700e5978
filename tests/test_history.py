import sqlite3

import numpy as np
import pytest

from report_fixtures import make_results, scale_timings, write_results
from sabench.records import RunRecord
from sabench.report import ResultsError
from sabench.cli import main
from sabench.history import (RunInfo, TrendPoint, import_paths, list_suites, machine_fingerprint, metric_rows,
                             record_run, resolve_db)
from sabench.report.history import mark_steps, query_trend


def _run(tmp_path, name, commit, day, factor=1.0, variant=None, **kw):
    res = make_results(seed=7, commit=commit, created=f"2026-11-{day:02d}T10:00:00Z", **kw)
    if factor != 1.0:
        res = scale_timings(res, factor, variant=variant)
    return write_results(res, tmp_path / name)


def _count(db, table):
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_record_two_commits_and_query_trend(tmp_path):
    db = tmp_path / "h.sqlite"
    # recorded out of order: the trend is ordered by the results' created time
    r2 = _run(tmp_path, "r2", "bbbbbbb222", 21)
    r1 = _run(tmp_path, "r1", "aaaaaaa111", 20)
    assert record_run(r2, db).inserted
    assert record_run(r1 / "results.json", db).inserted
    trends = query_trend(db, suite="synthetic", metric="median_ms", variant="cla:2", phase="decode")
    assert len(trends) == 6
    t = next(t for t in trends if (t.batch_size, t.seq_len) == (4, 512))
    assert [p.run.git_commit for p in t.points] == ["aaaaaaa111", "bbbbbbb222"]
    rec = next(r for r in make_results(seed=7)["records"]
               if (r["variant"], r["batch_size"], r["seq_len"], r["phase"]) == ("cla:2", 4, 512, "decode"))
    assert t.points[0].value == pytest.approx(rec["latency_ms"]["median"])
    q25, q50, q75 = np.percentile(rec["latency_ms"]["samples"], [25, 50, 75])
    assert t.points[0].rel_iqr == pytest.approx((q75 - q25) / q50)  # the samples' own spread
    assert not t.steps  # identical numbers: no step

    kv = query_trend(db, metric="kv_cache_bytes", variant="baseline", phase="prefill")
    assert {p.value for t in kv for p in t.points} >= {5308416.0}
    # a failed point keeps a row saying why
    oom = query_trend(db, metric="median_ms", variant="baseline", phase="prefill", batch_size=4, seq_len=2048)
    assert [p.status for p in oom[0].points] == ["oom", "oom"] and oom[0].points[0].value is None


def test_record_is_idempotent(tmp_path):
    db = tmp_path / "h.sqlite"
    r = _run(tmp_path, "r", "c0ffee", 20)
    first = record_run(r, db)
    n = _count(db, "metrics")
    again = record_run(r, db)
    assert first.inserted and not again.inserted and first.run_key == again.run_key
    assert _count(db, "runs") == 1 and _count(db, "metrics") == n == first.metrics


def test_db_path_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SABENCH_HISTORY", str(tmp_path / "env.sqlite"))
    assert resolve_db() == tmp_path / "env.sqlite"
    assert resolve_db(tmp_path / "arg.sqlite") == tmp_path / "arg.sqlite"
    record_run(_run(tmp_path, "r", "c0ffee", 20))
    assert list_suites(tmp_path / "env.sqlite") == [("synthetic", 1)]  # the run went there
    monkeypatch.delenv("SABENCH_HISTORY")
    from pathlib import Path  # the default is anchored to the checkout, whatever the cwd
    assert resolve_db() == Path(__file__).resolve().parent.parent / "reports" / "history.sqlite"


def test_machine_fingerprint():
    env = make_results()["env"]
    # a fingerprint names the machine, not the run: fields that change between runs do not move it
    assert machine_fingerprint(env) == machine_fingerprint({**env, "git_commit": "f" * 40, "torch": "9.9"})
    assert machine_fingerprint(env) != machine_fingerprint({**env, "host": "other"})
    assert machine_fingerprint(env) != machine_fingerprint({**env, "driver": "999"})
    assert len(machine_fingerprint(env)) == 12


def test_import_directory_and_sqlite(tmp_path):
    other = tmp_path / "from_other_machine"
    _run(other / "a", "run", "aaa", 20, host="bench-02")
    _run(other / "b" / "nested", "run", "bbb", 21, host="bench-02")
    db = tmp_path / "main.sqlite"
    assert import_paths([other], db) == (2, 0)
    assert import_paths([other], db) == (0, 2)
    # merging another history database
    db2 = tmp_path / "second.sqlite"
    record_run(_run(tmp_path, "local", "ccc", 22), db2)
    record_run(other / "a" / "run", db2)  # already in main: not duplicated
    assert import_paths([db2], db) == (1, 1)
    assert _count(db, "runs") == 3
    assert _count(db, "metrics") == 3 * _count(db2, "metrics") // 2
    machines = {t.machine for t in query_trend(db, variant="baseline")}
    assert len(machines) == 2
    with pytest.raises(ResultsError):
        import_paths([tmp_path / "nowhere"], db)
    bogus = tmp_path / "bogus.sqlite"
    sqlite3.connect(bogus).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(ResultsError, match="not a sabench history"):
        import_paths([bogus], db)


def test_step_marking_on_real_runs(tmp_path):
    db = tmp_path / "h.sqlite"
    record_run(_run(tmp_path, "r1", "c1", 20), db)
    record_run(_run(tmp_path, "r2", "c2", 21), db)
    record_run(_run(tmp_path, "r3", "c3", 22, factor=1.4, variant="cla:2"), db)
    record_run(_run(tmp_path, "r4", "c4", 23, factor=1.4, variant="cla:2"), db)
    trends = query_trend(db, metric="median_ms")
    stepped = {(t.variant, t.phase, t.batch_size, t.seq_len) for t in trends if t.steps}
    assert stepped == {("cla:2", ph, b, s) for ph in ("prefill", "decode") for b in (1, 4)
                       for s in (128, 512, 2048)}
    t = next(t for t in trends if t.variant == "cla:2" and t.phase == "decode" and t.batch_size == 1
             and t.seq_len == 512)
    assert [p.step for p in t.points] == [None, None, "up", None]
    assert t.points[2].change == pytest.approx(0.4)
    tps = query_trend(db, metric="tokens_per_s", variant="cla:2", phase="decode", batch_size=1, seq_len=512)
    assert [p.step for p in tps[0].points] == [None, None, "down", None]


def _pts(values, iqr):
    info = RunInfo("k", "s", "m", "c", "t", "h", "d")
    return [TrendPoint(info, v, iqr, "ok") for v in values]


def test_mark_steps_finds_one_step_in_noise_and_none_in_noise_only():
    from sabench.stats import detect_steps

    rng = np.random.default_rng(7)
    noise = np.exp(rng.normal(0, 0.02, 16))
    stepped = list(np.where(np.arange(16) >= 8, 1.3, 1.0) * noise)
    pts = _pts(stepped, 0.02)
    mark_steps(pts, "median_ms", 0.05)
    assert [i for i, p in enumerate(pts) if p.step] == [8]
    assert pts[8].step == "up" and pts[8].kind == "regression"
    ref = detect_steps(stepped, [v * 0.02 / 1.349 for v in stepped], threshold=0.05)
    assert pts[8].interval == pytest.approx((ref.steps[0].ratio, ref.steps[0].low, ref.steps[0].high))
    assert 1.2 < pts[8].interval[1] < 1.3 < pts[8].interval[2] < 1.4

    quiet = list(np.exp(rng.normal(0, 0.03, 16)))
    pts = _pts(quiet, 0.03)  # noise only: no step, although neighbours differ by more than the threshold
    mark_steps(pts, "median_ms", 0.05)
    assert not any(p.step for p in pts) and max(abs(p.change) for p in pts if p.change) > 0.05

    pts = _pts([1.0] * 4 + [1.5] * 4, 0.0)  # throughput falling is the regression
    mark_steps(pts, "tokens_per_s", 0.05)
    assert pts[4].step == "up" and pts[4].kind == "improvement"

    pts = _pts([1.0, 1.0, 1.0, 1.4], 0.0)  # the newest commit alone: a step, not yet confirmed
    mark_steps(pts, "median_ms", 0.05)
    assert pts[3].step == "up" and pts[3].kind == "too short"
    pts = _pts([100.0, 101.0], None)  # deterministic figures: any change is a step
    mark_steps(pts, "kv_cache_bytes", 0.05)
    assert pts[1].step == "up"
    pts = _pts([1.0, 1.0, None, 0.5, 0.5], 0.0)  # a failed run in between: skipped
    mark_steps(pts, "median_ms", 0.05)
    assert [p.step for p in pts] == [None, None, None, "down", None] and pts[3].kind == "improvement"


def test_history_metric_accepts_every_numeric_record_field(tmp_path, capsys):
    from sabench.records.fields import numeric_fields

    db = tmp_path / "h.sqlite"
    record_run(_run(tmp_path, "r1", "c1", 20), db)
    record_run(_run(tmp_path, "r2", "c2", 21), db)
    assert {"joules_per_token", "latency_ms.p90", "memory_bytes.device_peak", "mfu"} <= set(numeric_fields())
    for metric in ("joules_per_token", "latency_ms.p90", "mfu"):
        assert main(["history", "--db", str(db), "--metric", metric]) == 0
        out = capsys.readouterr().out
        assert out.startswith(metric) and "cla:2 b=1 s=512" in out
    assert main(["history", "--db", str(db), "--metric", "nonsense"]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert "--metric" in err and "unknown metric 'nonsense'" in err and "joules_per_token" in err


def test_cli_history_table_plot_and_import(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    runs = tmp_path / "runs"
    _run(runs, "r1", "1111111aaa", 20)
    _run(runs, "r2", "2222222bbb", 21, factor=1.5, variant="sa:6-11")
    assert main(["history", "--db", str(db), "--import", str(runs)]) == 0
    assert "2 run(s) added" in capsys.readouterr().out
    plot = tmp_path / "trend.png"
    assert main(["history", "--db", str(db), "--suite", "synthetic", "--variant", "sa:6-11",
                 "--metric", "median_ms", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "1111111" in out and "2222222" in out and "▲" in out
    assert "decode sa:6-11 b=4 s=512" in out
    assert plot.stat().st_size > 10_000
    assert main(["history", "--db", str(db), "--suite", "nope"]) == 0
    assert "suites recorded: synthetic (2 runs)" in capsys.readouterr().out
    assert main(["history", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no history database" in capsys.readouterr().err


def test_a_resumed_run_gains_its_new_points(tmp_path):
    """--resume keeps the run's created time, hence its key: recording it again adds what it gained."""
    db = tmp_path / "h.sqlite"
    full = make_results(seed=7, commit="c0ffee", created="2026-11-20T10:00:00Z")
    part = dict(full, records=[r for r in full["records"] if r["variant"] != "cla:2"])
    first = record_run(write_results(part, tmp_path / "part"), db)
    again = record_run(write_results(full, tmp_path / "full"), db)
    assert first.inserted and not again.inserted and first.run_key == again.run_key
    assert again.metrics > 0 and _count(db, "runs") == 1
    assert query_trend(db, metric="median_ms", variant="cla:2", phase="decode")
    assert record_run(write_results(full, tmp_path / "full2"), db).metrics == 0


def test_device_peak_and_energy_per_token_are_tracked(tmp_path):
    """GPU records' absolute device peak and J/token land in history; CPU records have no energy row."""

    gpu = make_results(seed=3, gpu=True, oom=False, error=False)
    rows = {(r[0], r[1], r[2], r[3], r[4]): r[5] for r in metric_rows(RunRecord.from_dict(gpu))}
    rec = next(r for r in gpu["records"] if r["status"] == "ok")
    key = (rec["variant"], rec["batch_size"], rec["seq_len"], rec["phase"])
    assert rows[key + ("joules_per_token",)] == pytest.approx(rec["joules_per_token"])
    assert rows[key + ("peak_memory_bytes",)] == rec["memory_bytes"]["device_peak"]
    cpu = make_results(seed=3, gpu=False, oom=False, error=False)
    assert not [r for r in metric_rows(RunRecord.from_dict(cpu)) if r[4] == "joules_per_token"]

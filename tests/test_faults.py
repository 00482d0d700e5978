"""Faults from outside a run: a second run on the same directory, a point killed by a signal, an
unusable or corrupt FLOP cache, a report that fails half way, runs recorded in the same second,
and the preflight checks that catch a fault before the sweep. Tiny suites, one point each."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sabench.cli import main
from sabench.harness.exits import classify_exit
from sabench.harness.lock import INFO_NAME, RunLock, RunLocked, holder_info
from sabench.harness.oom_evidence import oom_kill_count, oom_killed
from sabench.harness.preflight import PreflightError, check_free_disk, check_model, needed_bytes, preflight
from sabench.presets import PRESETS
from tests.helpers import tiny_suite

SUITE = tiny_suite("faults", variants=("baseline",), batch_sizes=(1,), seq_lens=(16,), decode_tokens=2, warmup=0,
                   repeats=2, execution="eager")
POINT = "baseline|1|16"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SABENCH_HISTORY", str(tmp_path / "history.sqlite"))
    monkeypatch.setenv("SABENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SABENCH_FAULT_KILL", raising=False)
    monkeypatch.delenv("SABENCH_FAULT_OOM", raising=False)
    suite = tmp_path / "faults.yaml"
    suite.write_text(SUITE)
    return suite


def _records(out: Path) -> list:
    return json.loads((out / "results.json").read_text())["records"]


def _hashes(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the run lock
def test_a_second_run_on_the_same_directory_refuses_naming_the_first(env, tmp_path, capsys):
    """A real `sabench run` holds the directory (its point stops itself, so it stays running); a
    second run refuses with exit 2 and the first one's PID, host and start time; once the first
    is killed, its stale lock is taken over and --resume completes the run."""
    out = tmp_path / "run"
    child_env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
                     SABENCH_FAULT_KILL=f"{POINT}@SIGSTOP")
    first = subprocess.Popen([sys.executable, "-m", "sabench.cli", "run", str(env), "--out", str(out),
                              "--no-report"], env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 180  # a bound on waiting, not an assertion on speed
        while time.time() < deadline and first.poll() is None:
            info = holder_info(out)
            if info and info.get("pid") == first.pid and (out / "results.json").exists():
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        before = _hashes(out)
        assert main(["run", str(env), "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("sabench: error: ") and "in use by" in err
        assert f"PID {first.pid}" in err and socket.gethostname() in err and info["started"] in err
        assert _hashes(out) == before  # the refused run touched nothing
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    assert holder_info(out)["pid"] == first.pid  # its label is left behind: the process died holding it
    assert main(["run", str(env), "--out", str(out), "--resume", "--no-report"]) == 0  # stale lock taken over
    assert [r["status"] for r in _records(out)] == ["ok", "ok"]
    assert not (out / INFO_NAME).exists()  # released at the end of the run


def test_the_lock_is_exclusive_and_released(tmp_path):
    a = RunLock(tmp_path).acquire()
    with pytest.raises(RunLocked, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    a.release()
    with RunLock(tmp_path):
        assert holder_info(tmp_path)["pid"] == os.getpid()
    assert holder_info(tmp_path) is None


# ---------------------------------------------------------------- killed is not oom
def test_a_point_killed_from_outside_is_killed_not_oom_and_resume_keeps_it(env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("SABENCH_FAULT_KILL", POINT)  # the point process SIGKILLs itself, as `kill -9` would
    assert main(["run", str(env), "--out", str(out), "--no-report"]) == 1  # a point failed
    recs = _records(out)
    assert [r["status"] for r in recs] == ["killed", "killed"]
    assert all(r["signal"] == "SIGKILL" and "SIGKILL" in r["error"] for r in recs)
    monkeypatch.delenv("SABENCH_FAULT_KILL")
    capsys.readouterr()
    main(["run", str(env), "--out", str(out), "--resume", "--no-report"])  # without a retry: nothing re-run
    assert "1 of 1 (point, round) pairs already measured" in capsys.readouterr().err
    assert _records(out) == recs


def test_report_and_check_read_killed_like_error(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("SABENCH_FAULT_KILL", f"{POINT}@SIGTERM")
    assert main(["run", str(env), "--out", str(out)]) == 1
    assert [r["signal"] for r in _records(out)] == ["SIGTERM", "SIGTERM"]
    md = (out / "report.md").read_text()
    assert "killed: worker killed by SIGTERM" in md and "**Errors** at 2 point(s)" in md


@pytest.mark.parametrize("exitcode, oom, status, fragment", [
    (-signal.SIGKILL, True, "oom", "OOM killer"),
    (-signal.SIGKILL, False, "killed", "not the OOM killer"),
    (-signal.SIGKILL, None, "killed", "cannot tell"),
    (-signal.SIGTERM, None, "killed", "SIGTERM"),
    (-signal.SIGTERM, True, "killed", "SIGTERM"),  # only a SIGKILL can be the OOM killer's
    (-signal.SIGSEGV, None, "error", "SIGSEGV"),
    (3, None, "error", "code 3"),
])
def test_exit_classification(exitcode, oom, status, fragment):
    got, msg = classify_exit(exitcode, ["last line"], oom)
    assert got == status and fragment in msg
    # a tensor-parallel rank's exit is classified alike, named as the rank
    assert classify_exit(exitcode, ["last line"], oom, who="rank 1 of 2") == (status, msg.replace("worker", "rank 1 of 2"))


@pytest.mark.parametrize("text, count", [("oom 0\noom_kill 3\n", 3),  # cgroup v2 memory.events
                                         ("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", 7),  # v1 oom_control
                                         ("oom 1\n", None), ("oom_kill x\n", None)])
def test_oom_kill_counter_parsing(tmp_path, text, count):
    f = tmp_path / "memory.events"
    f.write_text(text)
    assert oom_kill_count(f) == count
    assert oom_kill_count(tmp_path / "absent") is None


def test_oom_evidence_needs_both_readings():
    assert oom_killed(1, 2) is True and oom_killed(2, 2) is False
    assert oom_killed(None, 2) is None and oom_killed(1, None) is None


# ---------------------------------------------------------------- FLOP cache
def test_an_unusable_cache_warns_once_and_the_run_succeeds(env, tmp_path, monkeypatch, capsys):
    """SABENCH_CACHE_DIR is a file (unusable even for root, unlike a read-only directory)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("SABENCH_CACHE_DIR", str(blocker))
    out = tmp_path / "run"
    assert main(["run", str(env), "--out", str(out), "--no-report"]) == 0
    err = capsys.readouterr().err
    assert err.count("FLOP-count cache") == 1 and "sabench: warning:" in err and "Traceback" not in err
    recs = _records(out)
    assert all(r["status"] == "ok" and isinstance(r["flops"]["counted"], int) for r in recs)


@pytest.mark.parametrize("damage", ['{"prefill": "12", "decode_step": 3}', "[1, 2]", '"abc"', "{\"prefill\": 1",
                                    '{"prefill": 1}', '{"prefill": -5, "decode_step": 3}',
                                    '{"prefill": 1, "decode_step": 2, "x": 3}', "null"])
def test_a_corrupt_flop_cache_entry_is_recomputed_and_replaced(tmp_path, damage):
    from sabench import flops

    cfg = PRESETS["tiny"]
    args = (cfg, "baseline", 1, 8, 2, "float32")
    counts, cached = flops.point_counts(*args, cache_dir=tmp_path)
    assert not cached and counts["prefill"] > 0 and counts["decode_step"] > 0
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(damage)
    again, cached = flops.point_counts(*args, cache_dir=tmp_path)
    assert not cached and again == counts  # recomputed, never used
    assert json.loads(entry.read_text()) == counts  # and replaced
    assert flops.point_counts(*args, cache_dir=tmp_path) == (counts, True)


# ---------------------------------------------------------------- report: never lose figures
def test_a_failing_report_leaves_every_file_as_it_was(env, tmp_path, monkeypatch):
    from sabench.report import plots_run, write_report

    out = tmp_path / "run"
    assert main(["run", str(env), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and (out / "report.md").is_file()
    before = _hashes(out)

    def broken(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots_run, "roofline_scatter", broken)  # the last figure: the others are drawn first
    with pytest.raises(RuntimeError):
        write_report(out)
    assert _hashes(out) == before
    assert not list(out.glob(".sabench-stage-*"))  # no staging left behind
    monkeypatch.undo()
    write_report(out)
    assert sorted(p.name for p in out.glob("*.png")) == pngs


# ---------------------------------------------------------------- history keys
def _results(created="2026-01-01T00:00:00+00:00", **extra) -> dict:
    rec = {"variant": "baseline", "batch_size": 1, "seq_len": 16, "phase": "prefill", "status": "oom"}
    return {"created": created, "env": {"host": "h", "device": "cpu"},
            "suite": {"name": "s"}, "overhead": {}, "records": [rec], **extra}


def test_runs_recorded_in_the_same_second_are_both_kept(tmp_path):
    from sabench.records import SCHEMA
    from sabench.history import connect, record_run

    db = tmp_path / "h.sqlite"
    keys = set()
    for i, rid in enumerate(("a" * 32, "b" * 32)):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(dict(_results(run_id=rid), schema=SCHEMA)))
        outcome = record_run(d, db)
        assert outcome.inserted
        keys.add(outcome.run_key)
    assert len(keys) == 2
    con = connect(db)
    try:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    finally:
        con.close()


def test_a_run_without_run_id_keeps_its_old_key(tmp_path):
    from sabench.records import SCHEMA, RunRecord
    from sabench.history import machine_fingerprint, run_key

    r = RunRecord.from_dict(dict(_results(), schema=SCHEMA))
    old = hashlib.sha256("|".join(["s", machine_fingerprint(r.env), "", r.created]).encode()).hexdigest()[:16]
    assert run_key(r) == old


def test_a_new_run_has_a_run_id(env, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(env), "--out", str(out), "--no-report"]) == 0
    rid = json.loads((out / "results.json").read_text())["run_id"]
    assert isinstance(rid, str) and len(rid) == 32


# ---------------------------------------------------------------- preflight
def test_preflight_refuses_when_the_disk_is_clearly_short(tmp_path):
    check_free_disk(tmp_path, 10, free=needed_bytes(10))
    with pytest.raises(PreflightError, match="MiB free"):
        check_free_disk(tmp_path, 10, free=needed_bytes(10) - 1)


def test_corrupt_checkpoint_weights_stop_the_run_before_the_first_point(env, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(PRESETS["tiny"].to_hf_dict()))
    (model / "model.safetensors").write_bytes(b"\xff" * 64)
    suite = tmp_path / "ckpt.yaml"
    suite.write_text(SUITE.replace("model: tiny", f"model: {model}") + "weights: checkpoint\n")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a valid safetensors file" in err and "before the first point" in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "results.json").exists()  # nothing was measured, nothing written


def test_check_model_accepts_real_weights_and_random_weights(tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import save_file
    import torch

    suite = SimpleNamespace(weights="checkpoint", model_config=SimpleNamespace(source=str(tmp_path)))
    with pytest.raises(PreflightError, match="holds no .safetensors file"):  # the same check refuses an empty dir
        check_model(suite)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    check_model(suite)
    check_model(SimpleNamespace(weights="random", model_config=None))


def test_preflight_warns_about_an_unusable_cache_without_failing(tmp_path, capsys):
    from types import SimpleNamespace

    blocker = tmp_path / "file"
    blocker.write_text("")
    warns = preflight(SimpleNamespace(weights="random"), "cpu", tmp_path, 1, cache_dir=blocker / "flops")
    assert len(warns) == 1 and "not usable" in warns[0]
    assert capsys.readouterr().err.count("warning") == 1


def test_the_slowdown_seam_reads_a_phase_a_point_or_both():
    from sabench.harness.faults import slowdown_factors

    def f(spec, key=("cla:2", 4, 128)):
        return slowdown_factors(spec, *key)

    assert f(None) == {"prefill": 1.0, "decode": 1.0}
    assert f("1.5") == {"prefill": 1.5, "decode": 1.5}
    assert f("decode:1.5") == {"prefill": 1.0, "decode": 1.5}
    assert f("prefill:cla:2|4|128=2") == {"prefill": 2.0, "decode": 1.0}
    assert f("cla:2|4|128=3") == {"prefill": 3.0, "decode": 3.0}  # a key that starts like a phase-less item
    assert f("decode:baseline|4|128=2") == {"prefill": 1.0, "decode": 1.0}  # another point


def test_a_decode_slowdown_leaves_prefill_alone():
    from sabench.harness.faults import slow_down

    class M:
        calls = []

        def prefill(self, x):
            return x

        def greedy_step_fn(self):
            return lambda: 7

    m = M()
    before = m.prefill
    slow_down(m, {"prefill": 1.0, "decode": 1.2})
    assert m.prefill == before and m.greedy_step_fn()() == 7


def _refuse_to_unpickle():
    raise RuntimeError("this job cannot be unpickled")


class _Unpicklable:
    """Pickles in the runner, fails to unpickle in the point process: before its code runs."""

    def __reduce__(self):
        return _refuse_to_unpickle, ()


def test_a_point_process_that_fails_before_its_code_runs_says_where_its_traceback_went(tmp_path):
    from sabench.harness.job import PointJob
    from sabench.harness.launch import run_point
    from sabench.plan import plan_for
    from sabench.records import PointSpec

    cfg = PRESETS["tiny"]
    job = PointJob(point=PointSpec("baseline", 1, 8), cfg=cfg, plan=plan_for("baseline", cfg), device="cpu",
                   dtype="float32", decode_tokens=2, warmup=0, repeats=1, quality=_Unpicklable())
    records, _ = run_point(job, tmp_path)
    for r in records.values():
        assert r.status == "error" and r.error.startswith("worker exited with code 1: no message in its stderr file")
        assert "the run's own stderr" in r.error

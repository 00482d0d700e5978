"""The harness end to end on the CPU: completeness, resume after SIGKILL, OOM as data."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sabench import accounting
from sabench.cli import main
from tests.helpers import tiny_suite, write_suite
from sabench.harness.faults import FAULT_ENV

SUITE = tiny_suite("mini", decode_tokens=4, warmup=1, repeats=3)


def _suite(tmp_path, text=SUITE, name="mini.yaml"):
    return write_suite(tmp_path, text, name)


def _records(out):
    return json.loads((Path(out) / "results.json").read_text())["records"]


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mini")
    out = tmp / "run"
    rc = main(["run", str(_suite(tmp)), "--out", str(out), "--no-report"])
    return rc, out


def test_every_point_and_phase_recorded_once_with_the_contracted_fields(mini_run):
    rc, out = mini_run
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == "sabench-results/2"
    for key in ("torch", "transformers", "sabench", "python", "git_commit", "host", "cpu"):
        assert key in data["env"]
    assert data["env"]["peak_bandwidth_bytes_per_s"] > 0 and data["env"]["peak_flops_per_s"] > 0
    keys = sorted((r["variant"], r["batch_size"], r["seq_len"], r["phase"]) for r in data["records"])
    want = sorted((v, b, t, ph) for v in ("baseline", "cla:2", "sa:2-3") for b in (1, 2) for t in (16, 32)
                  for ph in ("prefill", "decode"))
    assert keys == want
    for r in data["records"]:
        assert r["status"] == "ok", r
        lat = r["latency_ms"]
        assert lat["p10"] <= lat["median"] <= lat["p90"]
        n = 3 if r["phase"] == "prefill" else 3 * 4  # decode: every step of every timed sequence
        assert len(lat["samples"]) == n and all(s > 0 for s in lat["samples"])
        assert r["tokens_per_s"] > 0 and r["memory_bytes"]["peak_rss"] > 0
        assert 0 < r["mfu"] and 0 < r["mbu"] and r["floor_ms"] > 0
    assert set(data["overhead"]) == {f"{v}|{b}|{t}" for v in ("baseline", "cla:2", "sa:2-3")
                                     for b in (1, 2) for t in (16, 32)}


def test_cpu_memory_is_the_process_rss_with_a_breakdown_that_adds_up(mini_run):
    _, out = mini_run
    for r in _records(out):
        mem, bd = r["memory_bytes"], r["memory_breakdown"]
        assert r["memory_source"] == "rss" and mem["device_peak"] == mem["peak_rss"]
        assert sum(bd.values()) == mem["device_peak"], (bd, mem)
        assert bd["kv_cache"] == r["kv_cache_bytes"]  # the cache's real tensors, as analysed
        assert bd["weights"] == r["params"] * 4  # float32
        assert bd["context"] > 0  # the interpreter and torch
        assert any("CPU run" in n for n in r["memory_notes"])
        assert "energy_j" not in r  # no energy reading on a CPU


def test_flops_and_kv_bytes_match_inspect(mini_run, capsys):
    _, out = mini_run
    for r in _records(out):
        capsys.readouterr()
        assert main(["inspect", "--model", "tiny", "--variant", r["variant"], "--dtype", "fp32",
                     "--batch", str(r["batch_size"]), "--seq-len", str(r["seq_len"]), "--json"]) == 0
        ins = json.loads(capsys.readouterr().out)
        assert r["params"] == ins["params"]
        assert r["kv_cache_bytes"] == ins["kv_cache_bytes_per_token"] * r["batch_size"] * (r["seq_len"] + 4)
        if r["phase"] == "prefill":
            assert r["flops"]["analytic"] == r["flops"]["counted"] == ins["flops"]["prefill"]
        else:
            steps = [accounting.decode_flops("tiny", r["variant"], r["batch_size"], r["seq_len"] + i).total
                     for i in range(4)]
            assert steps[0] == ins["flops"]["decode_step"]
            assert r["flops"]["analytic"] == sum(steps)
            # counted: what the kernels execute over the static cache (all seq_len + 4 positions)
            assert r["flops"]["counted"] >= r["flops"]["analytic"]


def test_sigkill_halfway_then_resume_measures_each_point_exactly_once(tmp_path):
    suite = _suite(tmp_path, tiny_suite("mini", batch_sizes=(1,), decode_tokens=4, warmup=1, repeats=3))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "sabench.cli", "run", str(suite), "--out", str(out),
                             "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and len(_records(out)) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _records(out)  # a kill at any moment leaves a valid file
    assert 4 <= len(before) < 12
    assert main(["run", str(suite), "--out", str(out), "--resume", "--no-report"]) == 0
    after = _records(out)
    keys = [(r["variant"], r["batch_size"], r["seq_len"], r["phase"]) for r in after]
    assert len(keys) == len(set(keys)) == 12  # 3 variants x 2 seq_lens x 2 phases
    assert after[: len(before)] == before  # finished points were not re-measured


def test_injected_oom_is_data_and_the_sweep_goes_on(tmp_path, monkeypatch):
    suite = _suite(tmp_path, SUITE.replace("seq_len: [16, 32]", "seq_len: [16, 32, 48]")
                   .replace("batch_size: [1, 2]", "batch_size: [1]"))
    monkeypatch.setenv(FAULT_ENV, "cla:2|1|32")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    by = {(r["variant"], r["seq_len"], r["phase"]): r for r in _records(out)}
    assert by[("cla:2", 32, "prefill")]["status"] == "oom"
    assert "out of memory" in by[("cla:2", 32, "prefill")]["error"]
    assert by[("cla:2", 48, "decode")]["status"] == "skipped_after_oom"
    others = [r for k, r in by.items() if k[0] != "cla:2" or k[1] == 16]
    assert len(others) == 14 and all(r["status"] == "ok" for r in others)


def test_existing_results_are_never_overwritten(mini_run, capsys):
    _, out = mini_run
    before = (out / "results.json").read_text()
    assert main(["run", "smoke", "--out", str(out), "--no-report"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


def test_resume_needs_out_and_a_matching_suite(tmp_path, mini_run, capsys):
    _, out = mini_run
    assert main(["run", "smoke", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    changed = _suite(tmp_path, SUITE.replace("decode_tokens: 4", "decode_tokens: 5"))
    assert main(["run", str(changed), "--out", str(out), "--resume"]) == 2
    assert "decode_tokens" in capsys.readouterr().err
    # the mode that ran is part of what a number means: a resume may not switch it
    assert main(["run", str(_suite(tmp_path)), "--out", str(out), "--resume", "--execution", "compiled"]) == 2
    assert "execution" in capsys.readouterr().err


def test_records_say_eager_ran_and_how_stable_it_was(mini_run):
    _, out = mini_run
    data = json.loads((out / "results.json").read_text())
    assert data["suite"]["execution"] == "eager"  # auto on the CPU
    for r in data["records"]:
        assert r["execution"] == "eager"
        assert r.get("prefill_mode", r.get("decode_mode")) == "eager"
        st = r["stability"]
        lat = r["latency_ms"]
        assert st["p90_over_p10"] == pytest.approx(lat["p90"] / lat["p10"])
        assert st["stable"] == (st["p90_over_p10"] <= st["threshold"]) and st["extra_rounds"] == 0


def test_unstable_samples_get_bounded_extra_rounds_on_cuda_and_a_note():
    import torch

    from sabench.constants import EXTRA_ROUNDS
    from sabench.harness.phases import timed_rounds as _timed_rounds

    rounds = []

    def spread():  # every round bimodal: never stable
        rounds.append(1)
        return [1.0, 1.0, 2.0, 2.0]

    samples, st = _timed_rounds(spread, torch.device("cuda"))  # only the device's type is read
    assert len(rounds) == 1 + EXTRA_ROUNDS and len(samples) == 4 * len(rounds)
    assert not st.stable and st.extra_rounds == EXTRA_ROUNDS and "compare with care" in st.note
    rounds.clear()
    samples, st = _timed_rounds(spread, torch.device("cpu"))
    assert len(rounds) == 1 and st.extra_rounds == 0 and not st.stable
    calls = iter([[1.0, 1.5, 1.0, 1.5], [1.0] * 40])  # settles after one more round
    samples, st = _timed_rounds(lambda: next(calls), torch.device("cuda"))
    assert st.stable and st.extra_rounds == 1 and st.note is None and len(samples) == 44


def test_cache_directories_follow_the_environment(monkeypatch, tmp_path):
    from sabench.paths import cache_root, inductor_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("SABENCH_CACHE_DIR", str(tmp_path / "sb"))
    assert cache_root() == tmp_path / "sb" and inductor_cache_dir() == tmp_path / "sb" / "inductor"
    monkeypatch.delenv("SABENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "sabench"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "ind"))
    assert inductor_cache_dir() == tmp_path / "ind"


def test_an_unconfigured_suite_measures_three_rounds_on_one_cpu_thread(tmp_path, monkeypatch, capsys):
    """What a user's suite that sets neither `rounds` nor `threads` gets: rounds enough for an interval
    across processes and a judged gate, and one torch thread per point process on CPU."""
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 1.0, 1.0))  # a machine busier than its cores
    text = tiny_suite("bare", variants=("baseline",), batch_sizes=(1,), seq_lens=(8,), decode_tokens=2,
                      warmup=0, repeats=2, rounds=None)
    assert "rounds" not in text and "threads" not in text
    out = tmp_path / "run"
    assert main(["run", str(_suite(tmp_path, text)), "--out", str(out), "--no-report"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "load average" in line]
    assert len(warnings) == 1 and "99.0" in warnings[0] and f"{len(os.sched_getaffinity(0))} core" in warnings[0]
    data = json.loads((out / "results.json").read_text())
    assert data["suite"]["rounds"] == 3 and data["suite"]["threads"] is None  # the suite as written
    for r in data["records"]:
        assert [x["round"] for x in r["rounds"]] == [1, 2, 3]
        assert r["torch_threads"] == 1


def test_the_busy_warning_names_the_load_and_the_cores():
    from sabench.harness.environment import busy_warning

    assert busy_warning(2.0, 2) is None and busy_warning(0.1, 1) is None
    line = busy_warning(6.24, 2)
    assert "6.2" in line and "2 core(s)" in line and "\n" not in line


def test_the_eta_counts_from_the_first_point_not_from_the_start_up(monkeypatch):
    """A run that spends 60 s starting and 1 s a point says about 1 s a point still to come."""
    from sabench.harness import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    p = progress.Progress(total=10, done=0)
    clock[0] = 60.0  # calibration, FLOP counts, process start
    lines = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    for _ in range(2):
        p.start("x")
        clock[0] += 1.0
        p.finish("x", "ok")
    assert lines[-1].endswith("(ETA 8 s)")


def _job(**kw):
    from sabench.harness.job import PointJob
    from sabench.plan import plan_for
    from sabench.presets import resolve_config

    from sabench.records import PointSpec

    cfg = resolve_config("tiny")
    return PointJob(point=PointSpec("cla:2", 2, 8), cfg=cfg, plan=plan_for("cla:2", cfg), device="cpu",
                    dtype="float32", decode_tokens=3, warmup=0, repeats=2, peaks={"peak_flops_per_s": 1e12,
                                                                 "peak_bandwidth_bytes_per_s": 1e11}, **kw)


def test_a_points_rates_are_read_from_its_median_and_closed_forms():
    """point.measure's one assembly: tokens/s, MFU, MBU and the floor by hand from the record's own figures."""
    from sabench.harness.point import measure

    job = _job()
    (prefill, decode), _ = measure(job)
    cfg, plan = job.cfg, job.plan
    assert prefill.flops.analytic == accounting.prefill_flops(cfg, plan, 2, 8).total
    med = prefill.latency_ms.median / 1e3
    flops, nbytes = prefill.flops.analytic, prefill.bytes_moved
    assert prefill.mfu == pytest.approx(flops / med / 1e12, rel=1e-12)
    assert prefill.floor_ms == pytest.approx(max(flops / 1e12, nbytes / 1e11) * 1e3, rel=1e-12)
    med = decode.latency_ms.median / 1e3
    step_flops, step_bytes = decode.flops.analytic / 3, decode.bytes_moved / 3  # per decode step
    assert decode.tokens_per_s == pytest.approx(2 / med, rel=1e-12)
    assert decode.mbu == pytest.approx(step_bytes / med / 1e11, rel=1e-12)
    assert decode.floor_ms == pytest.approx(max(step_flops / 1e12, step_bytes / 1e11) * 1e3, rel=1e-12)
    assert decode.tensor_parallel is None


def test_a_model_that_does_not_fit_makes_both_records_oom():
    from sabench.harness.point import measure

    job = _job(fault_oom="cla:2|2|8")
    (prefill, decode), _ = measure(job)
    for r in (prefill, decode):
        assert r.status == "oom" and r.error.startswith("building the model: OutOfMemoryError"), r
        assert r.tokens_per_s is None and r.mfu is None and r.extra["weights"] == "random"
        assert r.params == accounting.params(job.cfg, job.plan)  # the closed forms stand


def test_a_cuda_phases_readings_become_typed_fields_that_survive_results_json():
    """What phases.measured makes of a CUDA phase (NVML readings, no energy counter, the eager
    step's timing) is what results.json holds and load_results reads back: no GPU needed."""
    from sabench.harness.phases import measured
    from sabench.records.rates import with_rates
    from sabench.records import Latency, PhaseRecord, Stability

    readings = {"memory_bytes": {"device_peak": 3 << 30, "phase_rise": 1 << 20, "peak_allocated": 2 << 30,
                                 "peak_reserved": 2 << 30, "context_bytes": 5 << 20},
                "memory_source": "nvml-process", "memory_breakdown": {"weights": 1.0, "kv_cache": 2.0},
                "memory_notes": ["a note"], "nvml": {"n_samples": 12, "pre_cuda_used_bytes": None},
                "energy_j": None, "joules_per_token": None, "energy_source": None, "energy_note": "NVML unavailable"}
    rec = PhaseRecord("cla:2", 4, 512, "decode", "error", error="not measured", decode_tokens=8)
    out = with_rates(measured(rec, [1.0, 2.0, 3.0], Stability(1.5, False, 1.05, 0), readings, decode_mode="graph",
                              latency_eager_ms=Latency.of([4.0, 5.0])), {})
    assert out.ok and out.error is None and out.latency_ms.median == 2.0 and out.tokens_per_s == 4 / 2e-3
    assert out.memory_bytes.device_peak == 3 << 30 and out.memory_bytes.extra == {"context_bytes": 5 << 20}
    d = out.to_dict()
    assert d["energy_j"] is None and d["energy_note"] == "NVML unavailable"  # written as null, as measured
    assert d["memory_bytes"]["context_bytes"] == 5 << 20 and d["memory_notes"] == ["a note"]
    assert PhaseRecord.from_dict(json.loads(json.dumps(d))) == out

"""Rounds in the harness: the shuffled, paired order; per-round samples merged; resume adds rounds;
--retry-failed; --threads reaches the point process; the measurement conditions are recorded."""
import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from sabench.cli import main
from tests.helpers import tiny_suite, write_suite
from sabench.harness import sweep
from sabench.harness.faults import FAULT_ENV
from sabench.harness.rounds import merge_round, round_order
from sabench.records import Latency, PhaseRecord, PointSpec, load_results

SUITE = tiny_suite("rounds", decode_tokens=2, warmup=0, repeats=2, rounds=None)


def _suite(tmp_path, text=SUITE):
    return write_suite(tmp_path, text, "rounds.yaml")


def _data(out):
    return json.loads((Path(out) / "results.json").read_text())


POINTS = [PointSpec(v, b, t) for v in ("baseline", "cla:2", "sa:2-3") for b in (1, 2) for t in (16, 32)]


def test_each_round_is_a_seeded_shuffle_of_cells_with_a_cells_variants_adjacent():
    orders = [round_order(POINTS, "2026-01-01T00:00:00+00:00", k) for k in (1, 2, 3, 4)]
    for order in orders:
        assert sorted(order) == sorted(POINTS)  # every point once per round
        cells = [(p.batch_size, p.seq_len) for p in order]
        runs = [c for i, c in enumerate(cells) if i == 0 or cells[i - 1] != c]
        assert len(runs) == len(set(runs)) == 4  # each cell's variants back to back
    assert len({tuple(o) for o in orders}) > 1  # a fresh order per round
    assert round_order(POINTS, "2026-01-01T00:00:00+00:00", 2) == orders[1]  # deterministic for a seed
    other = [round_order(POINTS, "2026-01-02T00:00:00+00:00", k) for k in (1, 2, 3, 4)]
    assert other != orders


class _FakePoints:
    """run_point stand-in: records the order of (point, call) and returns made-up samples."""

    def __init__(self, fail=()):
        self.calls, self.fail, self.n, self.threads = [], set(fail), 0, []

    def __call__(self, job, workdir):
        self.n += 1
        self.calls.append((job.variant, job.batch_size, job.seq_len))
        self.threads.append(job.threads)
        status = "error" if (job.variant, job.batch_size, job.seq_len) in self.fail else "ok"
        recs = {}
        for ph in ("prefill", "decode"):
            r = {"variant": job.variant, "batch_size": job.batch_size, "seq_len": job.seq_len, "phase": ph,
                 "status": status, "torch_threads": job.threads}
            if status == "ok":
                s = [float(self.n), float(self.n) + 0.5]
                r.update(latency_ms={"median": statistics.median(s), "p10": min(s), "p90": max(s), "samples": s},
                         tokens_per_s=1000.0 / statistics.median(s),
                         memory_bytes={"device_peak": 100 + self.n}, stability={"threshold": 1.5})
            else:
                r["error"] = "boom"
            recs[ph] = PhaseRecord.from_dict(r)
        return recs, {"total_s": 0.1}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(sweep, "capture_run_env", lambda *a: {"device": "cpu"})
    f = _FakePoints()
    monkeypatch.setattr(sweep, "run_point", f)
    return f


def test_rounds_follow_the_shuffled_order_and_merge_every_rounds_samples(tmp_path, fake):
    out = tmp_path / "run"
    assert sweep.run_suite(str(_suite(tmp_path)), out=out, report=False, rounds=3) == 0
    data = _data(out)
    assert len(fake.calls) == 3 * 12
    for k in (1, 2, 3):  # the calls of round k are that round's order
        want = [(p.variant, p.batch_size, p.seq_len) for p in round_order(POINTS, data["created"], k)]
        assert fake.calls[12 * (k - 1): 12 * k] == want
    assert len(data["records"]) == 24 and data["suite"]["rounds"] == 3
    for r in data["records"]:
        rounds = r["rounds"]
        assert [x["round"] for x in rounds] == [1, 2, 3]
        every = [s for x in rounds for s in x["samples"]]
        assert r["latency_ms"]["samples"] == every  # the headline covers all rounds
        assert r["latency_ms"]["median"] == pytest.approx(statistics.median(every))
        assert all(x["median_ms"] == statistics.median(x["samples"]) and x["n"] == 2 for x in rounds)
        tokens = r["batch_size"] * (r["seq_len"] if r["phase"] == "prefill" else 1)  # per sample
        assert r["tokens_per_s"] == pytest.approx(tokens * 1000.0 / r["latency_ms"]["median"])  # the merged median's
        peaks = [fake.calls.index((r["variant"], r["batch_size"], r["seq_len"]), 12 * k) + 1 for k in range(3)]
        assert r["memory_bytes"]["device_peak"] == 100 + max(peaks)  # the largest round's reading
        assert any("largest device_peak" in n for n in r["memory_notes"])
    load_results(out)  # the merged file is a valid results file


def test_resume_with_one_more_round_measures_exactly_that_round(tmp_path, fake):
    out = tmp_path / "run"
    suite = str(_suite(tmp_path))
    assert sweep.run_suite(suite, out=out, report=False, rounds=1) == 0
    before = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]): r for r in _data(out)["records"]}
    assert all(len(r["rounds"]) == 1 for r in before.values())
    fake.calls.clear()
    assert main(["run", suite, "--out", str(out), "--resume", "--rounds", "2", "--no-report"]) == 0
    data = _data(out)
    assert [(p.variant, p.batch_size, p.seq_len) for p in round_order(POINTS, data["created"], 2)] == fake.calls
    for r in data["records"]:
        old = before[(r["variant"], r["batch_size"], r["seq_len"], r["phase"])]
        assert [x["round"] for x in r["rounds"]] == [1, 2] and r["rounds"][0] == old["rounds"][0]
    fake.calls.clear()
    assert main(["run", suite, "--out", str(out), "--resume", "--rounds", "2", "--no-report"]) == 0
    assert fake.calls == []  # nothing left to measure


def test_a_resume_keeps_the_runs_threads_and_adds_rounds_and_the_variants_it_names(tmp_path, fake):
    """Neither `rounds` nor `threads` makes a run another suite's (nor the variants' order); a
    resume without --threads measures with the run's; --variant adds variants, and the suite echo
    then lists them (another variant list without it is refused: test_robustness)."""
    out = tmp_path / "run"
    assert sweep.run_suite(str(_suite(tmp_path)), out=out, report=False, threads=1, rounds=1) == 0
    reordered = write_suite(tmp_path, SUITE.replace('[baseline, "cla:2", "sa:2-3"]', '["sa:2-3", baseline, "cla:2"]'),
                            "reordered.yaml")
    fake.calls.clear()
    assert main(["run", str(reordered), "--out", str(out), "--resume", "--rounds", "2", "--no-report"]) == 0
    assert len(fake.calls) == 12 and set(fake.threads) == {1}
    fake.calls.clear()
    assert main(["run", str(_suite(tmp_path)), "--out", str(out), "--resume", "--rounds", "2", "--variant", "cla:4",
                 "--no-report"]) == 0
    assert sorted(fake.calls) == sorted([("cla:4", b, t) for b in (1, 2) for t in (16, 32)] * 2)
    data = _data(out)
    assert data["suite"]["variants"] == ["baseline", "cla:2", "sa:2-3", "cla:4"]
    assert data["suite"]["threads"] == 1 and data["suite"]["rounds"] == 2 and set(fake.threads) == {1}
    assert {r["variant"] for r in data["records"]} == set(data["suite"]["variants"])
    assert all(len(r["rounds"]) == 2 for r in data["records"])


def test_retry_failed_measures_the_failed_rounds_again_and_the_exit_status_says_so(tmp_path, fake, capsys):
    out = tmp_path / "run"
    suite = str(_suite(tmp_path))
    fake.fail = {("cla:2", 2, 32)}
    assert sweep.run_suite(suite, out=out, report=False, rounds=2) == 1
    assert "--retry-failed" in capsys.readouterr().err
    fake.calls.clear()
    assert main(["run", suite, "--out", str(out), "--resume", "--rounds", "2", "--no-report"]) == 1  # not retried
    assert fake.calls == []
    assert main(["run", suite, "--out", str(out), "--retry-failed", "--no-report"]) == 2  # needs --resume
    assert main(["run", suite, "--out", str(out), "--resume", "--rounds", "2", "--retry-failed",
                 "--no-report"]) == 1  # still failing
    assert fake.calls == [("cla:2", 2, 32)] * 2
    fake.fail, fake.calls = set(), []
    assert main(["run", suite, "--out", str(out), "--resume", "--rounds", "2", "--retry-failed",
                 "--no-report"]) == 0
    assert fake.calls == [("cla:2", 2, 32)] * 2
    rec = next(r for r in _data(out)["records"] if (r["variant"], r["batch_size"], r["seq_len"]) == ("cla:2", 2, 32))
    assert rec["status"] == "ok" and [x.get("status", "ok") for x in rec["rounds"]] == ["ok", "ok"]


def test_merge_keeps_a_failed_round_named_and_the_first_measured_rounds_figures():
    point = PointSpec("baseline", 4, 8)
    ok = PhaseRecord("baseline", 4, 8, "decode", "ok", params=7, decode_tokens=2, bytes_moved=2_000_000,
                     latency_ms=Latency.of([2.0]), tokens_per_s=2000.0)
    err = PhaseRecord.failed(point, "decode", "error", "worker exited")
    m = merge_round(merge_round(None, err, 1), ok, 2)
    assert m.ok and m.params == 7 and m.error is None
    assert m.rounds[0].to_dict() == {"round": 1, "n": 0, "samples": [], "status": "error", "error": "worker exited"}
    peaks = {"peak_bandwidth_bytes_per_s": 1e12}
    m3 = merge_round(m, replace(ok, params=99, latency_ms=Latency.of([4.0])), 3, peaks=peaks)
    assert m3.params == 7 and m3.latency_ms.samples == (2.0, 4.0)
    # the rates follow the merged median (3 ms a step), derived by hand: 4 sequences a step,
    # 1e6 bytes a step (2e6 over 2 decode tokens) against 1e12 B/s
    assert m3.tokens_per_s == pytest.approx(4 / 3e-3)
    assert m3.mbu == pytest.approx(1e6 / (3e-3 * 1e12)) and m3.floor_ms == pytest.approx(1e6 / 1e12 * 1e3)
    assert m3.mfu is None and m3.roofline_metric == "mbu"  # no FLOP peak, no FLOP count: no mfu


def test_threads_reach_the_point_process_and_conditions_are_recorded(tmp_path):
    one = SUITE.replace('[baseline, "cla:2", "sa:2-3"]', "[baseline]").replace("[1, 2]", "[1]") \
        .replace("[16, 32]", "[16]")
    out = tmp_path / "run"
    assert main(["run", str(_suite(tmp_path, one)), "--out", str(out), "--threads", "1", "--rounds", "2",
                 "--no-report"]) == 0
    data = _data(out)
    assert data["suite"]["threads"] == 1 and data["suite"]["rounds"] == 2
    assert all(r["torch_threads"] == 1 for r in data["records"])
    cond = data["env"]["conditions"]
    assert len(cond["load_avg_before"]) == 3 and len(cond["load_avg_after"]) == 3
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    assert ("cpu_governor" in cond) == governor.exists()
    out2 = tmp_path / "run2"
    assert main(["run", str(_suite(tmp_path, one)), "--out", str(out2), "--threads", "2", "--no-report"]) == 0
    assert all(r["torch_threads"] == 2 for r in _data(out2)["records"])


def test_retry_failed_oom_measures_an_injected_oom_again(tmp_path, monkeypatch):
    one = SUITE.replace('[baseline, "cla:2", "sa:2-3"]', '[baseline, "cla:2"]').replace("[1, 2]", "[1]") \
        .replace("[16, 32]", "[16]")
    suite, out = str(_suite(tmp_path, one)), tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "cla:2|1|16")
    assert main(["run", suite, "--out", str(out), "--no-report"]) == 0  # OOM is data
    assert {r["status"] for r in _data(out)["records"] if r["variant"] == "cla:2"} == {"oom"}
    monkeypatch.delenv(FAULT_ENV)
    before = [r for r in _data(out)["records"] if r["variant"] == "baseline"]
    assert main(["run", suite, "--out", str(out), "--resume", "--retry-failed", "--no-report"]) == 0
    assert [r["status"] for r in _data(out)["records"] if r["variant"] == "cla:2"] == ["oom", "oom"]  # not retried
    assert main(["run", suite, "--out", str(out), "--resume", "--retry-failed=oom", "--no-report"]) == 0
    data = _data(out)
    assert [r["status"] for r in data["records"] if r["variant"] == "cla:2"] == ["ok", "ok"]
    assert [r for r in data["records"] if r["variant"] == "baseline"] == before  # measured once


def test_rounds_and_threads_are_validated(tmp_path, capsys):
    for text, key in ((SUITE + "rounds: 0\n", "rounds"), (SUITE + "rounds: 101\n", "rounds"),
                      (SUITE + "threads: 0\n", "threads")):
        assert main(["run", str(_suite(tmp_path, text)), "--out", str(tmp_path / "x"), "--no-report"]) == 2
        assert key in capsys.readouterr().err
    assert main(["run", str(_suite(tmp_path)), "--rounds", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--rounds" in capsys.readouterr().err

"""Conclusions that survive noise: rounds in the records, intervals beside every ratio in report,
compare and check, findings only where the interval says so, the gate's failure modes, v1 files."""
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from report_fixtures import latency_summary, make_results, scale_timings, with_rounds, write_results
from sabench.records import ResultsError, RoundSample, RunRecord, load_results
from sabench.stats import paired_round_minima, round_medians, round_minima
from sabench.report.check import check
from sabench.cli import main
from sabench.report.compare import compare_runs
from sabench.report.report import write_report
from sabench.stats import ratio_interval

V1 = Path(__file__).parent / "data" / "results_v1"


def _identical_and_2x(seed=0):
    """baseline and cla:1 drawn from one distribution, cla:2 at half the time; 6 rounds, 10% drift."""
    res = make_results(variants=("baseline", "cla:1", "cla:2"), batch_sizes=(1, 4), seq_lens=(128, 512),
                       oom=False, error=False, seed=seed)
    return with_rounds(res, 6, factors={"cla:2": 0.5}, seed=seed)


def _rec(run: RunRecord, v, b, s, ph):
    return run.index()[(v, b, s, ph)]


# ---------------------------------------------------------------------------- records


def test_rounds_are_typed_validated_and_round_trip(tmp_path):
    res = _identical_and_2x()
    run = RunRecord.from_dict(res)
    r = _rec(run, "cla:1", 1, 128, "prefill")
    assert len(r.rounds) == 6 and isinstance(r.rounds[0], RoundSample)
    assert [x.round for x in r.rounds] == [1, 2, 3, 4, 5, 6] and r.rounds[0].n == 5
    assert RunRecord.from_dict(run.to_dict()) == run
    vals, within = round_medians(r)
    assert not within and vals == tuple(x.median_ms for x in r.rounds)
    assert round_minima(r) == (tuple(min(x.samples) for x in r.rounds), False)
    b, c = paired_round_minima(_rec(run, "baseline", 1, 128, "prefill"), r)
    assert len(b) == len(c) == 6 and c == tuple(min(x.samples) for x in r.rounds)
    # a failed round is kept with its status; the others still make the interval
    res2 = copy.deepcopy(res)
    rec = next(x for x in res2["records"] if x["variant"] == "cla:1" and x["status"] == "ok")
    rec["rounds"][2] = {"round": 3, "n": 0, "samples": [], "status": "error", "error": "RuntimeError: boom"}
    r2 = RunRecord.from_dict(res2).index()[(rec["variant"], rec["batch_size"], rec["seq_len"], rec["phase"])]
    assert r2.rounds[2].status == "error" and len(round_medians(r2)[0]) == 5
    assert r2.to_dict()["rounds"][2] == {"round": 3, "n": 0, "samples": [], "status": "error",
                                         "error": "RuntimeError: boom"}


@pytest.mark.parametrize("bad,msg", [
    ({"round": 1, "median_ms": -1.0, "n": 1, "samples": [1.0]}, "rounds[0].median_ms must be > 0"),
    ({"round": 1, "median_ms": 1.0, "n": 2, "samples": [1.0, float("nan")]}, "rounds[0].samples[1]"),
    ({"round": 1, "median_ms": 1.0, "n": 3, "samples": [1.0, 1.0]}, "rounds[0].n is 3"),
    ({"median_ms": 1.0, "n": 1, "samples": [1.0]}, "rounds[0].round is missing"),
])
def test_invalid_rounds_are_refused_naming_the_field(bad, msg):
    res = _identical_and_2x()
    res["records"][0]["rounds"][0] = bad
    with pytest.raises(ResultsError, match=re.escape(msg)):
        RunRecord.from_dict(res)


def test_rounds_out_of_order_are_refused():
    res = _identical_and_2x()
    rs = res["records"][0]["rounds"]
    rs[0], rs[1] = rs[1], rs[0]
    with pytest.raises(ResultsError, match="increasing round order"):
        RunRecord.from_dict(res)


def test_v1_records_have_no_rounds_and_fall_back_to_within_process():
    run = load_results(V1 / "cpu-smoke.json")
    r = next(x for x in run.records if x.ok)
    assert r.rounds == () and "rounds" not in r.to_dict()
    vals, within = round_medians(r)
    assert within and vals == r.latency_ms.samples


# ---------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def rounds_report(tmp_path_factory):
    run = write_results(_identical_and_2x(), tmp_path_factory.mktemp("r") / "run")
    md = write_report(run).read_text()
    return load_results(run), md


def test_report_prints_the_paired_interval_beside_each_speedup(rounds_report):
    run, md = rounds_report
    # each round's fastest step, round k of the baseline beside round k of cla:2
    b, c = (tuple(min(x.samples) for x in _rec(run, v, 4, 512, "decode").rounds) for v in ("baseline", "cla:2"))
    want = str(ratio_interval(b, c, paired=True).inverted())
    decode = md.split("## Decode")[1]
    row = next(line for line in decode.splitlines() if re.match(r"\|\s*cla:2\s*\|\s*4\s*\|\s*512\s*\|", line))
    assert want in row and "†" not in row


def test_identical_variants_are_not_distinguishable_and_2x_is_named(rounds_report):
    run, md = rounds_report
    says = md.split("## What this run says")[1].split("\n## ")[0]
    first = says.strip().splitlines()
    assert "5% practical threshold" in first[0] and "paired by round" in first[0]
    assert re.search(r"`cla:1`: not distinguishable from baseline at any of its 4 compared points "
                     r"\(the interval includes 1", says)
    assert "`cla:1`: faster" not in says and "slower at" not in says  # never named faster or slower
    assert "No variant is slower than baseline beyond the 5% threshold at any compared point." in says
    assert "the largest speedup over baseline that the data supports is **2." in says
    assert "`cla:2`: faster at 4 of 4 points" in says


def test_a_busy_identical_run_claims_nothing(tmp_path):
    """baseline and cla:1 only, drawn from one distribution under heavy drift: no finding at all."""
    res = make_results(variants=("baseline", "cla:1"), batch_sizes=(1, 4), seq_lens=(128, 512),
                       oom=False, error=False, seed=5)
    res = with_rounds(res, 5, seed=5, drift_sd=0.4, round_sd=0.15)
    md = write_report(write_results(res, tmp_path / "run")).read_text()
    says = md.split("## What this run says")[1].split("\n## ")[0]
    assert "**Prefill**: no variant is distinguishable from baseline on this run" in says
    assert "**Decode**: no variant is distinguishable from baseline on this run" in says
    assert "largest speedup" not in says and "**Slower than baseline**" not in says


# ---------------------------------------------------------------------------- compare


def test_compare_prints_unpaired_intervals_over_rounds(tmp_path):
    a = _identical_and_2x(seed=1)
    b = with_rounds(scale_timings(a, 0.5), 6, factors={"cla:2": 0.5}, seed=3)  # twice as fast hardware
    b["env"]["device_name"] = "NVIDIA H200"
    ra, rb = write_results(a, tmp_path / "a"), write_results(b, tmp_path / "b")
    md = compare_runs([ra, rb], tmp_path / "out").read_text()
    A, B = load_results(ra), load_results(rb)
    ka = _rec(A, "baseline", 1, 512, "prefill")
    kb = _rec(B, "baseline", 1, 512, "prefill")
    want = ratio_interval(round_minima(ka)[0], round_minima(kb)[0])
    table = md.split("## Prefill median latency (ms)")[1].split("\n## ")[0]
    row = next(line for line in table.splitlines() if re.match(r"\|\s*baseline\s*\|\s*1\s*\|\s*512\s*\|", line))
    assert str(want) in row and "†" not in row
    tput = md.split("## Prefill throughput (tokens/s)")[1].split("\n## ")[0]
    row = next(line for line in tput.splitlines() if re.match(r"\|\s*baseline\s*\|\s*1\s*\|\s*512\s*\|", line))
    assert str(want.inverted()) in row
    assert "as fast; per point:" in md


# ---------------------------------------------------------------------------- check


def test_check_on_rounds_identical_passes_and_2x_fails_with_the_interval(tmp_path):
    a = _identical_and_2x(seed=1)
    same = _identical_and_2x(seed=1)
    same = with_rounds(same, 6, factors={"cla:2": 0.5}, seed=9)  # another draw of the same run
    res = check(a, same)
    assert res.exit_code == 0 and res.headline().startswith("PASS: no slowdown beyond 5% detected, 24 point(s)")
    assert "within-process" not in res.headline()
    slow = with_rounds(_identical_and_2x(seed=1), 6, factors={"cla:2": 1.0}, seed=9)  # cla:2 lost its 2x
    res = check(a, slow)
    points = [f for f in res.regressions if f.metric == "latency"]
    assert res.exit_code == 1 and {f.key[0] for f in points} == {"cla:2"} and len(points) == 8
    f = points[0]
    A, S = RunRecord.from_dict(a).index(), RunRecord.from_dict(slow).index()
    # the gate judges each round's fastest step
    mins = [tuple(min(r.samples) for r in rec.rounds) for rec in (A[f.key], S[f.key])]
    assert mins[0] == round_minima(A[f.key])[0]
    ref = ratio_interval(*mins, confidence=1 - 0.025 / 24)  # half of alpha over the points
    assert (f.estimate.low, f.estimate.high) == pytest.approx((ref.low, ref.high))
    md = res.to_markdown()
    assert md.splitlines()[0] == res.headline() and md.startswith("FAIL: 9 regression(s) (9 slower beyond 5%)")  # 8 points and one phase
    assert str(ref) in md
    assert md.index("Points that changed") < md.index("Notes")


def _busy(results: dict, factor: float, seed: int, busy_share: float = 0.5) -> dict:
    """`results` with 6 rounds of 24 steps per ok record, on a machine shared with other work:
    in a random half of the rounds most steps wait behind a neighbour (x4 to x10); the work itself
    costs the baseline time x `factor` in every step."""
    out = copy.deepcopy(results)
    rng = np.random.default_rng(seed)
    for r in out["records"]:
        if r.get("status") != "ok":
            continue
        true = r["latency_ms"]["median"] * factor
        rounds, every = [], []
        for k in range(6):
            s = true * np.exp(rng.normal(0, 0.02, 24))
            if rng.random() < busy_share:  # this process shared its core for most of its steps
                waits = rng.random(24) < 0.8
                s = np.where(waits, s * rng.uniform(4, 10, 24), s)
            s = [float(x) for x in s]
            rounds.append({"round": k + 1, "median_ms": float(np.median(s)), "n": 24, "samples": s})
            every += s
        r["rounds"] = rounds
        r["latency_ms"] = latency_summary(every)
    return out


def test_gate_judges_each_rounds_fastest_step_on_a_busy_machine():
    """Rounds that waited behind a neighbour move the per-round medians by up to 10x: a gate on medians
    cannot tell identical work from a 2x slowdown there. The fastest step of each round can."""
    clean = make_results(seed=1, oom=False, error=False)
    base, same, slow = _busy(clean, 1.0, seed=1), _busy(clean, 1.0, seed=2), _busy(clean, 2.0, seed=3)
    assert check(base, same).exit_code == 0
    res = check(base, slow)
    assert res.exit_code == 1
    judged = res.judged
    # each point is 2x slower: nearly all are caught (a round whose 24 steps all waited, p = 0.8^24,
    # can still hide one)
    points = [f for f in res.regressions if f.metric == "latency"]
    assert len(points) >= 0.95 * judged
    assert {f.key[3] for f in res.regressions if f.metric != "latency"} == {"prefill", "decode"}
    # the reference: Welch t on the logs of each round's minimum, by hand with scipy
    B, S = RunRecord.from_dict(base).index(), RunRecord.from_dict(slow).index()
    f = points[0]
    lb = np.log([min(r.samples) for r in B[f.key].rounds])
    ls = np.log([min(r.samples) for r in S[f.key].rounds])
    va, vb = lb.var(ddof=1) / 6, ls.var(ddof=1) / 6
    df = (va + vb) ** 2 / (va ** 2 / 5 + vb ** 2 / 5)
    q = scipy_stats.t.ppf(1 - (0.025 / judged) / 2, df)  # half of alpha over the points
    d = ls.mean() - lb.mean()
    assert (f.estimate.low, f.estimate.high) == pytest.approx((np.exp(d - q * np.sqrt(va + vb)),
                                                              np.exp(d + q * np.sqrt(va + vb))), rel=1e-6)
    # the same data judged on per-round medians: the busy rounds swamp the 2x (the estimator matters)
    meds = [ratio_interval(round_medians(B[k])[0], round_medians(S[k])[0], confidence=1 - 0.025 / judged)
            for k in (x.key for x in points)]
    assert sum(m.low > 1.05 for m in meds) < 0.8 * len(points)


def test_all_error_comparison_fails(tmp_path, capsys):
    a = make_results(seed=1, oom=False, error=False)
    for r in a["records"]:
        r.update(status="error", error="RuntimeError: boom")
        r.pop("latency_ms")
    pa, pb = write_results(a, tmp_path / "a"), write_results(copy.deepcopy(a), tmp_path / "b")
    assert main(["check", str(pa), str(pb)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: no comparable point")


@pytest.mark.parametrize("status", ["oom", "error", "skipped_after_oom", "missing"])
def test_a_point_ok_in_the_base_that_fails_in_the_candidate_regresses(status):
    a = make_results(seed=1, oom=False, error=False)
    b = copy.deepcopy(a)
    rec = next(r for r in b["records"] if r["variant"] == "cla:2" and r["phase"] == "decode")
    if status == "missing":
        b["records"].remove(rec)
    else:
        rec.update(status=status, error="out of memory")
        rec.pop("latency_ms")
    res = check(a, b)
    assert res.exit_code == 1 and [f.metric for f in res.regressions] == ["status"]
    assert res.headline().startswith("FAIL: 1 regression(s) (1 errored, out of memory or missing)")


@pytest.mark.parametrize("cmd", ["report", "compare", "check"])
@pytest.mark.parametrize("value", [0.0, -1.0, "NaN", "Infinity"])
def test_invalid_timings_are_refused_by_every_reader(tmp_path, capsys, cmd, value):
    good = make_results(seed=1, oom=False, error=False)
    bad = copy.deepcopy(good)
    bad["records"][3]["latency_ms"]["samples"][2] = value
    pg = write_results(good, tmp_path / "good")
    pb = tmp_path / "bad"
    pb.mkdir()
    (pb / "results.json").write_text(json.dumps(bad).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity"))
    args = {"report": ["report", str(pb)], "compare": ["compare", str(pg), str(pb), "--out", str(tmp_path / "o")],
            "check": ["check", str(pg), str(pb)]}[cmd]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sabench: error: ") and "latency_ms.samples[2]" in err


# ---------------------------------------------------------------------------- v1 files


def test_v1_files_render_compare_and_check_marked_within_process(tmp_path):
    src = V1 / "h100-llama32-1b.json"
    for name in ("h100-llama32-1b.json", "h200-llama32-1b.json", "cpu-smoke.json"):
        d = tmp_path / name.removesuffix(".json")
        d.mkdir()
        (d / "results.json").write_text((V1 / name).read_text())
        md = write_report(d).read_text()
        assert "within-process only" in md
    md = compare_runs([tmp_path / "h100-llama32-1b", tmp_path / "h200-llama32-1b"], tmp_path / "cmp").read_text()
    assert "within-process only" in md and "†" in md
    res = check(src, V1 / "h200-llama32-1b.json", timings=True)  # v1 holds no rounds: never judged
    assert res.exit_code == 0 and res.judged == 0 and "timings NOT judged" in res.headline()
    res = check(src, src)
    assert res.exit_code == 0 and res.headline().startswith("PASS")

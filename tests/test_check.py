import copy
import json

import pytest

from report_fixtures import big_results, make_results, scale_timings, with_rounds, write_results
from sabench.report import ResultsError
from sabench.report.check import check, parse_threshold
from sabench.cli import main


@pytest.fixture(scope="module")
def base():
    return with_rounds(make_results(seed=3), rounds=5, seed=3, drift_sd=0.02, round_sd=0.01, step_sd=0.01)


@pytest.fixture(scope="module")
def one_round():
    """A run as a one-round suite writes it: the steps of one process per point, no rounds."""
    return make_results(seed=3)


def _run(tmp_path, capsys, base, cur, *extra):
    a = write_results(base, tmp_path / "base")
    b = write_results(cur, tmp_path / "cur")
    code = main(["check", str(a), str(b), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def _rec(res, variant, b, s, phase):
    return next(r for r in res["records"] if (r["variant"], r["batch_size"], r["seq_len"], r["phase"])
                == (variant, b, s, phase))


def test_identical_passes(tmp_path, capsys, base):
    code, out, _ = _run(tmp_path, capsys, base, copy.deepcopy(base))
    assert code == 0
    assert out.splitlines()[0] == "PASS: no slowdown beyond 5% detected, 33 point(s), 95% family-wise intervals"


@pytest.mark.parametrize("factor", [1.0, 1.5, 100.0])
def test_one_round_runs_are_not_judged_however_far_apart(tmp_path, capsys, one_round, factor):
    """The steps of one process never decide: not a pass of the timings, not a fail either."""
    code, out, _ = _run(tmp_path, capsys, one_round, scale_timings(one_round, factor))
    assert code == 0
    assert out.splitlines()[0].startswith("PASS: statuses and deterministic figures unchanged, 33 point(s), "
                                          "timings NOT judged: no point has 3 measured rounds a side")
    res = check(one_round, scale_timings(one_round, factor))
    assert res.judged == 0 and len(res.unjudged) == 33 and not res.improvements
    assert any(n.startswith("33 timing point(s) not judged") and "--rounds 3" in n for n in res.notes)


def test_one_round_runs_still_gate_statuses_and_deterministic_figures(one_round):
    cur = copy.deepcopy(one_round)
    _rec(cur, "cla:2", 4, 512, "decode")["kv_cache_bytes"] += 2
    assert check(one_round, cur).exit_code == 1


def test_1_5x_everywhere_fails_and_each_phase_is_judged_as_a_whole(base):
    res = check(base, scale_timings(base, 1.5))
    assert res.exit_code == 1 and res.suite_judged == 2
    whole = {f.key[3]: f for f in res.regressions if f.metric == "latency (all points)"}
    assert set(whole) == {"prefill", "decode"} and whole["decode"].estimate.ratio == pytest.approx(1.5)
    assert "decode, all points" in res.to_text()


def test_uniform_2pct_drift_passes(tmp_path, capsys, base):
    code, out, _ = _run(tmp_path, capsys, base, scale_timings(base, 1.02))
    assert code == 0
    assert "0 regression(s), 0 improvement(s), 33 unchanged" in out


def test_25pct_decode_slowdown_of_one_variant_fails(tmp_path, capsys, base):
    cur = scale_timings(base, 1.25, variant="cla:2", phase="decode")
    code, out, _ = _run(tmp_path, capsys, base, cur)
    assert code == 1
    # 6 points; the phase as a whole is judged on its typical point (the median over points), which
    # one variant's slowdown does not move
    assert "FAIL: 6 regression(s)" in out and "decode, all points" not in out
    assert "decode cla:2 b=4 s=512" in out and "+25.0%" in out
    assert "1.25× [" in out  # the ratio with its interval
    points = [line.split("  ")[0] for line in out.split("Points that changed")[1].splitlines()
              if line.startswith(("prefill ", "decode "))]
    assert len(points) == 6 and all(p.startswith("decode cla:2 ") for p in points)


def test_changed_kv_bytes_fails(tmp_path, capsys, base):
    cur = copy.deepcopy(base)
    _rec(cur, "sa:6-11", 4, 512, "prefill")["kv_cache_bytes"] += 4096
    code, out, _ = _run(tmp_path, capsys, base, cur)
    assert code == 1
    assert "prefill sa:6-11 b=4 s=512" in out and "kv_cache_bytes" in out and "+4,096" in out


@pytest.mark.parametrize("field", ["params", "flops.analytic", "flops.counted"])
def test_other_deterministic_changes_fail(base, field):
    cur = copy.deepcopy(base)
    r = _rec(cur, "baseline", 1, 128, "decode")
    if "." in field:
        r["flops"][field.split(".")[1]] += 1
    else:
        r[field] += 1
    res = check(base, cur)
    assert res.exit_code == 1
    assert [(f.metric, f.key) for f in res.regressions] == [(field, ("baseline", 1, 128, "decode"))]


def test_oom_where_there_was_ok_fails(tmp_path, capsys, base):
    cur = copy.deepcopy(base)
    r = _rec(cur, "cla:2", 4, 2048, "prefill")
    for k in ("latency_ms", "tokens_per_s", "mfu", "memory_bytes"):
        r.pop(k)
    r.update(status="oom", error="CUDA out of memory")
    code, out, _ = _run(tmp_path, capsys, base, cur)
    assert code == 1
    assert "prefill cla:2 b=4 s=2048" in out and "status" in out and "OOM" in out


def test_improvement_and_ok_after_oom_are_not_failures(base):
    cur = scale_timings(base, 0.75, variant="cla:2", phase="decode")
    fixed = _rec(base, "cla:2", 1, 128, "prefill")
    r = _rec(cur, "baseline", 4, 2048, "prefill")
    r.update({k: copy.deepcopy(v) for k, v in fixed.items() if k not in ("variant", "batch_size", "seq_len")})
    r.update(params=_rec(base, "baseline", 4, 2048, "prefill")["params"],
             kv_cache_bytes=_rec(base, "baseline", 4, 2048, "prefill")["kv_cache_bytes"],
             flops=_rec(base, "baseline", 4, 2048, "prefill")["flops"])
    r.pop("error", None)
    res = check(base, cur)
    assert res.exit_code == 0
    assert len([f for f in res.improvements if f.metric == "latency"]) == 6
    assert any(f.metric == "status" and f.key == ("baseline", 4, 2048, "prefill") for f in res.improvements)


def test_timings_off_gates_on_deterministic_only(tmp_path, capsys, base):
    cur = scale_timings(base, 1.25, variant="cla:2", phase="decode")
    code, out, _ = _run(tmp_path, capsys, base, cur, "--timings", "off")
    assert code == 0
    assert "not judged" in out and "decode cla:2 b=4 s=512" in out
    cur["records"][0]["params"] += 1
    assert check(base, cur, timings=False).exit_code == 1


def test_timings_off_on_one_round_runs_speaks_of_timings_off_not_of_rounds(base):
    base = copy.deepcopy(base)
    for r in base["records"]:
        r.pop("rounds", None)  # one-round runs: no point has rounds to judge
    res = check(base, copy.deepcopy(base), timings=False)
    text = res.to_text()
    assert res.exit_code == 0 and res.unjudged == []
    assert "timings not judged (--timings off)" in text
    assert "fewer than" not in text and "--rounds" not in text


def _keep_rounds(res, n):
    for r in res["records"]:
        if r["status"] == "ok":
            r["rounds"] = r["rounds"][:n]


def test_too_few_rounds_are_not_judged(base):
    a, b = copy.deepcopy(base), scale_timings(base, 1.5)
    _keep_rounds(a, 2)
    _keep_rounds(b, 2)
    out = check(a, b)  # +50% everywhere, but 2 rounds a side are fewer than stats.MIN_ROUNDS
    assert out.exit_code == 0 and not out.regressions
    assert out.unchanged == 0 and len(out.unjudged) == 33
    assert "timings NOT judged" in out.headline()
    assert any("not judged" in n and "--rounds 3" in n for n in out.notes)


def _set_rounds(rec, minima):
    rec["rounds"] = [{"round": i + 1, "median_ms": m * 1.1, "n": 2, "samples": [m, m * 1.2]}
                     for i, m in enumerate(minima)]


def test_few_rounds_cannot_pass_a_2x_slowdown_silently(base):
    from sabench.stats import ratio_interval

    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ra, rb = _rec(a, "cla:2", 1, 128, "prefill"), _rec(b, "cla:2", 1, 128, "prefill")
    _set_rounds(ra, [1.0, 1.1])
    _set_rounds(rb, [2.0, 2.2])
    res = check(a, b)  # 2 a side: named as not judged, never passed
    assert ("cla:2", 1, 128, "prefill") in res.unjudged
    assert "prefill cla:2 b=1 s=128" in res.to_text() and "NOT judged" in res.to_text()
    # with 3 a side the 2x slowdown's interval (Bonferroni: half of alpha over 32 points) clears 1.05
    _set_rounds(ra, [1.0, 1.05, 1.1])
    _set_rounds(rb, [2.0, 2.1, 2.2])
    res = check(a, b)
    assert res.exit_code == 1 and res.judged == 33
    f = next(f for f in res.regressions if f.key == ("cla:2", 1, 128, "prefill"))
    ref = ratio_interval([1.0, 1.05, 1.1], [2.0, 2.1, 2.2], confidence=1 - 0.025 / 33)
    assert (f.estimate.low, f.estimate.high) == pytest.approx((ref.low, ref.high))
    assert str(ref) in res.to_text()


def test_missing_point_and_new_error_are_regressions(tmp_path, capsys, base):
    cur = copy.deepcopy(base)
    gone = _rec(cur, "cla:2", 4, 512, "decode")
    cur["records"].remove(gone)
    code, out, _ = _run(tmp_path, capsys, base, cur)
    assert code == 1 and "decode cla:2 b=4 s=512" in out and "missing" in out
    code, out, _ = _run(tmp_path, capsys, base, cur, "--allow-missing")
    assert code == 0 and "only in the baseline" in out

    cur = copy.deepcopy(base)
    oom = next(r for r in base["records"] if r["status"] == "oom")
    key = (oom["variant"], oom["batch_size"], oom["seq_len"], oom["phase"])
    r = _rec(cur, *key)
    r.update(status="error", error="RuntimeError: boom")
    res = check(base, cur)
    assert res.exit_code == 1 and [f.key for f in res.regressions] == [key]


def test_large_but_not_significant_change_is_unchanged(base):
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ra, rb = _rec(a, "cla:2", 1, 128, "prefill"), _rec(b, "cla:2", 1, 128, "prefill")
    _set_rounds(ra, [1.0, 2.0, 3.0, 4.0, 5.0])
    _set_rounds(rb, [1.25, 2.5, 3.75, 5.0, 6.25])  # +25%, overlapping widely
    res = check(a, b)
    assert res.exit_code == 0
    assert any("too wide to tell" in n and "prefill cla:2 b=1 s=128" in n for n in res.notes)


def test_markdown_and_github_step_summary(tmp_path, monkeypatch, base):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    cur = scale_timings(base, 1.25, variant="cla:2", phase="decode")
    md_path = tmp_path / "comment.md"
    res = check(base, cur, markdown=md_path)
    md = md_path.read_text()
    assert md.startswith("FAIL: 6 regression(s) (6 slower beyond 5%)")
    first, rest = md.split("\n", 1)
    assert "| decode cla:2 b=4 s=512" in rest and "1.25× [" in rest
    assert "| decode cla:2 b=4 s=512" in md
    assert summary.read_text() == "earlier step\n" + md + "\n"
    assert res.exit_code == 1


@pytest.mark.parametrize("text,value", [("5%", 0.05), ("0.05", 0.05), ("5", 0.05), ("12.5%", 0.125),
                                        ("1", 1.0), ("0", 0.0), (0.1, 0.1)])
def test_parse_threshold(text, value):
    assert parse_threshold(text) == pytest.approx(value)


def test_threshold_is_applied(tmp_path, capsys, base):
    cur = scale_timings(base, 1.25, variant="cla:2", phase="decode")
    code, _, _ = _run(tmp_path, capsys, base, cur, "--threshold", "30%")
    assert code == 0
    code, _, err = _run(tmp_path, capsys, base, cur, "--threshold", "lots")
    assert code == 2 and "bad threshold" in err


def test_bad_inputs_exit_2(tmp_path, capsys, base):
    good = write_results(base, tmp_path / "good")
    assert main(["check", str(good), str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err

    wrong = tmp_path / "wrong" / "results.json"
    wrong.parent.mkdir()
    wrong.write_text(json.dumps({**base, "schema": "sabench-results/0"}))
    assert main(["check", str(good), str(wrong)]) == 2
    assert "schema" in capsys.readouterr().err

    other = write_results(make_results(variants=("cla:4",)), tmp_path / "other")
    assert main(["check", str(good), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sabench: error:") and "share no" in err

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["check", str(broken), str(good)]) == 2


def test_check_api_raises_results_error(base, tmp_path):
    with pytest.raises(ResultsError):
        check(base, tmp_path / "nothing")


def test_check_on_1000_records(tmp_path):
    big = with_rounds(big_results(seed=5), rounds=5, seed=5, drift_sd=0.01, round_sd=0.005, step_sd=0.005)
    a = write_results(big, tmp_path / "a")
    b = write_results(scale_timings(big, 1.25, variant="cla:3"), tmp_path / "b")
    res = check(a, b)  # its speed is benchmarks/report_speed.py's business, not a test's
    assert res.exit_code == 1 and len(res.regressions) == 200


def test_device_peak_changes_are_listed_not_gated_and_only_between_like_sources(tmp_path, capsys, base):
    cur = copy.deepcopy(base)
    _rec(cur, "cla:2", 4, 512, "decode")["memory_bytes"]["device_peak"] *= 1.5
    other = _rec(cur, "cla:2", 1, 128, "decode")
    other["memory_bytes"]["device_peak"] *= 3
    other["memory_source"] = "nvml-device"  # another source: never compared
    code, out, _ = _run(tmp_path, capsys, base, cur)
    assert code == 0  # memory is listed, not gated
    listed = out.split("Device peak memory changes beyond the threshold (one reading each, not gated) (1):")[1]
    assert "decode cla:2 b=4 s=512" in listed and "device_peak (nvml-process)" in listed and "+50.0%" in listed
    assert "decode cla:2 b=1 s=128: device peak not compared (nvml-process vs nvml-device)" in out

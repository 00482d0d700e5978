"""Shards of a suite's grid (--shard i/N) and merging their runs (sabench merge)."""
import itertools
import json
import random
from pathlib import Path

import pytest

from sabench.cli import main
from sabench.harness.shard import Shard, assign, parse_shard, point_cost, shard_points
from sabench.suite import load_suite
from tests.helpers import tiny_suite, write_suite


def _all_shards(points, n, cost):
    return [shard_points(points, i, n, cost) for i in range(1, n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 40])
def test_shards_are_disjoint_cover_everything_and_keep_suite_order(n):
    rng = random.Random(n)
    points = [(f"v{i}", rng.randint(1, 9)) for i in range(23)]
    costs = {p: rng.uniform(0, 100) for p in points}
    shards = _all_shards(points, n, costs.__getitem__)
    flat = [p for s in shards for p in s]
    assert sorted(flat) == sorted(points) and len(flat) == len(set(flat))
    for s in shards:  # each shard keeps the suite's order (OOM skips rely on ascending seq_len)
        assert s == [p for p in points if p in s]
    assert shards == _all_shards(list(points), n, dict(costs).__getitem__)  # same on every call


def test_lpt_bound_the_fullest_and_emptiest_shard_differ_by_at_most_the_costliest_point():
    rng = random.Random(7)
    for trial in range(200):
        costs = [rng.choice([rng.uniform(0, 1), rng.uniform(0, 1000)]) for _ in range(rng.randint(1, 30))]
        n = rng.randint(1, 9)
        where = assign(costs, n)
        loads = [sum(c for c, s in zip(costs, where) if s == k) for k in range(n)]
        assert max(loads) - min(loads) <= max(costs) + 1e-9
        # and within 4/3 of the best split (brute force on small cases)
        if len(costs) <= 7 and n <= 3:
            best = min(max(sum(c for c, s in zip(costs, a) if s == k) for k in range(n))
                       for a in itertools.product(range(n), repeat=len(costs)))
            assert max(loads) <= (4 / 3 - 1 / (3 * n)) * best + 1e-9


def test_equal_costs_split_counts_within_one_and_ties_go_to_the_lower_shard():
    assert assign([1.0] * 7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert assign([5, 1, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1, 1]
    assert assign([5, 1, 1, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1, 1, 0]  # 5 vs 5: the lower shard


def test_costly_points_are_spread_not_stacked():
    pts = list(range(8))
    cost = {0: 100, 1: 100, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}.__getitem__
    a, b = _all_shards(pts, 2, cost)
    assert (0 in a) != (1 in a) and len(a) == len(b) == 4


@pytest.mark.parametrize("text,want", [("1/2", Shard(1, 2)), (" 8/8 ", Shard(8, 8)), ("1/1", Shard(1, 1))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "2", "a/b", "-1/2", "1/2/3", ""])
def test_bad_shard_values_exit_2_with_a_message(text, tmp_path, capsys):
    with pytest.raises(ValueError):
        parse_shard(text)
    assert main(["run", "smoke", "--shard", text, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sabench: error: ") and "--shard" in err and "\n" == err[-1] and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_point_cost_is_analytic_flops_and_grows_with_size():
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml")
    cost = point_cost(suite)
    pts = suite.points()
    by = {(p.variant, p.batch_size, p.seq_len): cost(p) for p in pts}
    assert by[("baseline", 4, 128)] > by[("baseline", 1, 128)] > by[("baseline", 1, 32)] > 0
    assert by[("cla:2", 1, 32)] < by[("baseline", 1, 32)]  # CLA computes fewer K/V projections


# ---------------------------------------------------------------------------- merge, end to end

SUITE = tiny_suite("shardmini", variants=("baseline", "cla:2"), batch_sizes=(1,), decode_tokens=2, warmup=0,
                   repeats=1)
DETERMINISTIC = ("params", "kv_cache_bytes", "bytes_moved", "status")


def _figures(out):
    recs = json.loads((Path(out) / "results.json").read_text())["records"]
    return {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]):
            ({k: r.get(k) for k in DETERMINISTIC}, r["flops"]["analytic"], r["flops"].get("counted"))
            for r in recs}


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    suite = write_suite(tmp, SUITE, "shardmini.yaml")
    rcs = [main(["run", str(suite), "--out", str(tmp / name), "--no-report", *extra])
           for name, extra in (("whole", []), ("s1", ["--shard", "1/2"]), ("s2", ["--shard", "2/2"]))]
    assert rcs == [0, 0, 0]
    return tmp


def test_each_shard_records_itself_and_holds_half_the_points(shard_runs):
    s1 = json.loads((shard_runs / "s1" / "results.json").read_text())
    s2 = json.loads((shard_runs / "s2" / "results.json").read_text())
    assert s1["shard"] == {"index": 1, "count": 2} and s2["shard"] == {"index": 2, "count": 2}
    p1 = {(r["variant"], r["seq_len"]) for r in s1["records"]}
    p2 = {(r["variant"], r["seq_len"]) for r in s2["records"]}
    assert len(p1) == len(p2) == 2 and not p1 & p2
    assert "shard" not in json.loads((shard_runs / "whole" / "results.json").read_text())


def test_merged_shards_equal_the_unsharded_run_in_points_and_deterministic_figures(shard_runs, capsys):
    out = shard_runs / "merged"
    assert main(["merge", str(shard_runs / "s2"), str(shard_runs / "s1"), "--out", str(out)]) == 0
    assert _figures(out) == _figures(shard_runs / "whole")
    assert len(_figures(out)) == 8
    merged = json.loads((out / "results.json").read_text())
    assert [m["shard"] for m in merged["merged"]] == [{"index": 2, "count": 2}, {"index": 1, "count": 2}]
    assert "shard" not in merged
    assert (out / "report.md").read_text().startswith("# sabench report: shardmini\n\n8 measurements (8 ok)")
    assert [(r["variant"], r["seq_len"], r["phase"]) for r in merged["records"]] == [
        (v, s, ph) for v in ("baseline", "cla:2") for s in (16, 32) for ph in ("prefill", "decode")]
    assert "4 of 4 points" in capsys.readouterr().err
    from sabench import history
    assert history.list_suites(None) == [("shardmini", 1)]  # the merged run, once


def test_a_shard_run_with_its_report_is_not_recorded_in_the_history(shard_runs, tmp_path):
    from sabench import history
    out = tmp_path / "s1"
    assert main(["run", str(shard_runs / "shardmini.yaml"), "--shard", "1/4", "--out", str(out)]) == 0
    assert (out / "report.md").read_text().startswith("# sabench report: shardmini\n")
    assert not history.resolve_db(None).exists()


def test_a_missing_shard_is_named_exit_1_and_the_rest_is_still_written(shard_runs, capsys):
    out = shard_runs / "half"
    assert main(["merge", str(shard_runs / "s1"), "--out", str(out), "--no-report"]) == 1
    err = capsys.readouterr().err
    missing = [p for p in ("baseline b=1 s=16", "baseline b=1 s=32", "cla:2 b=1 s=16", "cla:2 b=1 s=32")
               if p in err]
    assert len(missing) == 2 and "2 of 4 points missing" in err and "shards not given: 2/2" in err
    assert len(_figures(out)) == 4
    strict = shard_runs / "strict"
    assert main(["merge", str(shard_runs / "s1"), "--out", str(strict), "--complete"]) == 1
    assert not strict.exists()


def _edit(src: Path, dst: Path, change):
    data = json.loads((src / "results.json").read_text())
    change(data)
    dst.mkdir()
    (dst / "results.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("what,change,field", [
    ("suite", lambda d: d["suite"].update(name="other"), "suite.name: 'shardmini' vs 'other'"),
    ("sweep", lambda d: d["suite"]["sweep"].update(seq_len=[16, 64]), "suite.sweep.seq_len: [16, 32] vs [16, 64]"),
    ("model", lambda d: d["suite"]["model_config"].update(num_layers=6), "suite.model_config.num_layers: 4 vs 6"),
    ("commit", lambda d: d["env"].update(git_commit="deadbeef"), "env.git_commit"),
    ("count", lambda d: d.update(shard={"index": 2, "count": 3}), "shard.count: 2 vs 3"),
    ("twice", lambda d: d.update(shard={"index": 1, "count": 2}), "shard 1/2 is given twice"),
    ("unsharded", lambda d: d.pop("shard"), "is not a shard run"),
])
def test_shards_of_different_runs_are_refused_naming_the_field(shard_runs, tmp_path, capsys, what, change, field):
    other = _edit(shard_runs / "s2", tmp_path / what, change)
    assert main(["merge", str(shard_runs / "s1"), str(other), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sabench: error: merge: ") and field in err, err
    assert not (tmp_path / "out").exists()


def test_a_point_in_two_shards_is_kept_once_if_identical_and_refused_if_not(shard_runs, tmp_path, capsys):
    def overlap(d):  # s2 claims s1's records too
        d["records"] += json.loads((shard_runs / "s1" / "results.json").read_text())["records"]
    same = _edit(shard_runs / "s2", tmp_path / "same", overlap)
    assert main(["merge", str(shard_runs / "s1"), str(same), "--out", str(tmp_path / "o1"), "--no-report"]) == 0
    assert _figures(tmp_path / "o1") == _figures(shard_runs / "whole")

    def differ(d):
        overlap(d)
        d["records"][-1]["params"] += 1
    bad = _edit(shard_runs / "s2", tmp_path / "bad", differ)
    assert main(["merge", str(shard_runs / "s1"), str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "with different results" in capsys.readouterr().err


def test_merge_refuses_an_out_that_holds_a_run(shard_runs, capsys):
    assert main(["merge", str(shard_runs / "s1"), "--out", str(shard_runs / "s2")]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_must_continue_the_same_shard(shard_runs, capsys):
    suite = shard_runs / "shardmini.yaml"
    assert main(["run", str(suite), "--out", str(shard_runs / "s1"), "--resume", "--shard", "2/2"]) == 2
    assert "holds shard 1/2, this run asks for shard 2/2" in capsys.readouterr().err

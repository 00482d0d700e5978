"""`sabench run` on a tensor-parallel suite (TP-2 over gloo on the CPU) against the same suite at TP-1.

One TP-2 run (6 points, each 2 rank processes) and one TP-1 run serve every test here; two of the
TP-2 points fail on purpose on rank 1 (a segfault, an out-of-memory error) and the run goes on.
"""
import json
import re
import signal
from pathlib import Path

import pytest

from sabench import accounting
from sabench.cli import main
from sabench.harness.faults import FAULT_ENV, KILL_ENV
from sabench.presets import resolve_config
from tests.helpers import tiny_suite

SUITE = tiny_suite("tp", batch_sizes=(1,), seq_lens=(8, 16), decode_tokens=2, warmup=0, repeats=2) + "threads: 2\n"
TP2 = SUITE + "parallel:\n  tensor: 2\n"
DECODE_TOKENS, DTYPE_BYTES = 2, 4
FAILING = {("cla:2", 16): ("error", "rank 1 of 2 died of SIGSEGV"),
           ("sa:2-3", 16): ("oom", "rank 1 of 2, building the model: OutOfMemoryError: out of memory (injected")}


def _records(out) -> dict:
    data = json.loads((Path(out) / "results.json").read_text())
    return {(r["variant"], r["seq_len"], r["phase"]): r for r in data["records"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    (tmp / "tp1.yaml").write_text(SUITE)
    (tmp / "tp2.yaml").write_text(TP2)
    mp = pytest.MonkeyPatch()
    rc1 = main(["run", str(tmp / "tp1.yaml"), "--out", str(tmp / "tp1"), "--no-report"])
    mp.setenv(KILL_ENV, "cla:2|1|16@SIGSEGV")
    mp.setenv(FAULT_ENV, "sa:2-3|1|16")
    try:
        rc2 = main(["run", str(tmp / "tp2.yaml"), "--out", str(tmp / "tp2")])
    finally:
        mp.undo()
    return {"rc1": rc1, "rc2": rc2, "tp1": tmp / "tp1", "tp2": tmp / "tp2", "tmp": tmp}


def test_every_point_is_measured_and_failing_ranks_fail_only_their_point(runs):
    assert runs["rc1"] == 0
    assert runs["rc2"] == 1  # the segfaulted rank's point is an error round; the run finished
    recs = _records(runs["tp2"])
    assert len(recs) == 12
    for (variant, seq, phase), r in recs.items():
        want = FAILING.get((variant, seq))
        if want is None:
            assert r["status"] == "ok", r.get("error")
            assert r["latency_ms"]["median"] > 0
        else:
            assert r["status"] == want[0] and r["error"].startswith(want[1]), r["error"]
        assert r["tensor_parallel"]["world"] == 2


def test_totals_equal_the_tp1_run_and_each_rank_holds_half_the_cache(runs):
    tp1, tp2 = _records(runs["tp1"]), _records(runs["tp2"])
    cfg = resolve_config("tiny")
    per_layer = 2 * 1 * (8 + DECODE_TOKENS) * cfg.num_kv_heads * cfg.head_dim * DTYPE_BYTES  # K and V, B=1
    closed_form = {"baseline": cfg.num_layers * per_layer, "cla:2": cfg.num_layers // 2 * per_layer}
    for variant in ("baseline", "cla:2", "sa:2-3"):
        for phase in ("prefill", "decode"):
            a, b = tp1[(variant, 8, phase)], tp2[(variant, 8, phase)]
            for key in ("params", "kv_cache_bytes", "bytes_moved"):
                assert b[key] == a[key], (variant, phase, key)
            assert b["flops"]["analytic"] == a["flops"]["analytic"]
            ranks = b["tensor_parallel"]["ranks"]
            assert [r["rank"] for r in ranks] == [0, 1]
            full_cache = a["memory_breakdown"]["kv_cache"]  # the TP-1 point's cache, as allocated
            assert all(2 * r["kv_cache_bytes"] == full_cache for r in ranks)
            if variant in closed_form:
                assert full_cache == closed_form[variant] and ranks[0]["kv_cache_bytes"] == closed_form[variant] // 2
            assert b["latency_ms"]["median"] == ranks[0]["latency_median_ms"]  # rank 0 times the point
            if phase == "decode":  # tokens/s from rank 0's median, as at TP-1 (batch 1)
                assert b["tokens_per_s"] == pytest.approx(1 / (b["latency_ms"]["median"] / 1e3), rel=1e-12)
            assert all(r["memory_bytes"]["device_peak"] > 0 for r in ranks)


def test_the_floor_is_one_ranks_with_the_link_as_inspect_tp(runs):
    data = json.loads((runs["tp2"] / "results.json").read_text())
    peaks = {k: data["env"][k] for k in ("peak_flops_per_s", "peak_bandwidth_bytes_per_s")}
    r = _records(runs["tp2"])[("baseline", 8, "prefill")]
    summary = accounting.tp_summary("tiny", "baseline", 1, 8, "float32", 2, None, None, peaks)
    floor = summary["floors_ms"]["prefill"]
    assert r["floor_ms"] == pytest.approx(floor["floor_ms"], rel=1e-9)
    assert r["tensor_parallel"]["link_ms"] == pytest.approx(floor["link_ms"], rel=1e-9)
    per_rank = summary["per_rank"]
    assert r["mfu"] == pytest.approx(per_rank["flops"]["prefill"] / (r["latency_ms"]["median"] / 1e3)
                                     / peaks["peak_flops_per_s"], rel=1e-9)
    assert r["tensor_parallel"]["link_bytes"] == per_rank["link_bytes"]["prefill"] > 0


def test_report_check_and_compare_of_tp2_against_tp1(runs, capsys):
    report = (runs["tp2"] / "report.md").read_text()
    assert "Tensor-parallel run: every point ran on 2 ranks (2×cpu TP-2). Latency, tokens/s and memory are rank 0's" \
        in report
    # every point ok in the TP-2 run is ok in the TP-1 run, with the same params, KV bytes and FLOPs
    assert main(["check", str(runs["tp2"]), str(runs["tp1"]), "--timings", "off"]) == 0
    out = runs["tmp"] / "cmp"
    assert main(["compare", str(runs["tp1"]), str(runs["tp2"]), "--out", str(out)]) == 0
    md = next(out.glob("*.md")).read_text()
    assert re.search(r"\|\s*topology \(GPUs per point\)\s*\|\s*1×cpu\s*\|\s*2×cpu TP-2\s*\|", md), md[:3000]


@pytest.mark.parametrize("failures, written, status, error", [
    ([(0, 1, "exit 1"), (1, -signal.SIGKILL, "Signal 9 (SIGKILL)")], None, "oom",
     "rank 1 of 2 killed by SIGKILL from the kernel's OOM killer"),  # a signal first; the oom_kill count rose
    ([(1, -signal.SIGTERM, "Signal 15")], None, "killed", "rank 1 of 2 killed by SIGTERM"),
    ([(0, 1, "RuntimeError: gloo broke"), (1, 1, "x")], {"rank": 1, "phase": "decode", "status": "oom",
                                                         "error": "OutOfMemoryError: out of memory", "t": 1.0},
     "oom", "rank 1 of 2, decode: OutOfMemoryError: out of memory"),  # the rank's own failure, not the collective's
    ([(0, 1, "Traceback (most recent call last):\nImportError: no module")], None, "error",
     "rank 0 of 2 exited with code 1: ImportError: no module"),
])
def test_a_failed_rank_is_classified_as_a_point_process_is(tmp_path, failures, written, status, error):
    from sabench.harness.ranks import TPLaunchError
    from sabench.harness.tp_point import rank_failure

    if written:
        (tmp_path / "failure-rank1.json").write_text(json.dumps(written))
    got = rank_failure(TPLaunchError("failed", failures), tmp_path, 2, (1, 2))
    assert got["status"] == status and got["error"].startswith(error), got


def test_an_impossible_degree_is_refused_before_anything_runs(tmp_path, capsys):
    suite = tmp_path / "tp4.yaml"
    suite.write_text(SUITE + "parallel:\n  tensor: 4\n")  # tiny has 2 KV heads
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be split over 4 tensor-parallel ranks" in err[0]
    assert not (tmp_path / "out").exists()


def test_devices_is_refused_on_a_tensor_parallel_suite(tmp_path, capsys):
    suite = tmp_path / "tp2.yaml"
    suite.write_text(TP2)
    assert main(["run", str(suite), "--devices", "0,1", "--out", str(tmp_path / "out")]) == 2
    assert "drop --devices" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_cuda_suite_needs_a_gpu_per_rank(tmp_path, monkeypatch):
    from sabench.errors import UserError
    from sabench.harness.tp_point import check_run
    from sabench.suite import load_suite

    suite = tmp_path / "tp2.yaml"
    suite.write_text(TP2.replace("device: cpu", "device: cuda"))
    monkeypatch.setattr("sabench.devices.gpu_count", lambda: 1)
    with pytest.raises(UserError, match="2 ranks need 2 GPUs, 1 visible here"):
        check_run(load_suite(suite), "cuda")
    assert "share this machine's cores" in check_run(load_suite(suite), "cpu")


"""The memory model against real absolute peaks, capacity at equal memory, inspect --memory, and
a suite's `batch_size: max` resolved, run and stepped down on (injected) OOM."""
import json
from pathlib import Path

import pytest

from sabench import accounting, memory_model as mm
from sabench.cli import main
from sabench.harness.faults import FAULT_ENV
from sabench.records import SCHEMA, RunRecord
from sabench.suite import SuiteError, parse_suite
from sabench.units import parse_size

DATA = Path(__file__).parent / "data" / "h100_h200_memory_2026-11-22.json"
GiB = 2 ** 30
TOLERANCE = 0.04  # worst measured error of the model on these runs: 3.3% (8B b=1 s=8192 prefill)


def _points():
    runs = json.loads(DATA.read_text())["runs"]
    return [(run, p) for run in runs for p in run["points"]]


def test_predicts_every_measured_absolute_peak_within_tolerance():
    """H100 (8B and 1B) and H200 (1B), torch 2.11+cu130: NVML's per-process peak of every phase
    that ran (weights, cache, activations, allocator caching and CUDA context all included)."""
    n, total_err = 0, 0.0
    for run, p in _points():
        if p["status"] != "ok":
            continue
        pred = mm.predict(run["model"], p["variant"], run["dtype"], p["batch_size"], p["seq_len"],
                          run["decode_tokens"], run["prefill_chunk"])[p["phase"]]
        measured = p["memory_bytes"]["peak_nvml_process"]
        err = pred.total / measured - 1
        assert abs(err) < TOLERANCE, (run["file"], p, pred.to_dict(), measured)
        # what must fit (live tensors + context) never exceeds what the driver saw
        assert pred.needed <= measured * (1 + TOLERANCE)
        n, total_err = n + 1, total_err + abs(err)
    assert n == 70  # 24 phases of 8B, 46 of 1B (H100 and H200)
    assert total_err / n < 0.01  # measured: 0.6% mean absolute error


@pytest.mark.parametrize("fit_model", ["llama-3.1-8b", "llama-3.2-1b"])
def test_context_fitted_on_one_model_predicts_the_other(fit_model, monkeypatch):
    """Held out: the CUDA context (NVML peak minus allocator reserve) fitted on one model's runs only
    predicts every absolute peak of the other model's shapes within the tolerance."""
    import statistics

    fit = [p for run, p in _points() if run["model"] == fit_model and p["status"] == "ok"]
    ctx = {ph: int(statistics.median(p["memory_bytes"]["peak_nvml_process"] - p["memory_bytes"]["peak_reserved"]
                                     for p in fit if p["phase"] == ph)) for ph in ("prefill", "decode")}
    monkeypatch.setattr(mm, "CUDA_CONTEXT_BYTES", ctx)
    held_out = [(run, p) for run, p in _points() if run["model"] != fit_model and p["status"] == "ok"]
    assert len(held_out) >= 20
    for run, p in held_out:
        pred = mm.predict(run["model"], p["variant"], run["dtype"], p["batch_size"], p["seq_len"],
                          run["decode_tokens"], run["prefill_chunk"])[p["phase"]]
        assert abs(pred.total / p["memory_bytes"]["peak_nvml_process"] - 1) < TOLERANCE, (run["file"], p)


def test_the_points_that_ran_out_of_memory_are_predicted_not_to_fit():
    for run, p in _points():
        needed = mm.predict(run["model"], p["variant"], run["dtype"], p["batch_size"], p["seq_len"],
                            run["decode_tokens"], run["prefill_chunk"])[p["phase"]].needed
        if p["status"] == "oom":
            assert needed > run["memory_total_bytes"], p
        else:
            assert needed <= run["memory_total_bytes"], p


def test_sa_probs_prefill_peak_is_the_materialised_softmax():
    """1B sa:8-15 b=16 s=4096 on the H200: P of 16 x 32 x 4096 x 4096 in bf16 plus its two
    float32 copies (ops.attn_probs) is 80 GiB of the 80.8 GiB the allocator saw."""
    pred = mm.predict("llama-3.2-1b", "sa:8-15", "bfloat16", 16, 4096, 32, 4096)["prefill"]
    p_elems = 16 * 32 * 4096 * 4096
    assert p_elems * 10 <= pred.activations_live < p_elems * 10 + 1 * GiB
    base = mm.predict("llama-3.2-1b", "baseline", "bfloat16", 16, 4096, 32, 4096)["prefill"]
    assert base.activations_live < 4 * GiB


def test_recompute_strategy_keeps_prefill_activations_linear():
    from tests.test_bytes_moved import _plan
    from sabench.presets import resolve_config

    plan = _plan(resolve_config("llama-3.1-8b"), "sa:23-30", "recompute")
    rec = mm.predict("llama-3.1-8b", plan, "bfloat16", 1, 32768)["prefill"]
    base = mm.predict("llama-3.1-8b", "baseline", "bfloat16", 1, 32768)["prefill"]
    probs = mm.predict("llama-3.1-8b", "sa:23-30", "bfloat16", 1, 32768)["prefill"]
    assert rec.activations_live < 1.1 * base.activations_live < probs.activations_live / 10


@pytest.mark.parametrize("text,want", [("80GiB", 80 * GiB), ("16 GB", 16 * 10 ** 9), ("512MiB", 512 * 2 ** 20),
                                       ("1.5KiB", 1536), ("1TB", 10 ** 12), ("2TiB", 2 * 2 ** 40),
                                       ("85520809984", 85520809984), ("100B", 100), ("1kb", 1000)])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["80GX", "", "-1GiB", "GiB", "0", "1e9", "eighty"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="bad memory size"):
        parse_size(text)


def _capacity(capsys, *args):
    assert main(["inspect", "--model", "llama-3.1-8b", "--json", *args, "--variant", "baseline",
                 "--variant", "cla:2", "--variant", "sa:23-30"]) == 0
    return {r["variant"]: r["capacity"] for r in json.loads(capsys.readouterr().out)}


def test_inspect_capacity_at_equal_memory(capsys):
    cap = _capacity(capsys, "--seq-len", "32768", "--memory", "80GiB")
    base, cla, sa = (cap[v]["max_batch"] for v in ("baseline", "cla:2", "sa:23-30"))
    assert cap["baseline"]["memory_bytes"] == 80 * GiB
    # ~15 GiB of weights and ~4 GiB of cache per sequence (32768 + 1 positions x 128 KiB)
    weights = accounting.params("llama-3.1-8b") * 2
    per_seq = accounting.kv_cache_bytes("llama-3.1-8b", "baseline", 1, 32769, "bfloat16")
    assert 14.9 * GiB < weights < 15 * GiB and 4 * GiB < per_seq < 4.01 * GiB
    assert base == int((80 * GiB - weights) // per_seq) or base == int((80 * GiB - weights) // per_seq) - 1
    assert abs(cla / base - 2) < 0.1
    assert abs(sa / base - 1 / 0.875) < 0.1
    # SA's materialised P needs small prefill blocks to reach that batch
    assert cap["sa:23-30"]["prefill_chunk"] < cap["baseline"]["prefill_chunk"]
    # with the suites' 4096-token blocks P alone (40 GiB a sequence in bf16 + float32) caps SA at 1
    fixed = _capacity(capsys, "--seq-len", "32768", "--memory", "80GiB", "--prefill-chunk", "4096")
    assert fixed["sa:23-30"]["max_batch"] == 1 and fixed["baseline"]["max_batch"] < base
    assert fixed["baseline"]["prefill_chunk"] == 4096


def test_inspect_capacity_zero_when_weights_do_not_fit_and_bad_memory_is_exit_2(capsys):
    cap = _capacity(capsys, "--memory", "10GiB")
    assert all(c["max_batch"] == 0 and c["max_seq_len_at_batch_1"] == 0 for c in cap.values())
    assert main(["inspect", "--model", "tiny", "--memory", "80GX"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad memory size" in err
    assert main(["inspect", "--model", "tiny", "--memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "max batch (1 GiB" in out and "max seq_len at B=1" in out


def test_max_seq_len_at_batch_1_is_the_longest_that_fits():
    mem = 25 * GiB
    t = mm.max_seq_len("llama-3.1-8b", "baseline", "bfloat16", mem)
    assert 0 < t < 131071
    assert mm.needed_bytes("llama-3.1-8b", "baseline", "bfloat16", 1, t, 1, 1) <= mem
    assert mm.max_batch("llama-3.1-8b", "baseline", "bfloat16", t + 1, mem)[0] == 0
    assert mm.max_batch("llama-3.1-8b", "baseline", "bfloat16", t, mem)[0] == 1


def test_suite_max_and_memory_validation():
    base = dict(name="x", model="tiny", variants=["baseline"], sweep={"batch_size": [8, "max", 1], "seq_len": [32]})
    s = parse_suite(dict(base, memory="16GiB"))
    assert s.batch_sizes == (1, 8, "max") and s.memory == 16 * GiB
    assert [p.batch_size for p in s.points()] == [1, 8, "max"]
    assert s.to_dict()["sweep"]["batch_size"] == [1, 8, "max"]
    for bad, where in ((["maxx"], "sweep.batch_size[0]"), ([1, "max", "max"], "sweep.batch_size[2]")):
        with pytest.raises(SuiteError, match=where.replace("[", r"\[").replace("]", r"\]")):
            parse_suite(dict(base, sweep={"batch_size": bad, "seq_len": [32]}))
    with pytest.raises(SuiteError, match="memory: bad memory size"):
        parse_suite(dict(base, memory="lots"))


SUITE = """\
name: maxrun
model: tiny
dtype: float32
device: cpu
variants: [baseline, "cla:2"]
sweep:
  batch_size: [1, {explicit}, max]
  seq_len: [32]
decode_tokens: 2
rounds: 1
warmup: 0
repeats: 2
memory: {memory}
"""


def test_max_batch_is_predicted_run_and_stepped_down_on_oom(tmp_path, monkeypatch):
    mem = mm.needed_bytes("tiny", "baseline", "float32", 6, 32, 2, None, "cpu")
    predicted = mm.max_batch("tiny", "baseline", "float32", 32, mem, 2, None, "cpu")[0]
    assert predicted == 6
    cla = mm.max_batch("tiny", "cla:2", "float32", 32, mem, 2, None, "cpu")[0]
    assert cla > predicted
    suite = tmp_path / "maxrun.yaml"
    suite.write_text(SUITE.format(memory=mem, explicit=cla))  # cla:2's max is also listed
    monkeypatch.setenv(FAULT_ENV, "baseline|6|32,baseline|5|32")  # 6 -> 5 (6*7//8) -> 4
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    recs = [r for r in data["records"] if r.get("batch_request") == "max"]
    base = [r for r in recs if r["variant"] == "baseline"]
    assert [(r["batch_size"], r["status"]) for r in base if r["phase"] == "decode"] == [(6, "oom"), (5, "oom"), (4, "ok")]
    final = [r for r in base if "max_attempts" in r]
    assert [r["phase"] for r in final] == ["prefill", "decode"]
    assert final[0]["max_attempts"] == [{"batch_size": 6, "status": "oom"}, {"batch_size": 5, "status": "oom"},
                                        {"batch_size": 4, "status": "ok"}]
    assert all(r["predicted_max_batch"] == 6 and r["memory_budget_source"] == "suite memory" for r in base)
    cla_final = [r for r in recs if r["variant"] == "cla:2" and "max_attempts" in r]
    assert cla_final[0]["batch_size"] == cla and cla_final[0]["status"] == "ok"
    # the explicit point was measured once and annotated, not run again
    assert len([r for r in data["records"] if r["variant"] == "cla:2" and r["batch_size"] == cla]) == 2
    peak_bw = data["env"]["peak_bandwidth_bytes_per_s"]
    for r in data["records"]:  # the roofline reads the per-layer bytes; every record has a prediction
        if r["status"] == "ok" and r["phase"] == "decode":
            step = accounting.decode_step_bytes("tiny", r["variant"], r["batch_size"], 32 + 2, "float32")
            assert r["bytes_moved"] == 2 * step
            assert r["mbu"] == pytest.approx(step / (r["latency_ms"]["median"] / 1e3 * peak_bw))
        elif r["status"] == "ok":
            assert r["bytes_moved"] == accounting.prefill_bytes("tiny", r["variant"], r["batch_size"], 32,
                                                                 "float32")
        assert r["memory_predicted_bytes"]["total"] == sum(r["memory_predicted_bytes"][k] for k in
                                                           ("weights", "kv_cache", "activations", "context"))
    md = (out / "report.md").read_text()
    assert "## At equal memory" in md
    # resuming does not run a resolved max point again
    before = len(data["records"])
    assert main(["run", str(suite), "--out", str(out), "--resume", "--no-report"]) == 0
    assert len(json.loads((out / "results.json").read_text())["records"]) == before


def test_report_section_shows_predicted_beside_measured_device_peak():
    from sabench.report.capacity import equal_memory_section
    from sabench.report.results import index_records

    def rec(v, b, phase, tps, pred, peak, **kw):
        r = {"variant": v, "batch_size": b, "seq_len": 32768, "phase": phase, "status": "ok",
             "tokens_per_s": tps, "latency_ms": {"median": 1.0}, "memory_predicted_bytes": {"total": pred},
             "memory_bytes": {"device_peak": peak}, "memory_source": "nvml_process"}
        return r | kw

    attempts = {"batch_request": "max", "predicted_max_batch": 27, "memory_budget_bytes": 80 * GiB,
                "memory_budget_source": "device total memory"}
    records = [rec("baseline", 1, "decode", 30.0, 20 * GiB, 21 * GiB),
               rec("baseline", 13, "decode", 300.0, 70 * GiB, 72 * GiB,
                   **(attempts | {"predicted_max_batch": 13}), max_attempts=[{"batch_size": 13, "status": "ok"}]),
               rec("cla:2", 26, "decode", 540.0, 70 * GiB, 68 * GiB, **attempts,
                   max_attempts=[{"batch_size": 27, "status": "oom"}, {"batch_size": 26, "status": "ok"}]),
               {"variant": "cla:2", "batch_size": 27, "seq_len": 32768, "phase": "decode", "status": "oom"}]
    results = RunRecord.from_dict({"schema": SCHEMA, "records": records, "suite": {"variants": ["baseline", "cla:2"]},
                                   "env": {"device": "cuda"}})
    md = "\n".join(equal_memory_section(results, index_records(results)))
    assert "## At equal memory" in md and "80 GiB (device total memory)" in md and "decode tok/s per GPU" in md
    row = next(line for line in md.splitlines() if line.startswith("| `cla:2`") and "26" in line)
    assert "2.00×" in row and "1.80×" in row and "predicted 27: 27 oom → 26" in row
    assert "### Predicted vs measured memory" in md and "largest error 4.8%" in md
    assert "-4.8%" in md and "-2.8%" in md and "+2.9%" in md  # 20/21, 70/72, 70/68

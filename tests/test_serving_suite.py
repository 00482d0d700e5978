"""A suite's serving: block: typed, checked with one-line errors, slots at equal memory by the
closed form; `sabench serve` end to end on a few requests, its records and its report."""
import copy
import json

import pytest
import yaml

from sabench import accounting
from sabench.cli import main
from sabench.records import ResultsError
from sabench.records.serving import load_serving
from sabench.serving.metrics import summarize
from sabench.serving.report import ratio_finding, summaries
from sabench.stats import ratio_interval
from sabench.suite import SuiteError, load_suite, parse_suite
from tests.helpers import write_suite

BASE = {"name": "srv", "model": "tiny", "dtype": "float32", "device": "cpu",
        "variants": ["baseline", "cla:2", "sa:2-3"],
        "serving": {"rates": [1000], "requests": 6, "prompt_len": [4, 12], "output_len": 5, "slots": "max",
                    "cache_memory": 4 * 1024 * 16, "targets": {"ttft_ms": 60000, "tpot_ms": 60000}}}


def _suite(**serving):
    d = copy.deepcopy(BASE)
    d["serving"].update(serving)
    d["serving"] = {k: v for k, v in d["serving"].items() if v is not None}
    return parse_suite(d, "s.yaml")


def test_smoke_suite_gives_cla2_twice_the_baseline_slots_at_equal_memory():
    suite = load_suite("suites/serving-smoke.yaml")
    spec, cfg = suite.serving, suite.model_config
    slots = {v: spec.slots_for(cfg, v, suite.dtype) for v in suite.variants}
    assert slots["cla:2"] == 2 * slots["baseline"]
    # the closed form by hand: 2 kv heads x 16 dims x 4 bytes per K or V, 8 tensors (baseline), 4 (cla:2)
    per_token = {"baseline": 2 * 16 * 4 * 8, "cla:2": 2 * 16 * 4 * 4, "sa:2-3": 2 * 16 * 4 * 6}
    for v, n in slots.items():
        assert n == spec.cache_memory // (per_token[v] * spec.max_len)
    assert spec.max_len == 48 + 24 - 1
    assert suite.seq_lens == () and suite.to_dict()["serving"]["slots"] == "max"


def test_fixed_slots_and_closed_loop_parse():
    s = _suite(rates=None, clients=[4, 1], slots=3, cache_memory=None).serving
    assert [ld.clients for ld in s.loads] == [1, 4] and s.slots_for(None, None, "float32") == 3
    assert s.prompt.lo == 4 and s.prompt.hi == 12 and s.output.lo == s.output.hi == 5


@pytest.mark.parametrize("change, key, words", [
    (dict(clients=[2]), "serving", "exactly one of rates"),
    (dict(rates=None), "serving", "exactly one of rates"),
    (dict(rates=[0]), "serving.rates[0]", "rate in requests/s > 0"),
    (dict(rates=[5, 5]), "serving.rates", "twice"),
    (dict(prompt_len=[9, 3]), "serving.prompt_len", "1 <= lo <= hi"),
    (dict(output_len=0), "serving.output_len", "integer in 1"),
    (dict(cache_memory=None), "serving.cache_memory", "required with slots: max"),
    (dict(cache_memory=1000), "serving.cache_memory", "hold no slot of baseline"),
    (dict(slots="all"), "serving.slots", "integer in 1"),
    (dict(targets={"ttft": 5}), "serving.targets.ttft", "unknown key"),
    (dict(targets={"tpot_ms": -1}), "serving.targets.tpot_ms", "milliseconds > 0"),
    (dict(goodput_share=1.5), "serving.goodput_share", "share in (0, 1]"),
    (dict(output_len=5000), "serving.output_len", "positions"),
    (dict(duration=3), "serving.duration", "unknown key"),
])
def test_bad_serving_blocks_are_one_line_errors_naming_the_key(change, key, words):
    with pytest.raises(SuiteError) as e:
        _suite(**change)
    msg = str(e.value)
    assert f"s.yaml: {key}: " in msg and words in msg and "\n" not in msg


def test_run_refuses_a_serving_suite_and_serve_a_sweep_suite(tmp_path, capsys):
    p = write_suite(tmp_path, yaml.safe_dump(BASE))
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "sabench serve" in capsys.readouterr().err
    d = {k: v for k, v in BASE.items() if k != "serving"}
    q = write_suite(tmp_path, yaml.safe_dump(d | {"sweep": {"batch_size": 1, "seq_len": 8}}), "sweep.yaml")
    assert main(["serve", str(q), "--out", str(tmp_path / "o2")]) == 2
    assert "no serving: block" in capsys.readouterr().err
    assert main(["inspect", "--suite", str(p)]) == 0  # no sweep: the scenario's longest prompt


def test_serve_end_to_end_records_and_report(tmp_path):
    d = copy.deepcopy(BASE) | {"variants": ["baseline", "cla:2"], "rounds": 2, "threads": 1}
    p = write_suite(tmp_path, yaml.safe_dump(d))
    out = tmp_path / "out"
    assert main(["serve", str(p), "--out", str(out)]) == 0
    res = load_serving(out)
    assert len(res.runs) == 4 and {r.variant for r in res.runs} == {"baseline", "cla:2"}
    slots = {r.variant: r.slots for r in res.runs}
    assert slots == {"baseline": 4, "cla:2": 8}
    for r in res.runs:
        assert r.cache_bytes == accounting.kv_cache_bytes("tiny", r.variant, r.slots, 12 + 5 - 1, "float32")
        assert len(r.requests) == 6
        for q in r.requests:
            assert q.ttft_s <= q.e2e_s and len(q.token_s) == q.output_len == 5
    # the two variants of a round served the same stream
    by_round = {(r.round, r.variant): r for r in res.runs}
    for rnd in (0, 1):
        a, b = by_round[(rnd, "baseline")], by_round[(rnd, "cla:2")]
        assert [(q.arrival_s, q.prompt_len) for q in a.requests] == [(q.arrival_s, q.prompt_len) for q in b.requests]
    # the report's finding is the paired ratio of the per-round figures recomputed from raw times
    s = summaries(res)
    base = [summarize(by_round[(rnd, "baseline")].requests).output_tokens_per_s for rnd in (0, 1)]
    cand = [summarize(by_round[(rnd, "cla:2")].requests).output_tokens_per_s for rnd in (0, 1)]
    est, _, _ = ratio_finding(s[("baseline", "1000 req/s")], s[("cla:2", "1000 req/s")], "output_tokens_per_s")
    assert est == ratio_interval(base, cand, paired=True, where="output_tokens_per_s")
    report = (out / "report.md").read_text()
    for heading in ("### Goodput and throughput", "### Latency percentiles (ms)", "### Findings",
                    "serving_pareto.png", "baseline 4, cla:2 8"):
        assert heading in report
    # the figure is drawn: 6.4 x 4.4 inches at 100 dpi, cla:2 in the palette's first colour
    import matplotlib.image
    import numpy as np

    png = matplotlib.image.imread(out / "serving_pareto.png")
    assert png.shape[:2] == (440, 640)
    rgb = np.round(png[..., :3] * 255).astype(int)
    assert (rgb == (0x1f, 0x77, 0xb4)).all(-1).any()  # "#1f77b4": cla:2's series (marker, legend)
    # the stream for vLLM: round 0's requests in arrival order, output lengths exact
    lines = [json.loads(x) for x in (out / "vllm" / "rate-1000.jsonl").read_text().splitlines()]
    first = sorted(by_round[(0, "baseline")].requests, key=lambda q: q.arrival_s)
    assert [(len(x["prompt"].split()), x["output_tokens"]) for x in lines] == [(q.prompt_len, 5) for q in first]
    manifest = json.loads((out / "vllm" / "manifest.json").read_text())
    assert "--request-rate 1000" in manifest[0]["command"] and manifest[0]["arrivals_s"] == [q.arrival_s for q in first]
    data = json.loads((out / "serving.json").read_text())
    data["runs"][0]["requests"][0]["token_s"].pop()
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"run 0: requests\[0\].token_s holds 4 times for 5 output tokens"):
        load_serving(tmp_path / "bad.json")
    assert main(["serve", str(p), "--out", str(out)]) == 2  # never overwrites a run


def test_a_burst_served_is_not_a_rate_sustained():
    """32 requests offered at 1000 req/s may all meet loose targets while the server completes
    160 a second: that rate is not sustained. The slower rate it keeps up with is."""
    from types import SimpleNamespace as R

    from sabench.serving.report import sustained_rate

    per_load = {"10 req/s": {0: R(goodput_share=1.0, goodput_rps=9.9), 1: R(goodput_share=1.0, goodput_rps=10.1)},
                "1000 req/s": {0: R(goodput_share=1.0, goodput_rps=157.0), 1: R(goodput_share=1.0, goodput_rps=160.0)}}
    offered = {"10 req/s": 10.0, "1000 req/s": 1000.0}
    assert sustained_rate(per_load, 0.9, offered) == "10 req/s"
    per_load["1000 req/s"] = {0: R(goodput_share=0.95, goodput_rps=990.0)}
    assert sustained_rate(per_load, 0.9, offered) == "1000 req/s"
    per_load["1000 req/s"] = {0: R(goodput_share=0.5, goodput_rps=990.0)}
    assert sustained_rate(per_load, 0.9, offered) == "10 req/s"

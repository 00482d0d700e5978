"""Compiled execution (torch.compile / Inductor) on the CPU: same numbers as eager, one compile
per graph, records that say what ran. A few tests only: each compile costs seconds."""
import json

import numpy as np
import pytest
import torch

from sabench.cli import main
from sabench.model import load_model

VARIANT = "cla:2+sa:2-3/recompute"  # GQA tiny, CLA, and an SA span on the fused path


@pytest.fixture(scope="module")
def pair(inductor_cache):
    eager = load_model("tiny", VARIANT, torch.float32, "cpu", seed=1)
    compiled = load_model("tiny", VARIANT, torch.float32, "cpu", seed=1).set_execution("compiled")
    return eager, compiled


def test_compiled_prefill_and_decode_equal_eager_and_never_recompile(pair):
    from torch._dynamo.utils import counters

    eager, compiled = pair
    ids = torch.randint(0, 512, (2, 21), generator=torch.Generator().manual_seed(0))
    ce, cc = eager.new_cache(2, 32), compiled.new_cache(2, 32)
    with torch.no_grad():
        le, lc = eager.prefill(ids, ce), compiled.prefill(ids, cc)
        assert torch.allclose(lc, le, atol=1e-4, rtol=1e-4)
        tok_e, tok_c = le[:, -1].argmax(-1, keepdim=True), lc[:, -1].argmax(-1, keepdim=True)
        assert torch.equal(tok_e, tok_c)
        pos_e, pos_c = torch.tensor([21]), torch.tensor([21])
        step_e, step_c = eager.greedy_step_fn(ce, tok_e, pos_e), compiled.greedy_step_fn(cc, tok_c, pos_c)
        assert torch.allclose(step_c(), step_e(), atol=1e-4, rtol=1e-4)  # compiles the step
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(6):  # new pos values, same cache object: no guard may fail
                assert torch.allclose(step_c(), step_e(), atol=1e-4, rtol=1e-4)
                assert torch.equal(tok_c, tok_e)
            # a prefill of another length reuses the dynamic graph
            ids2 = ids[:, :13]
            assert torch.allclose(compiled.prefill(ids2, compiled.new_cache(2, 32)),
                                  eager.prefill(ids2, eager.new_cache(2, 32)), atol=1e-4, rtol=1e-4)
            for a, b in zip(cc.tensors(), ce.tensors()):
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
            # generate: new caches of another length, the same compiled graphs
            assert torch.equal(compiled.generate(ids, 5), eager.generate(ids, 5))
        assert counters["stats"]["unique_graphs"] == graphs


def test_serving_runtime_compiled_equals_eager_and_never_recompiles_as_positions_move(pair):
    """The serving step (positions [S]) compiles once: new positions, admissions and releases are
    new tensor values, never new guards."""
    from torch._dynamo.utils import counters

    from sabench.serving.runtime import SlotRuntime

    eager, compiled = pair
    prompts = [torch.randint(0, 512, (t,), generator=torch.Generator().manual_seed(t)) for t in (9, 5, 9)]
    outs = []
    for m in (eager, compiled):
        rt = SlotRuntime(m, slots=2, max_len=16)
        a, fa = rt.admit(prompts[0], 4)
        b, fb = rt.admit(prompts[1], 6)
        seq = [fa, fb]
        for _ in range(3):
            t = rt.step()
            seq += [t[a], t[b]]
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=m is compiled):
            rt.release(a)
            c, fc = rt.admit(prompts[2], 3)  # a prompt length the compiled prefill has seen
            seq.append(fc)
            for _ in range(2):
                t = rt.step()
                seq += [t[c], t[b]]
        assert m is eager or counters["stats"]["unique_graphs"] == graphs
        outs.append(seq)
    assert outs[0] == outs[1]


def test_unknown_execution_is_refused():
    m = load_model("tiny", "baseline", torch.float32, "cpu")
    with pytest.raises(ValueError, match="execution must be one of"):
        m.set_execution("fast")


def test_compiled_point_through_the_runner_says_so(inductor_cache, tmp_path):
    # the shapes of the test above: the worker process loads its compiled graphs from the shared cache
    suite = tmp_path / "c.yaml"
    suite.write_text(f"""\
name: compiled
model: tiny
dtype: float32
device: cpu
execution: eager
variants: ["{VARIANT}"]
sweep: {{batch_size: [2], seq_len: [21]}}
decode_tokens: 11
rounds: 1
warmup: 0
repeats: 2
""")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report", "--execution", "compiled"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["suite"]["execution"] == "compiled"
    assert data["env"]["inductor_cache_dir"] == str(inductor_cache)
    for r in data["records"]:
        assert r["status"] == "ok", r
        assert r["execution"] == "compiled"
        q10, q90 = np.percentile(r["latency_ms"]["samples"], [10, 90])
        assert r["stability"]["p90_over_p10"] == pytest.approx(q90 / q10, rel=1e-6)
        assert r["stability"]["stable"] == (r["stability"]["p90_over_p10"] <= r["stability"]["threshold"])
    modes = {r["phase"]: r.get("prefill_mode") or r.get("decode_mode") for r in data["records"]}
    assert modes == {"prefill": "compiled", "decode": "compiled"}
    dec = next(r for r in data["records"] if r["phase"] == "decode")
    assert "latency_eager_ms" not in dec and len(dec["latency_ms"]["samples"]) == 2 * 11
    (ovh,) = data["overhead"].values()
    assert ovh["compile_s"] > 0 and ovh["compile_s"] == pytest.approx(ovh["first_prefill_s"] + ovh["first_decode_s"])
    from sabench.report import write_report

    md = write_report(out).read_text()
    assert "Execution: compiled." in md and "compiled mode" not in md and "compilation (first calls" in md


def test_layers_of_a_kind_share_one_graph_whatever_the_depth(inductor_cache):
    """Regional compilation: a model 4x deeper, same widths, adds no graph and gives eager's tokens."""
    from torch._dynamo.utils import counters

    from sabench.presets import resolve_config, with_overrides

    # widths no other test compiles, so the first model's graphs are all new
    base = with_overrides(resolve_config("tiny"), hidden_size=48, intermediate_size=96, num_heads=3,
                          num_kv_heads=1, head_dim=16, vocab_size=128)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))

    def run(layers):
        cfg = with_overrides(base, num_layers=layers)
        compiled = load_model(cfg, "baseline", torch.float32, "cpu", seed=2).set_execution("compiled")
        before = counters["stats"]["unique_graphs"]
        out = compiled.generate(ids, 3)
        assert torch.equal(out, load_model(cfg, "baseline", torch.float32, "cpu", seed=2).generate(ids, 3))
        return counters["stats"]["unique_graphs"] - before

    # prefill and decode: first layer (nothing pending), every other layer, head
    assert run(2) == 6
    assert run(8) == 0

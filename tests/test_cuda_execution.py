"""CUDA only (skipped without a GPU): compiled execution, CUDA-graph capture of both phases,
SA recompute on the device, generate's graph path, and a compiled point through the runner."""
import json

import pytest
import torch

from sabench.cli import main
from sabench.measure import CudaGraphStep
from sabench.model import load_model
from tests.helpers import sharpen

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = dict(atol=2e-3, rtol=2e-3)  # float32 on the GPU: different kernels, same math


def _model(variant, dtype=torch.float32, execution="eager"):
    return sharpen(load_model("tiny", variant, dtype, "cuda", seed=2)).set_execution(execution)


def _pair(variant, dtype=torch.float32):
    return _model(variant, dtype), _model(variant, dtype, "compiled")


def _ids(b, t):
    return torch.randint(0, 512, (b, t), generator=torch.Generator().manual_seed(4)).cuda()


@pytest.mark.parametrize("variant", ["baseline", "cla:2+sa:2-3/recompute", "sa:1-2"])
def test_compiled_graphed_decode_equals_eager_and_never_recompiles(variant, inductor_cache):
    eager, compiled = _pair(variant)
    ids = _ids(3, 40)
    with torch.no_grad():
        ce, cc = eager.new_cache(3, 60), compiled.new_cache(3, 60)
        le, lc = eager.prefill(ids, ce), compiled.prefill(ids, cc)
        assert torch.allclose(lc, le, **TOL)
        tok_e, tok_c = (le[:, -1].argmax(-1, keepdim=True) for _ in range(2))
        tok_c = tok_c.clone()
        pos_e, pos_c = torch.tensor([40], device="cuda"), torch.tensor([40], device="cuda")
        step_e = eager.greedy_step_fn(ce, tok_e, pos_e)
        graph = CudaGraphStep(compiled.greedy_step_fn(cc, tok_c, pos_c), device="cuda", warmup_iters=2)
        tok_c.copy_(tok_e)  # the warm-up steps ran ahead: rewind to the eager side's state
        pos_c.copy_(pos_e)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(8):
                assert torch.allclose(graph.replay(), step_e(), **TOL)
                assert torch.equal(tok_c, tok_e) and torch.equal(pos_c, pos_e)
        graph.close()


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_prefill_captured_in_a_graph_equals_direct_calls(execution, inductor_cache):
    m = _model("cla:2+sa:2-3/recompute", execution=execution)
    ids = _ids(2, 64)
    with torch.no_grad():
        direct_cache = m.new_cache(2, 70)
        want = m.prefill(ids, direct_cache, 16)
        cache = m.new_cache(2, 70)
        graph = CudaGraphStep(lambda: m.prefill(ids, cache, 16), device="cuda", warmup_iters=1)
        cache_tensors = [t.clone() for t in cache.tensors()]
        for t in cache.tensors():
            t.zero_()
        got = graph.replay()
        torch.cuda.synchronize()
        assert torch.allclose(got, want, **TOL)
        for a, b, c in zip(cache.tensors(), direct_cache.tensors(), cache_tensors):
            assert torch.allclose(a, b, **TOL) and torch.equal(a, c)
        graph.close()


def test_sa_recompute_equals_probs_on_cuda_and_needs_less_prefill_memory():
    probs = load_model("tiny", "sa:1-3", torch.bfloat16, "cuda", seed=2)
    rec = load_model("tiny", "sa:1-3/recompute", torch.bfloat16, "cuda", seed=2)
    ids = _ids(4, 2048)

    def peak(model):
        cache = model.new_cache(4, 2048)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logits = model.prefill(ids, cache)
        torch.cuda.synchronize()
        return logits, torch.cuda.max_memory_allocated() - base

    lp, mp = peak(probs)
    lr, mr = peak(rec)
    assert torch.allclose(lr.float(), lp.float(), atol=5e-2, rtol=5e-2)
    # /probs holds P = B x H x T x T (4 x 4 x 2048^2 x 2 bytes = 128 MiB) and its float32 scores
    assert mp - mr > 4 * 4 * 2048 * 2048 * 2 * 0.9
    f_p, f_r = (_model(v) for v in ("sa:1-3", "sa:1-3/recompute"))
    short = _ids(2, 33)
    assert torch.allclose(f_r(short), f_p(short), **TOL)
    assert torch.equal(f_r.generate(short, 8), f_p.generate(short, 8))


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_generate_graph_path_gives_the_eager_tokens_and_reuses_its_graph(execution, inductor_cache):
    m = _model("cla:2+sa:2-3/recompute", execution=execution)
    ref = _model("cla:2+sa:2-3/recompute")
    ids = _ids(2, 30)
    want = ref.generate(ids, 12, cuda_graph=False)
    assert torch.equal(m.generate(ids, 12), want)
    assert torch.equal(m.generate(ids, 12), want)  # the second call replays the kept graph
    assert len(m._graphs) == 1
    other = _ids(2, 30).flip(1).contiguous()
    assert torch.equal(m.generate(other, 12), ref.generate(other, 12, cuda_graph=False))
    m.free_generate_graphs()
    assert not m._graphs


def test_compiled_point_on_cuda_graphs_both_phases(inductor_cache, tmp_path):
    suite = tmp_path / "c.yaml"
    suite.write_text("""\
name: cuda-compiled
model: tiny
dtype: bfloat16
device: cuda
variants: [baseline, "sa:2-3/recompute"]
sweep: {batch_size: [2], seq_len: [64]}
decode_tokens: 8
warmup: 1
repeats: 3
""")
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["suite"]["execution"] == "compiled"  # auto on CUDA
    for r in data["records"]:
        assert r["status"] == "ok", r
        assert r["execution"] == "compiled"
        assert r.get("prefill_mode", r.get("decode_mode")) == "graph"
        assert "latency_eager_ms" not in r
        assert r["stability"]["extra_rounds"] <= 3
    for o in data["overhead"].values():
        assert o["compile_s"] > 0

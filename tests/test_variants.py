"""Every plan executes faithfully: cached decoding, SA semantics, and the savings it claims."""
import pytest
import torch

from sabench import accounting
from sabench.model import build_model, load_model
from sabench.presets import PRESETS
from tests.helpers import hf_model, sharpen, small_config

VARIANTS = ["baseline", "cla:2", "cla:3", "sa:1-2", "sa:2-3", "sa:1-1,3-3", "cla:2+sa:2-3",
            "sa:1-1,3-3/recompute", "cla:2+sa:2-3/recompute",
            "kv:2-3<-0", "kv:2<-0,3<-1", "kv:3<-1+sa:2-3"]  # a tail, non-adjacent targets, a map with SA


def _model(variant, kind="gqa", layers=4, seed=0, **kw):
    return sharpen(load_model(small_config(kind, layers=layers, **kw), variant, dtype=torch.float32, device="cpu",
                              seed=seed))


def _greedy_by_recompute(model, ids, n):
    x = ids
    for _ in range(n):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["gqa", "mqa"])
def test_cached_generate_equals_full_recompute(variant, kind):
    m = _model(variant, kind)
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(3))
    assert torch.equal(m.generate(ids, max_new_tokens=9), _greedy_by_recompute(m, ids, 9))


@pytest.mark.parametrize("variant", ["baseline", "sa:2-3", "cla:2+sa:2-3", "sa:1-2/recompute"])
def test_chunked_prefill_equals_one_shot(variant):
    m = _model(variant)
    ids = torch.randint(0, 256, (2, 37))
    whole = m.prefill(ids, m.new_cache(2, 40))
    for chunk in (1, 8, 16):
        assert torch.allclose(m.prefill(ids, m.new_cache(2, 40), chunk_size=chunk), whole, atol=1e-5)
    gen = m.generate(ids, 3, prefill_chunk=8)
    assert torch.equal(gen, m.generate(ids, 3))


def _attention_io(m, layers, b: int, t: int) -> dict:
    """{layer: (its attention's input, its output)} over one forward of random token ids."""
    seen = {}

    def grab(i):
        def hook(mod, args, out):
            seen[i] = (args[0].clone(), out[0].clone())
        return hook

    for i in layers:
        m.model.layers[i].self_attn.register_forward_hook(grab(i))
    m(torch.randint(0, 256, (b, t)))
    return seen


def _causal_probs(cfg, xq, wq, xk, wk):
    """softmax(rope(xq Wq) rope(xk Wk)^T / sqrt(d)) under a causal mask, computed with transformers'
    rotary embedding (independent of sabench's attention)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    b, t, _ = xq.shape
    h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = (xq @ wq.T).view(b, t, h, d).transpose(1, 2)
    k = (xk @ wk.T).view(b, t, hkv, d).transpose(1, 2)
    hf_cfg = LlamaConfig(hidden_size=64, num_attention_heads=h, num_key_value_heads=hkv, head_dim=d,
                         max_position_embeddings=512, rope_theta=10000.0)
    cos, sin = LlamaRotaryEmbedding(hf_cfg)(xq, torch.arange(t)[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores = q @ k.repeat_interleave(h // hkv, dim=1).transpose(-1, -2) / d ** 0.5
    return scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


def _heads_v(cfg, x, wv):
    b, t, _ = x.shape
    h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return (x @ wv.T).view(b, t, hkv, d).transpose(1, 2).repeat_interleave(h // hkv, dim=1)


def _reference_output(cfg, m, seen, layer, q_from, k_from, v_from):
    """o_proj_layer(softmax(Q_q K_k^T) V_v), each projection by its layer's own weights on that layer's
    input (as the hooks saw it), computed independently of sabench's attention."""
    a = [blk.self_attn for blk in m.model.layers]
    x = {i: seen[i][0] for i in seen}
    probs = _causal_probs(cfg, x[q_from], a[q_from].q_proj.weight, x[k_from], a[k_from].k_proj.weight)
    v = _heads_v(cfg, x[v_from], a[v_from].v_proj.weight)
    b, t, _ = x[layer].shape
    return (probs @ v).transpose(1, 2).reshape(b, t, -1) @ a[layer].o_proj.weight.T


def test_sa_layer_output_is_source_probs_times_own_v():
    """Layer 2 of sa:2-3 must output o_proj(P_1 . V_2), P_1 computed here independently."""
    cfg = small_config("gqa", scaling=False)
    m = _model("sa:2-3", scaling=False)
    seen = _attention_io(m, (1, 2), 2, 13)
    a2 = m.model.layers[2].self_attn
    assert not hasattr(a2, "q_proj") and not hasattr(a2, "k_proj")
    assert torch.allclose(seen[2][1], _reference_output(cfg, m, seen, 2, q_from=1, k_from=1, v_from=2), atol=1e-5)


def test_plan_sharing_nothing_equals_baseline_exactly():
    base, same = _model("baseline"), _model("cla:1")
    same.load_state_dict(base.state_dict())
    ids = torch.randint(0, 256, (2, 19))
    assert torch.equal(base(ids), same(ids))
    assert torch.equal(base.generate(ids, 5), same.generate(ids, 5))


def test_the_kv_maps_above_are_not_cla_in_disguise():
    from sabench.plan import parse_variant

    for v in VARIANTS:
        if v.startswith("kv:"):
            assert parse_variant(v, 4).variant == v


def test_a_kv_map_equal_to_cla2_is_cla2_logits_cache_and_params():
    a, b = _model("cla:2", seed=7), _model("kv:1<-0,3<-2", seed=7)
    assert a.plan == b.plan and a.plan.variant == "cla:2"
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a(ids), b(ids))
    assert torch.equal(a.generate(ids, 4), b.generate(ids, 4))
    assert a.new_cache(2, 20).nbytes == b.new_cache(2, 20).nbytes
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_a_kv_sharer_attends_with_its_own_queries_over_its_targets_k_and_v():
    """Layer 3 of kv:3<-1 (a non-adjacent target) must output o_proj_3(softmax(Q_3 K_1^T) V_1),
    computed here independently; it keeps no K/V of its own."""
    cfg = small_config("gqa", scaling=False)
    m = _model("kv:3<-1", scaling=False)
    seen = _attention_io(m, (1, 3), 2, 13)
    a3 = m.model.layers[3].self_attn
    assert not hasattr(a3, "k_proj") and not hasattr(a3, "v_proj")
    assert torch.allclose(seen[3][1], _reference_output(cfg, m, seen, 3, q_from=3, k_from=1, v_from=1), atol=1e-5)
    cache = m.new_cache(1, 8)
    assert cache.k[3] is None and cache.v[3] is None and cache.k[1] is not None


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_really_saves_params_and_cache(variant):
    cfg = small_config("gqa")
    base = build_model(cfg, "baseline", torch.float32, "meta")
    m = build_model(cfg, variant, torch.float32, "meta")
    n = sum(p.numel() for p in m.parameters())
    assert n == accounting.params(cfg, variant)
    cache = load_model(cfg, variant, torch.float32, "cpu").new_cache(3, 50)
    assert cache.nbytes == accounting.kv_cache_bytes(cfg, variant, 3, 50, "float32")
    if variant != "baseline":
        assert n < sum(p.numel() for p in base.parameters())
        assert cache.nbytes < accounting.kv_cache_bytes(cfg, "baseline", 3, 50, "float32")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_meta_model_param_count_equals_closed_form(name):
    for variant in ("baseline", "cla:2", "sa:2-3", "native"):
        m = build_model(name, variant, device="meta")
        assert sum(p.numel() for p in m.parameters()) == accounting.params(name, variant)


def test_decode_step_writes_in_place_and_keeps_shapes():
    m = _model("cla:2+sa:2-3")
    cache = m.new_cache(2, 24)
    ptrs = [t.data_ptr() for t in cache.tensors()]
    logits = m.prefill(torch.randint(0, 256, (2, 8)), cache)
    tokens = logits[:, -1].argmax(-1, keepdim=True)
    pos = torch.tensor([8])
    step = m.greedy_step_fn(cache, tokens, pos)
    tok_ptr, shapes = tokens.data_ptr(), [t.shape for t in cache.tensors()]
    for _ in range(10):
        out = step()
        assert out.shape == (2, 1, 256)
    assert pos.item() == 18 and tokens.data_ptr() == tok_ptr
    assert [t.data_ptr() for t in cache.tensors()] == ptrs
    assert [t.shape for t in cache.tensors()] == shapes


def test_sa_model_from_transformers_weights_keeps_the_weights_it_uses(tmp_path):
    """save_pretrained a transformers Llama, load it with SA and CLA plans: used weights are the checkpoint's."""
    cfg = small_config("gqa")
    hf = hf_model(cfg, seed=5)
    hf.save_pretrained(tmp_path)
    base = load_model(tmp_path, "baseline", torch.float32, "cpu")
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert (base(ids) - hf(ids).logits).abs().max().item() < 1e-4
    sa = load_model(tmp_path, "sa:2-3", torch.float32, "cpu")
    assert "model.layers.2.self_attn.q_proj.weight" in sa.load_report["dropped"]
    assert torch.equal(sa.model.layers[2].self_attn.v_proj.weight, hf.model.layers[2].self_attn.v_proj.weight)
    assert torch.equal(sa.model.layers[3].self_attn.o_proj.weight, hf.model.layers[3].self_attn.o_proj.weight)
    cla = load_model(tmp_path / "config.json", "cla:2", torch.float32, "cpu")
    assert "model.layers.1.self_attn.k_proj.weight" in cla.load_report["dropped"]
    assert torch.equal(cla.model.layers[1].self_attn.q_proj.weight, hf.model.layers[1].self_attn.q_proj.weight)


@pytest.mark.parametrize("spans", ["sa:1-2", "sa:2-3", "sa:1-1,3-3", "cla:2+sa:2-3"])
@pytest.mark.parametrize("kind", ["gqa", "mha"])
def test_sa_recompute_equals_probs_and_keeps_the_same_params_and_cache(spans, kind):
    probs, rec = _model(spans, kind), _model(spans + "/recompute", kind)
    assert rec.plan.sa_strategy == "recompute" and probs.plan.sa_strategy == "probs"
    # same tensors, same names, same shapes: the strategy changes no parameter
    assert {k: v.shape for k, v in rec.state_dict().items()} == {k: v.shape for k, v in probs.state_dict().items()}
    rec.load_state_dict(probs.state_dict(), strict=True)
    ids = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(rec(ids), probs(ids), atol=1e-4, rtol=1e-4)
    for chunk in (None, 7):
        c_p, c_r = probs.new_cache(2, 30), rec.new_cache(2, 30)
        assert torch.allclose(rec.prefill(ids, c_r, chunk), probs.prefill(ids, c_p, chunk), atol=1e-4, rtol=1e-4)
        assert c_r.nbytes == c_p.nbytes
        for a, b in zip(c_r.tensors(), c_p.tensors()):
            assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(rec.generate(ids, 6), probs.generate(ids, 6))
    cfg = small_config(kind)
    assert accounting.params(cfg, spans + "/recompute") == accounting.params(cfg, spans)
    assert accounting.kv_cache_bytes(cfg, spans + "/recompute", 2, 30) == accounting.kv_cache_bytes(cfg, spans, 2, 30)


def test_sa_recompute_never_materialises_p_in_prefill():
    """/recompute runs no attn_probs in prefill (no B x H x T x T tensor), /probs does; decode keeps P in both."""
    from sabench import flops

    for variant, want_probs in (("sa:2-3", True), ("sa:2-3/recompute", False)):
        ops_seen = flops.count_prefill(small_config("gqa"), variant, 1, 16, "float32", compare_alone=False)
        assert ("attn_probs" in ops_seen.by_operator) == want_probs
        assert ("attn_apply" in ops_seen.by_operator) == want_probs
        dec = flops.count_decode_step(small_config("gqa"), variant, 1, 17, "float32", compare_alone=False)
        assert "attn_probs" in dec.by_operator and "attn_apply" in dec.by_operator


def test_generate_graph_path_logic_on_cpu_with_a_stand_in_graph(monkeypatch):
    """generate's CUDA-graph path (warm-up rewind, reuse per shape, eviction) with a stand-in that
    replays by calling the step: the same tokens as direct steps. The real capture: tests/test_cuda_execution.py."""
    from sabench import model as model_mod
    from sabench.measure import timing

    made = []

    class StandIn:
        def __init__(self, fn, device=None, warmup_iters=3, pool=None):
            for _ in range(warmup_iters):  # like the real one: warm-up steps run ahead of any replay
                fn()
            self.fn, self.closed = fn, False
            made.append(self)

        def replay(self):
            return self.fn()

        def close(self):
            self.closed = True

    monkeypatch.setattr(timing, "CudaGraphStep", StandIn)
    m = _model("cla:2+sa:2-3/recompute")
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(3))
    want = m.generate(ids, 9, cuda_graph=False)
    assert torch.equal(want, _greedy_by_recompute(m, ids, 9))
    assert torch.equal(m.generate(ids, 9, cuda_graph=True), want)
    assert torch.equal(m.generate(ids.flip(0), 9, cuda_graph=True), m.generate(ids.flip(0), 9, cuda_graph=False))
    assert len(made) == 1  # the second call of the shape reused the graph and its cache
    for n in range(2, 2 + model_mod.GENERATE_GRAPHS_KEPT):
        m.generate(ids, n, cuda_graph=True)
    assert len(m._graphs) == model_mod.GENERATE_GRAPHS_KEPT and made[0].closed
    m.free_generate_graphs()
    assert not m._graphs and all(g.closed for g in made)

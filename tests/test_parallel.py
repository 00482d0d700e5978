"""Tensor parallelism: TP-2 over gloo gives TP-1's logits for every kind of plan; shards are 1/N."""
import pytest
import torch

from sabench.harness.ranks import TPLaunchError, run_ranks
from sabench.model import build_model
from sabench.parallel import load_tp_model, shard_model, shard_tensor
from sabench.plan import PlanError
from sabench.tp_shapes import check_tensor_parallel, rank_config
from tests.helpers import small_config

VARIANTS = ["baseline", "cla:2", "sa:2-3", "sa:1-1,3-3/recompute", "cla:2+sa:2-3", "kv:2-3<-0", "kv:3<-1+sa:2-3"]
KINDS = ["mha", "gqa"]
DECODE_STEPS = 3


def _full_model(kind, variant, bias=False):
    extra = {"o_bias": True, "qkv_bias": True, "mlp_bias": True} if bias else {}
    m = build_model(small_config(kind, **extra), variant, torch.float32, "cpu").init_random(seed=1)
    with torch.no_grad():  # larger than the 0.02 init, so logits spread well beyond the tolerance
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.mul_(5.0)
            elif name.endswith(".bias"):
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return m


def _logits(model, ids):
    """Full forward, prefill of a cache, then greedy decode steps: every logits tensor."""
    out = [model(ids)]
    cache = model.new_cache(ids.shape[0], ids.shape[1] + DECODE_STEPS)
    out.append(model.prefill(ids, cache))
    tok, pos = out[-1][:, -1].argmax(-1, keepdim=True), torch.tensor([ids.shape[1]])
    for _ in range(DECODE_STEPS):
        out.append(model.decode_step(tok, pos, cache))
        tok, pos = out[-1][:, -1].argmax(-1, keepdim=True), pos + 1
    return out, cache.nbytes


def _cases():
    return [(k, v, False) for k in KINDS for v in VARIANTS] + [("gqa", "baseline", True)]


def _rank_logits(rank, world, ids):
    """Runs on each rank: every case's logits from this rank's shard of the same full model."""
    import torch.distributed as dist

    assert dist.get_backend() == "gloo" and dist.get_world_size() == world
    return {case: _logits(shard_model(_full_model(*case), rank, world), ids) for case in _cases()}


@pytest.fixture(scope="module")
def tp2():
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    return ids, run_ranks(_rank_logits, 2, (ids,))


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "-".join(str(x) for x in c))
def test_tp2_logits_equal_tp1(tp2, case):
    ids, ranks = tp2
    ref, ref_cache = _logits(_full_model(*case), ids)
    assert max(t.abs().max().item() for t in ref) > 1.0  # a tolerance of 1e-4 means something
    for rank, res in enumerate(ranks):
        got, cache_bytes = res[case]
        assert len(got) == len(ref) == 2 + DECODE_STEPS
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert cache_bytes * 2 == ref_cache  # each rank preallocates half the cache


def test_without_all_reduce_the_logits_differ():
    """The all-reduce is what makes the shards agree: one shard alone is not the model."""
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    ref = _full_model("gqa", "baseline")(ids)
    alone = _full_model("gqa", "baseline")
    shard_model(alone, 0, 2)
    for layer in alone.model.layers:  # drop the hooks: no process group here
        layer.self_attn.o_proj._forward_hooks.clear()
        layer.mlp.down_proj._forward_hooks.clear()
    assert (alone(ids) - ref).abs().max() > 1e-2


def test_shard_shapes_and_rank_config():
    cfg = small_config("gqa")  # 4 heads, 2 KV heads of 16, MLP 128
    m = shard_model(build_model(cfg, "cla:2", torch.float32, "meta"), 1, 2)
    attn, mlp = m.model.layers[0].self_attn, m.model.layers[0].mlp
    assert attn.q_proj.weight.shape == (2 * 16, 64) and attn.k_proj.weight.shape == (16, 64)
    assert attn.o_proj.weight.shape == (64, 32) and attn.o_proj.in_features == 32
    assert mlp.gate_proj.weight.shape == (64, 64) and mlp.down_proj.weight.shape == (64, 64)
    assert not hasattr(m.model.layers[1].self_attn, "k_proj")  # the plan still holds
    assert m.model.embed_tokens.weight.shape == (256, 64) and m.lm_head.weight.shape == (256, 64)
    assert m.cfg == rank_config(cfg, 2) and m.full_cfg == cfg
    assert (m.cfg.num_heads, m.cfg.num_kv_heads, m.cfg.intermediate_size) == (2, 1, 64)


def test_shard_tensor_slices_rows_columns_and_keeps_row_bias_once():
    w = torch.arange(24.0).view(4, 6)
    assert torch.equal(shard_tensor("model.layers.0.self_attn.q_proj.weight", w, 1, 2), w[2:])
    assert torch.equal(shard_tensor("model.layers.0.mlp.down_proj.weight", w, 1, 2), w[:, 3:])
    b = torch.ones(4)
    assert torch.equal(shard_tensor("model.layers.0.self_attn.o_proj.bias", b, 0, 2), b)
    assert torch.equal(shard_tensor("model.layers.0.self_attn.o_proj.bias", b, 1, 2), torch.zeros(4))
    assert torch.equal(shard_tensor("model.embed_tokens.weight", w, 1, 2), w)


@pytest.mark.parametrize("world, named", [
    (4, "2 KV heads is"),
    (3, r"2 KV heads, its 4 attention heads and its MLP width \(intermediate_size\) 128 are"),
])
def test_impossible_degree_is_refused_with_the_numbers(world, named):
    with pytest.raises(PlanError, match=f"cannot be split over {world} tensor-parallel ranks: its {named}"):
        check_tensor_parallel(small_config("gqa"), world)
    with pytest.raises(PlanError, match="use a degree among 1, 2"):
        shard_model(build_model(small_config("gqa"), "baseline", torch.float32, "meta"), 0, world)


def test_mlp_width_must_divide():
    from dataclasses import replace

    cfg = replace(small_config("mha"), intermediate_size=130)
    with pytest.raises(PlanError, match=r"MLP width \(intermediate_size\) 130 is not divisible by 4"):
        rank_config(cfg, 4)


@pytest.mark.parametrize("cfg, variant, world", [
    (small_config("mha"), "sa:2-3", 4),
    (small_config("gqa", tie=True, o_bias=True, mlp_bias=True), "cla:2", 2),
], ids=["mha-sa-tp4", "gqa-tied-bias-cla-tp2"])
def test_random_rank_weights_are_slices_of_the_tp1_weights(cfg, variant, world):
    """What makes TP-N's totals TP-1's model: one init rule, each rank keeping its slice of TP-1's weights of the seed."""
    from sabench.model import load_model

    full = load_model(cfg, variant, torch.float32, "cpu", weights="random", seed=3).state_dict()
    assert full["model.layers.0.self_attn.q_proj.weight"].std() == pytest.approx(0.02, rel=0.2)
    for rank in range(world):
        shard = load_tp_model(cfg, variant, torch.float32, "cpu", rank=rank, world=world, weights="random", seed=3)
        assert shard.cfg.num_heads * world == cfg.num_heads
        for name, p in shard.state_dict().items():
            assert torch.equal(p, shard_tensor(name, full[name], rank, world)), name


def test_checkpoint_loads_sliced_per_rank(tmp_path):
    """Each rank reads the full checkpoint's tensors and keeps its slice; what a plan drops is dropped."""
    import json

    from safetensors.torch import save_file

    cfg = small_config("gqa", o_bias=True, qkv_bias=True, mlp_bias=True)  # as _full_model(bias=True)
    full = _full_model("gqa", "baseline", bias=True)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    state = full.state_dict()
    for rank in (0, 1):
        m = load_tp_model(str(tmp_path), "cla:2", torch.float32, "cpu", rank=rank, world=2)
        assert m.load_report["dropped"] == ["model.layers.1.self_attn.k_proj.bias",
                                            "model.layers.1.self_attn.k_proj.weight",
                                            "model.layers.1.self_attn.v_proj.bias",
                                            "model.layers.1.self_attn.v_proj.weight",
                                            "model.layers.3.self_attn.k_proj.bias",
                                            "model.layers.3.self_attn.k_proj.weight",
                                            "model.layers.3.self_attn.v_proj.bias",
                                            "model.layers.3.self_attn.v_proj.weight"]
        for name, p in m.state_dict().items():
            assert torch.equal(p, shard_tensor(name, state[name], rank, 2)), name
        assert m.model.layers[0].self_attn.o_proj.weight.shape == (64, 32)


def _fail_on_rank_1(rank, world):
    if rank == 1:
        raise RuntimeError("rank one broke")
    return rank


def test_a_failing_rank_is_reported():
    with pytest.raises(TPLaunchError, match="over 2 ranks failed: rank 1"):
        run_ranks(_fail_on_rank_1, 2)

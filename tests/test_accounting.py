"""Closed forms against public figures, and fvcore (with sabench's handles) against closed forms."""
import pytest

from sabench import accounting as A
from sabench import flops as F


def test_public_parameter_counts():
    assert A.params("llama-2-7b") == 6_738_415_616
    assert A.params("llama-3-8b") == 8_030_261_248
    assert A.params("llama-3.1-8b") == 8_030_261_248
    assert A.params("llama-3.2-1b") == 1_235_814_400  # tied embeddings
    assert A.params("mistral-7b") == 7_248_023_552
    assert A.params("qwen2.5-7b") == 7_615_616_512  # q/k/v biases


def test_cla_paper_table1_bytes_per_token_16bit():
    assert A.kv_bytes_per_token("cla-1b-mha", "baseline", "bf16") == 163840
    assert A.kv_bytes_per_token("cla-1b-gqa4", "baseline", "bf16") == 40960
    assert A.kv_bytes_per_token("cla-1b-mqa", "baseline", "bf16") == 10240
    assert A.kv_bytes_per_token("cla-1b-mqa", "cla:2", "bf16") == 5120
    assert A.kv_bytes_per_token("cla-1b-mqa", "cla:3", "fp16") == 3584


def test_sa_paper_llama2_span_keeps_448_of_512_kib():
    assert A.kv_bytes_per_token("llama-2-7b", "baseline", "bf16") == 524288
    assert A.kv_bytes_per_token("llama-2-7b", "sa:23-30", "bf16") == 458752


def test_float32_doubles_bytes():
    assert A.kv_bytes_per_token("tiny", "cla:2", "float32") == 2 * A.kv_bytes_per_token("tiny", "cla:2", "bf16")


def test_prefill_flops_closed_form_by_hand():
    """llama-2-7b, B=1, T=2: every term written out."""
    h, i, layers, vocab, T = 4096, 11008, 32, 32000, 2
    proj = 2 * T * h * (4 * h) * layers
    attn = 2 * 32 * (T * (T + 1) // 2) * 128 * 2 * layers
    mlp = 2 * T * 3 * h * i * layers
    f = A.prefill_flops("llama-2-7b", "baseline", 1, T)
    assert (f.projections, f.attention, f.mlp, f.lm_head) == (proj, attn, mlp, 2 * h * vocab)


def test_sa_drops_qk_projection_and_score_flops():
    base = A.prefill_flops("llama-2-7b", "baseline", 1, 1024)
    sa = A.prefill_flops("llama-2-7b", "sa:23-30", 1, 1024)
    assert base.projections - sa.projections == 8 * 2 * 1024 * 4096 * (2 * 4096)
    assert base.attention - sa.attention == 8 * 2 * 32 * (1024 * 1025 // 2) * 128
    assert sa.mlp == base.mlp


def test_sa_recompute_does_qk_again_in_prefill_only():
    probs = A.prefill_flops("llama-2-7b", "sa:23-30", 1, 1024)
    rec = A.prefill_flops("llama-2-7b", "sa:23-30/recompute", 1, 1024)
    assert rec.attention - probs.attention == 8 * 2 * 32 * (1024 * 1025 // 2) * 128
    assert rec.projections == probs.projections and rec.mlp == probs.mlp
    assert A.decode_flops("llama-2-7b", "sa:23-30/recompute", 2, 99) == A.decode_flops("llama-2-7b", "sa:23-30", 2, 99)


# An 8-layer Llama-shaped model (tests.helpers.small_config("gqa", layers=8)): hidden 64, 4 heads and
# 2 KV heads of 16, MLP 128, vocabulary 256, untied embeddings.
H, NH, NKV, D, I, V, L = 64, 4, 2, 16, 128, 256, 8
Q, KV = NH * D, NKV * D  # q_proj and k_proj/v_proj output widths
# Gemma-3n-style tail: the last 3 layers reuse the K/V of the last non-shared layer (4).
# LCKV-style layer_types "0_0_2_2_2_2_6_6": uneven groups (2, 4, 2) owned by layers 0, 2 and 6.
KV_LAYOUTS = {"kv:5-7<-4": 5, "kv:1<-0,3-5<-2,7<-6": 3}  # variant -> layers that own K/V


@pytest.mark.parametrize("variant, owners", KV_LAYOUTS.items())
def test_kv_layouts_equal_closed_forms_written_by_hand(variant, owners):
    from sabench.model import build_model, load_model
    from sabench.plan import parse_variant
    from tests.helpers import small_config

    cfg = small_config("gqa", layers=8)
    assert parse_variant(variant, L).variant == variant  # neither is a cla:N in disguise
    assert (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
            cfg.vocab_size) == (H, NH, NKV, D, I, V) and not cfg.tie_word_embeddings
    sharers = L - owners
    # params: per layer 2 norms, a gated MLP, o_proj and q_proj; k_proj and v_proj on owners only
    layer = 2 * H + 3 * H * I + 2 * H * Q
    params = 2 * V * H + H + L * layer + owners * 2 * H * KV
    assert A.params(cfg, variant) == params
    assert sum(p.numel() for p in build_model(cfg, variant, "float32", "meta").parameters()) == params
    # cache: K and V of the owners, 4 bytes each in float32
    b, t = 3, 50
    assert A.kv_bytes_per_token(cfg, variant, "float32") == owners * 2 * KV * 4
    assert A.kv_cache_bytes(cfg, variant, b, t, "float32") == owners * 2 * KV * 4 * b * t
    assert load_model(cfg, variant, "float32", "cpu").new_cache(b, t).nbytes == owners * 2 * KV * 4 * b * t
    # FLOPs: every layer has Q and attends (QK^T and PV over the shared K/V); K/V projections on owners
    pairs = b * t * (t + 1) // 2
    pre = A.prefill_flops(cfg, variant, b, t)
    assert pre.projections == 2 * b * t * H * (L * 2 * Q + owners * 2 * KV)
    assert pre.attention == L * 2 * NH * pairs * D * 2
    assert pre.mlp == 2 * b * t * 3 * H * I * L and pre.lm_head == 2 * b * H * V
    dec = A.decode_flops(cfg, variant, b, t)
    assert dec.projections == 2 * b * H * (L * 2 * Q + owners * 2 * KV)
    assert dec.attention == L * 2 * NH * b * (t + 1) * D * 2
    # bytes of a decode step over a buffer of t positions: every layer reads the K and V it attends
    # over (a sharer re-reads its owner's); only owners write the new token's K/V
    moved = A.decode_step_breakdown(cfg, variant, b, t, "float32")
    assert moved.kv_read == L * 2 * b * t * KV * 4 and moved.kv_write == owners * 2 * b * KV * 4
    assert sharers and moved.attention_sharing == 0
    # tensor parallel: a rank of 2 holds one of the 2 KV heads of every owner
    tp = A.tp_summary(cfg, variant, b, t, "float32", 2)
    assert tp["per_rank"]["kv_cache_bytes"] == owners * 2 * (KV // 2) * 4 * b * t


def test_decode_phase_sums_steps():
    total = A.decode_phase_flops("tiny", "cla:2", 2, 100, 3)
    assert total.total == sum(A.decode_flops("tiny", "cla:2", 2, c).total for c in (100, 101, 102))


VARIANTS = ["baseline", "cla:2", "cla:3", "sa:2-3", "sa:1-1,3-3", "cla:2+sa:2-3", "sa:2-3/recompute",
            "cla:2+sa:1-1,3-3/recompute", "kv:2-3<-0", "kv:2<-0,3<-1+sa:3-3"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fvcore_with_handles_agrees_with_closed_form_where_fvcore_alone_misses_attention(variant):
    b, t = 2, 96
    pre = F.count_prefill("tiny", variant, b, t, "float32")
    want = A.prefill_flops("tiny", variant, b, t)
    assert abs(pre.total - want.total) <= 0.01 * want.total
    # fvcore out of the box leaves attention out: the gap is exactly the attention term
    assert pre.fvcore_alone < pre.total
    assert pre.total - pre.fvcore_alone == want.attention
    print(f"{variant}: closed form {want.total}, fvcore+handles {pre.total}, fvcore alone {pre.fvcore_alone}")
    dec = F.count_decode_step("tiny", variant, b, t + 1, "float32")
    want_dec = A.decode_flops("tiny", variant, b, t)
    assert abs(dec.total - want_dec.total) <= 0.01 * want_dec.total
    assert dec.fvcore_alone < dec.total


def test_elementwise_ops_are_listed_apart_not_dropped_silently():
    pre = F.count_prefill("tiny", "sa:2-3", 1, 16, "float32")
    assert {"aten::mul", "aten::add", "aten::silu"} <= set(pre.elementwise_ops)
    assert not any("attention" in op or "sabench::" in op for op in pre.elementwise_ops)
    assert pre.by_operator["attn_probs"] > 0 and pre.by_operator["attn_apply"] > 0


def test_unhandled_matrix_operator_is_refused():
    import torch

    class Bmm(torch.nn.Module):
        def forward(self, a):
            return torch.ops.aten.baddbmm(a, a, a)

    F.HANDLES.pop("aten::baddbmm", None)
    with pytest.raises(F.UncountedOperatorError, match="baddbmm"):
        F.count(Bmm(), (torch.zeros(1, 2, 2),))


def test_counting_works_on_meta_for_a_full_size_model():
    pre = F.count_prefill("llama-3.1-8b", "sa:23-30", 1, 512)
    assert pre.total == A.prefill_flops("llama-3.1-8b", "sa:23-30", 1, 512).total


def test_point_counts_are_cached_on_disk_and_equal_a_fresh_trace(tmp_path):
    args = ("tiny", "cla:2+sa:2-3/recompute", 2, 24, 5, "float32", 8)
    fresh, cached = F.point_counts(*args, cache_dir=None)
    assert not cached
    assert fresh["prefill"] == F.count_prefill("tiny", args[1], 2, 24, "float32", chunk_size=8).total
    assert fresh["decode_step"] == F.count_decode_step("tiny", args[1], 2, 29, "float32").total
    first, hit1 = F.point_counts(*args, cache_dir=tmp_path)
    second, hit2 = F.point_counts(*args, cache_dir=tmp_path)
    assert (hit1, hit2) == (False, True) and first == second == fresh
    other, hit = F.point_counts("tiny", "sa:2-3", 2, 24, 5, "float32", 8, cache_dir=tmp_path)
    assert not hit and other != fresh  # another variant is another key
    (entry,) = [p for p in tmp_path.iterdir() if p.read_text() == __import__("json").dumps(first)]
    entry.write_text("{torn")
    assert F.point_counts(*args, cache_dir=tmp_path) == (fresh, False)

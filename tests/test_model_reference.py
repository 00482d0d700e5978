"""Baseline equals transformers' own Llama on the same random weights."""
import pytest
import torch

from sabench.model import build_model
from tests.helpers import hf_model, small_config


def _pair(cfg):
    hf = hf_model(cfg)
    ours = build_model(cfg, "baseline", torch.float32, "cpu")
    result = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not result.missing_keys
    assert set(result.unexpected_keys) <= {"lm_head.weight"}  # tied models: one tensor, two names
    return hf, ours


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "head_dim"])
def test_logits_match_transformers(kind):
    hf, ours = _pair(small_config(kind))
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    got = ours(ids)
    assert got.shape == ref.shape == (2, 40, 256)
    assert (got - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind, tie", [("gqa", False), ("mqa", True), ("head_dim", False)])
def test_greedy_generate_matches_transformers(kind, tie):
    hf, ours = _pair(small_config(kind, tie=tie))
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(2))
    ref = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.generate(ids, max_new_tokens=12), ref)


def test_qwen2_style_qkv_bias_matches_transformers():
    cfg = small_config("gqa", qkv_bias=True, scaling=False)
    hf, ours = _pair(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # HF zero-inits biases: make them matter
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    ours.load_state_dict(hf.state_dict(), strict=False)
    ids = torch.randint(0, 256, (1, 23))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_long_context_rope_scaling_matters():
    """Positions beyond the original context exercise the Llama-3 frequency blend."""
    hf, ours = _pair(small_config("gqa"))
    ids = torch.randint(0, 256, (1, 300))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4

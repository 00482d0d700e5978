"""Small configs and transformers references shared by the tests."""
import torch

from sabench.presets import ModelConfig

LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}

# name -> (heads, kv_heads, head_dim): MHA, GQA, MQA, and a head_dim that is not hidden/heads
SHAPES = {
    "mha": (4, 4, 16),
    "gqa": (4, 2, 16),
    "mqa": (4, 1, 16),
    "head_dim": (4, 2, 24),
}


def small_config(kind="gqa", layers=4, tie=False, scaling=True, **kw) -> ModelConfig:
    h, kv, d = SHAPES[kind]
    return ModelConfig(f"test-{kind}", 256, 64, 128, layers, h, kv, d, 512, 10000.0,
                       LLAMA3_SCALING if scaling else None, tie_word_embeddings=tie, **kw)


def hf_model(cfg: ModelConfig, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = cfg.to_hf_dict()
    hf_cfg = AutoConfig.for_model(d.pop("model_type"), **{k: v for k, v in d.items() if k != "architectures"})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_cfg, torch_dtype=torch.float32).eval()


def sharpen(model):
    """The model with its matrices x5 (in place): larger weights than the 0.02 init spread the logits,
    so no argmax near-tie lets batching, kernels or rounding flip a greedy token and hide a bug."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model


def tiny_suite(name: str, *, variants=("baseline", "cla:2", "sa:2-3"), batch_sizes=(1, 2), seq_lens=(16, 32),
               decode_tokens: int = 4, warmup: int = 1, repeats: int = 3, rounds=1, execution=None) -> str:
    """The text of a small CPU suite over the `tiny` preset (by default baseline, cla:2 and sa:2-3 at
    batch sizes 1, 2 and seq_lens 16, 32, one round; rounds=None leaves `rounds` to the default;
    tests `.replace` parts of it for their variations)."""
    names = ", ".join(v if v == "baseline" else f'"{v}"' for v in variants)
    return (f"name: {name}\nmodel: tiny\ndtype: float32\ndevice: cpu\n"
            f"variants: [{names}]\n"
            f"sweep:\n  batch_size: {list(batch_sizes)}\n  seq_len: {list(seq_lens)}\n"
            f"decode_tokens: {decode_tokens}\nwarmup: {warmup}\nrepeats: {repeats}\n"
            + (f"rounds: {rounds}\n" if rounds is not None else "")
            + (f"execution: {execution}\n" if execution is not None else ""))


def write_suite(directory, text: str, filename: str = "suite.yaml"):
    """`text` written as `directory/filename`; returns the path."""
    p = directory / filename
    p.write_text(text)
    return p

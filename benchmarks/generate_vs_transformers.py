"""sabench's greedy generate vs transformers' generate, same weights, one process, interleaved.

    python benchmarks/generate_vs_transformers.py [--pairs 15] [--new-tokens 64] [--size small]
    python benchmarks/generate_vs_transformers.py --device cuda --size llama-3.1-8b --dtype bfloat16 \
        --prompt 512 --new-tokens 32 --execution compiled --hf-cache static

Sizes: `small` (4 layers, d_model 256, GQA 4/2 heads of 64, vocab 8192: ~7M
parameters, where framework overhead is most of a step), `medium` (8 layers,
d_model 512, GQA 8/2, vocab 32000: ~50M parameters, nearer the memory floor), or
any sabench preset (e.g. llama-3.1-8b; random weights built on the device and
copied into sabench's model, no checkpoint needed).

Each pair times both implementations back to back (order alternating), so machine
noise hits both alike; the headline is the median of the per-pair ratios, with p10
and p90. On CUDA every timing synchronises the device before reading the clock, and
both sides are warmed up first (sabench: compilation and the CUDA-graph capture of
its decode step, kept per shape by `generate`; transformers: its own warm-up, e.g.
the static cache's compile). On the CPU in float32 both must produce the same
tokens; on CUDA in 16-bit their kernels differ, so the token agreement is printed.
"""
import argparse
import statistics
import time

import torch

from sabench.model import build_model
from sabench.presets import PRESETS, ModelConfig, resolve_config

SIZES = {
    "small": ModelConfig("bench-small", 8192, 256, 704, 4, 4, 2, 64, 2048, 10000.0),
    "medium": ModelConfig("bench-medium", 32000, 512, 1408, 8, 8, 2, 64, 2048, 10000.0),
}


def _models(cfg: ModelConfig, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("model_type", "architectures")})
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: an 8B model never exists in float32 on the device
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(default)
    ours = build_model(cfg, "baseline", dtype, device)
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if missing or [k for k in unexpected if not k.endswith("rotary_emb.inv_freq") and k not in tied]:
        raise SystemExit(f"weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return ours, hf


def _timer(device: str):
    def timed(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0
    return timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", choices=sorted(SIZES) + sorted(PRESETS), default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on the CPU, bfloat16 on CUDA")
    ap.add_argument("--execution", choices=("eager", "compiled"), default="eager",
                    help="sabench's execution (generate replays a CUDA graph of the step on CUDA either way)")
    ap.add_argument("--hf-cache", choices=("dynamic", "static"), default="static" if torch.cuda.is_available()
                    else "dynamic", help="transformers' cache implementation")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    cfg = SIZES[args.size] if args.size in SIZES else resolve_config(args.size)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    ours, hf = _models(cfg, dtype, args.device)
    ours.set_execution(args.execution)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt),
                        generator=torch.Generator().manual_seed(1)).to(args.device)
    n = args.new_tokens
    hf_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    if args.hf_cache == "static":
        hf_kw["cache_implementation"] = "static"

    def run_ours():
        return ours.generate(ids, max_new_tokens=n)

    def run_hf():
        with torch.no_grad():
            return hf.generate(ids, **hf_kw)

    timed = _timer(args.device)
    (a, t_first_ours), (b, t_first_hf) = timed(run_ours), timed(run_hf)
    agree = (a == b)[:, args.prompt:].float().mean().item()
    if dtype == torch.float32 and not args.device.startswith("cuda"):
        assert agree == 1.0, "both must produce the same tokens"
    for _ in range(args.warmup):
        run_ours(), run_hf()
    t_ours, t_hf, ratios = [], [], []
    for i in range(args.pairs):
        order = [(run_ours, t_ours), (run_hf, t_hf)]
        for fn, acc in (order if i % 2 == 0 else order[::-1]):
            acc.append(timed(fn)[1])
        ratios.append(t_hf[-1] / t_ours[-1])
    med = statistics.median
    q = sorted(ratios)
    print(f"{args.size}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M params, {dtype}, {args.device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, prompt {args.prompt}, "
          f"{n} new tokens, {args.pairs} interleaved pairs")
    print(f"first calls (untimed above): sabench {t_first_ours:.2f} s ({args.execution}), "
          f"transformers {t_first_hf:.2f} s ({args.hf_cache} cache); token agreement {agree:.1%}")
    print(f"sabench generate:      median {med(t_ours) * 1e3:8.1f} ms  ({n * args.batch / med(t_ours):7.1f} tok/s, "
          f"{med(t_ours) / n * 1e3:.2f} ms per token)")
    print(f"transformers generate: median {med(t_hf) * 1e3:8.1f} ms  ({n * args.batch / med(t_hf):7.1f} tok/s, "
          f"{med(t_hf) / n * 1e3:.2f} ms per token)")
    print(f"speedup (median of per-pair ratios): {med(ratios):.2f}x  "
          f"[p10 {q[len(q) // 10]:.2f}x, p90 {q[(9 * len(q)) // 10]:.2f}x]")


if __name__ == "__main__":
    main()

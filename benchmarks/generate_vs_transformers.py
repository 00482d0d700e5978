"""sabench's greedy generate vs transformers' generate, same weights, one process, interleaved.

    python benchmarks/generate_vs_transformers.py [--pairs 15] [--new-tokens 64]

Two sizes: `small` (4 layers, d_model 256, GQA 4/2 heads of 64, vocab 8192: ~6.5M
parameters, where framework overhead is most of a step) and `medium` (8 layers,
d_model 512, GQA 8/2, vocab 32000: ~50M parameters, nearer the memory floor).
float32 on the CPU, a 32-token prompt. Each pair
times both implementations back to back (order alternating), so machine noise
hits both alike; the headline is the median of the per-pair ratios.
"""
import argparse
import statistics
import tempfile
import time

import torch

from sabench import load_model
from sabench.presets import ModelConfig


SIZES = {
    "small": ModelConfig("bench-small", 8192, 256, 704, 4, 4, 2, 64, 2048, 10000.0),
    "medium": ModelConfig("bench-medium", 32000, 512, 1408, 8, 8, 2, 64, 2048, 10000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg = SIZES[args.size]
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("model_type", "architectures")})).eval()
    with tempfile.TemporaryDirectory() as d:  # the real loading path: save_pretrained -> load_model
        hf.save_pretrained(d)
        ours = load_model(d, "baseline", dtype=torch.float32, device="cpu")
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    n = args.new_tokens

    def run_ours():
        return ours.generate(ids, max_new_tokens=n)

    def run_hf():
        with torch.no_grad():
            return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    assert torch.equal(run_ours(), run_hf()), "both must produce the same tokens"
    for _ in range(2):  # warm-up
        run_ours(), run_hf()
    t_ours, t_hf, ratios = [], [], []
    for i in range(args.pairs):
        order = [(run_ours, t_ours), (run_hf, t_hf)]
        for fn, acc in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
        ratios.append(t_hf[-1] / t_ours[-1])
    med = statistics.median
    print(f"{args.size}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M params; torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, prompt {args.prompt}, "
          f"{n} new tokens, {args.pairs} interleaved pairs")
    print(f"sabench generate:      median {med(t_ours) * 1e3:8.1f} ms  ({n * args.batch / med(t_ours):7.1f} tok/s)")
    print(f"transformers generate: median {med(t_hf) * 1e3:8.1f} ms  ({n * args.batch / med(t_hf):7.1f} tok/s)")
    print(f"speedup (median of per-pair ratios): {med(ratios):.2f}x  "
          f"[p10 {sorted(ratios)[len(ratios) // 10]:.2f}x, p90 {sorted(ratios)[(9 * len(ratios)) // 10]:.2f}x]")


if __name__ == "__main__":
    main()

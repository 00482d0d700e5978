"""What sharing costs in quality: perplexity per variant, layer attention similarity, SA span advice.

`evaluate(...)` validates everything first (model, variants, tokens, window size), then:

1. loads the baseline once and scores it on non-overlapping windows of the tokens, capturing each
   layer's post-RoPE Q and K on the way (forward hooks on `q_proj` / `k_proj`);
2. from those Q and K, the L x L attention similarity of the baseline's layers (see
   `similarity_sums`);
3. when asked for (by default, or `--variant recommended`), the measured SA advice (advice.py),
   which ranks candidate plans by that similarity and scores them;
4. every other variant is built from the baseline's own tensors (shared storage, no copy and no
   second read of the checkpoint) and scored on the same windows; `recommended` is the advice's
   plan, whose perplexity the advice already measured.

Perplexity = exp(mean NLL over every predicted token of every window), NLL from float32 logits.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from sabench import windows as win
from sabench.errors import UserError
from sabench.windows import IGNORE

BATCH_BUDGET_BYTES = 2 << 30  # logits, attention scores and captured Q/K of one batch of windows
CE_CHUNK_BYTES = 256 << 20  # float32 logits turned into NLL at a time
SIM_BLOCK_BYTES = 256 << 20  # float32 attention rows of all layers for one query block
RECOMMENDED = "recommended"  # --variant keyword for the advice's plan (advice.shown_plan)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


# ---------------------------------------------------------------- tokens and windows
def read_token_ids(path, vocab_size: int) -> torch.Tensor:
    """Whitespace-separated integer ids, each in [0, vocab_size)."""
    text = _read(path, "--token-ids")
    ids = []
    for i, word in enumerate(text.split()):
        try:
            ids.append(int(word))
        except ValueError:
            raise UserError(f"{path}: token {i} is {word[:20]!r}, not an integer id") from None
    bad = next((x for x in ids if not 0 <= x < vocab_size), None)
    if bad is not None:
        raise UserError(f"{path}: token id {bad} is outside the model's vocabulary 0..{vocab_size - 1}")
    return torch.tensor(ids, dtype=torch.long)


def tokenize_text(path, directory, vocab_size: int) -> torch.Tensor:
    """The text encoded by the model directory's own tokenizer (local files only).

    The whole file is one text: a tokenizer that adds BOS adds it once, at the start of the
    first window; later windows start mid-text (as strided perplexity evaluations do).
    """
    directory = Path(directory)
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"--text needs a tokenizer, and {str(directory)!r} has none "
                         f"({', '.join(TOKENIZER_FILES)}): use --token-ids instead")
    text = _read(path, "--text")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than the model's maximum": we cut windows ourselves
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        ids = tok(text)["input_ids"]
    except Exception as e:  # transformers raises OSError, ValueError, TypeError... for a missing tokenizer
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"--text needs the tokenizer of {str(directory)!r}, which transformers cannot "
                         f"load from local files ({first}); use --token-ids instead") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = next((x for x in ids if not 0 <= x < vocab_size), None)
    if bad is not None:
        raise UserError(f"the tokenizer of {str(directory)!r} gives id {bad}, outside the model's "
                         f"vocabulary 0..{vocab_size - 1}")
    return torch.tensor(ids, dtype=torch.long)


def _read(path, flag: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag} {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---------------------------------------------------------------- perplexity
def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum of -log p(target) over the scored positions (targets != IGNORE), in float32, chunked."""
    pred, target = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    rows = max(1, CE_CHUNK_BYTES // (4 * logits.shape[-1]))
    total = 0.0
    for s in range(0, pred.shape[0], rows):
        total += F.cross_entropy(pred[s: s + rows].float(), target[s: s + rows], reduction="sum",
                                 ignore_index=IGNORE).item()
    return total


class NonFiniteLogits(ValueError):
    """The model's logits hold NaN or inf (a broken checkpoint, or a dtype that overflows)."""


def windows_per_batch(model, seq_len: int, with_qk: bool = False) -> int:
    """How many windows one forward takes within BATCH_BUDGET_BYTES (at least one)."""
    cfg = model.cfg
    elt = model.lm_weight.element_size()
    per_window = seq_len * cfg.vocab_size * elt + cfg.num_heads * seq_len * seq_len * 4
    if with_qk:
        per_window += cfg.num_layers * seq_len * (cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim * 4
    return max(1, BATCH_BUDGET_BYTES // per_window)


@torch.no_grad()
def score(model, windows, *, with_similarity: bool = False, desc: str = "", progress: bool = True,
          check_finite: bool = False):
    """(perplexity, similarity [L, L] or None) of `model` on `windows` (a windows.Windows, or a
    [W, T] tensor of non-overlapping windows).

    The similarity needs the baseline (every layer computes its own attention). check_finite:
    raise NonFiniteLogits at the first batch whose logits hold NaN or inf.
    """
    from tqdm import tqdm

    if isinstance(windows, torch.Tensor):
        windows = win.non_overlapping(windows.reshape(-1), windows.shape[1])
    device = model.lm_weight.device
    batch = windows_per_batch(model, windows.seq_len, with_similarity)
    nll, count = 0.0, 0
    sim_sum, heads = None, 0
    capture = _QKCapture(model) if with_similarity else None
    bar = tqdm(total=windows.count, desc=desc, unit="window", disable=None if progress else True,
               leave=False)
    try:
        for s in range(0, windows.count, batch):
            ids = windows.inputs[s: s + batch].to(device)
            targets = windows.targets[s: s + batch].to(device)
            logits = model(ids)
            if check_finite and not torch.isfinite(logits).all():
                raise NonFiniteLogits(f"windows {s}..{s + ids.shape[0] - 1}")
            nll += _nll_sum(logits, targets)
            count += int((targets != IGNORE).sum())
            del logits
            if capture is not None:
                part = similarity_sums(capture.q, capture.k, model.cfg.head_dim ** -0.5)
                sim_sum = part if sim_sum is None else sim_sum + part
                heads += ids.shape[0] * model.cfg.num_heads
                capture.clear()
            bar.update(ids.shape[0])
    finally:
        bar.close()
        if capture is not None:
            capture.remove()
    ppl = torch.tensor(nll / count, dtype=torch.float64).exp().item()  # inf past float64, nan stays nan
    return ppl, (sim_sum / heads if sim_sum is not None else None)


# ---------------------------------------------------------------- attention similarity
class _QKCapture:
    """Post-RoPE float32 Q [B, H, T, D] and K [B, Hkv, T, D] of every layer, from forward hooks."""

    def __init__(self, model):
        from sabench.layers import rope_inv_freq

        cfg = model.cfg
        self.h, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.inv_freq = rope_inv_freq(cfg).float().to(model.lm_weight.device)
        self.rope = None  # (cos, sin) [T, D] in float32, for the current length
        self.q: List[torch.Tensor] = [None] * cfg.num_layers
        self.k: List[torch.Tensor] = [None] * cfg.num_layers
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            self.handles.append(attn.q_proj.register_forward_hook(self._hook(self.q, i, self.h)))
            self.handles.append(attn.k_proj.register_forward_hook(self._hook(self.k, i, self.hkv)))

    def _hook(self, store, index, heads):
        def hook(_module, _inputs, out):
            from sabench.layers import apply_rope

            b, t, _ = out.shape
            if self.rope is None or self.rope[0].shape[0] != t:
                pos = torch.arange(t, device=out.device, dtype=torch.float32)
                emb = torch.outer(pos, self.inv_freq).repeat(1, 2)
                self.rope = emb.cos(), emb.sin()
            x = out.float().view(b, t, heads, self.d).transpose(1, 2)
            store[index] = apply_rope(x, *self.rope)
        return hook

    def clear(self):
        """Drop the captured tensors of a batch. In place: the hooks hold these very lists, so
        rebinding them (`self.q = [...]`) would leave the hooks filling lists nobody reads."""
        for store in (self.q, self.k):
            store[:] = [None] * len(store)

    def remove(self):
        for h in self.handles:
            h.remove()


def similarity_sums(q: Sequence[torch.Tensor], k: Sequence[torch.Tensor], scale: float,
                    block_rows: Optional[int] = None) -> torch.Tensor:
    """Sum over sequences and heads of cos(P_a, P_b), as a float64 [L, L] CPU tensor.

    q[l]: [B, H, T, D], k[l]: [B, Hkv, T, D] (float32, post-RoPE). P_l = softmax(q k^T * scale)
    under the causal mask, T x T per head. Never holds a layer's whole P: query rows are walked in
    blocks; for each block every layer's rows of P are computed and the per-head dot products
    <P_a, P_b> accumulated (keys past the block's last row are zero in every P and are skipped).
    cos = <P_a, P_b> / (|P_a| |P_b|) per sequence and head, with |P_a|^2 = <P_a, P_a>.
    """
    n_layers = len(q)
    b, h, t, d = q[0].shape
    hkv = k[0].shape[1]
    g = h // hkv
    dev = q[0].device
    rows = block_rows or max(1, SIM_BLOCK_BYTES // (4 * n_layers * b * h * t))
    dots = torch.zeros(b, h, n_layers, n_layers, dtype=torch.float32, device=dev)
    for r0 in range(0, t, rows):
        r1 = min(t, r0 + rows)
        n = r1 - r0
        keep = torch.arange(r1, device=dev)[None, :] <= torch.arange(r0, r1, device=dev)[:, None]
        p = torch.empty(b, h, n_layers, n * r1, dtype=torch.float32, device=dev)
        for layer in range(n_layers):
            qb = q[layer][:, :, r0:r1].reshape(b, hkv, g * n, d)  # query head i uses kv head i // g
            scores = torch.matmul(qb, k[layer][:, :, :r1].transpose(-1, -2)).view(b, h, n, r1) * scale
            p[:, :, layer] = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).flatten(2)
        dots += torch.matmul(p, p.transpose(-1, -2))
    norms = dots.diagonal(dim1=-2, dim2=-1).sqrt()
    cos = dots / (norms[..., :, None] * norms[..., None, :])
    return cos.double().sum(dim=(0, 1)).cpu()


# ---------------------------------------------------------------- variants from one set of weights
def derive_variant(base, variant):
    """The `variant` model on the baseline's own tensors (shared storage: no copy, no disk read)."""
    from sabench.model import build_model

    m = build_model(base.cfg, variant, dtype=base.lm_weight.dtype, device="meta")
    state = base.state_dict()
    wanted = m.state_dict()
    extra = [n for n in wanted if n not in state]
    if extra:
        raise ValueError(f"variant {variant!r} needs tensors the baseline lacks, e.g. {extra[:3]}")
    m.load_state_dict({n: state[n] for n in wanted}, assign=True)
    for name, buf in list(m.named_buffers()):  # non-persistent buffers (RoPE frequencies)
        if buf.is_meta:
            owner, _, attr = name.rpartition(".")
            setattr(m.get_submodule(owner), attr, base.get_buffer(name))
    return m.eval()


# ---------------------------------------------------------------- the whole evaluation
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(name: str) -> torch.device:
    from sabench.devices import resolve_device

    return torch.device(resolve_device(name))


def evaluate(model: str, *, variants: Optional[Sequence[str]] = None, text=None, token_ids=None,
             seq_len: Optional[int] = None, max_windows: Optional[int] = None, dtype=None, device=None,
             progress: bool = True, stride: Optional[int] = None, budget: Optional[float] = None,
             candidates: Optional[int] = None, kv_advice: bool = False) -> dict:
    """The `sabench quality` result (see the README and docs/quality.md for its keys). Bad input
    raises ValueError (or FileNotFoundError) before any model is loaded; so do a baseline whose
    logits are not finite (after loading)."""
    from sabench import accounting, advice
    from sabench.dtypes import dtype_name
    from sabench.model import load_model
    from sabench.plan import plan_for
    from sabench.presets import resolve_config, weight_files

    cfg = resolve_config(model)
    requested = list(variants) if variants else ["baseline", RECOMMENDED]
    for v in requested:
        if v != RECOMMENDED:
            plan_for(v, cfg)
    dev = _device(device or default_device())
    dtype = dtype_name(dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    seq_len = seq_len or min(2048, cfg.max_position_embeddings)
    if not 2 <= seq_len <= cfg.max_position_embeddings:
        raise UserError(f"--seq-len must be in 2..{cfg.max_position_embeddings} (the model's positions), "
                         f"got {seq_len}")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows must be >= 1, got {max_windows}")
    if stride is not None and not 1 <= stride <= seq_len:
        raise UserError(f"--stride must be in 1..--seq-len ({seq_len}), got {stride}")
    budget = advice.DEFAULT_BUDGET if budget is None else budget
    candidates = advice.DEFAULT_CANDIDATES if candidates is None else candidates
    if candidates < 0:
        raise UserError(f"--candidates must be >= 0 (0: no advice), got {candidates}")
    if variants and RECOMMENDED in variants and not candidates:
        raise UserError("--variant recommended scores the advice's plan, and --candidates 0 turns the "
                         "advice off: drop one of them")
    if not candidates:  # the default variants without the advice: the baseline alone
        requested = [v for v in requested if v != RECOMMENDED]
    if (text is None) == (token_ids is None):
        raise UserError("give exactly one of --text FILE and --token-ids FILE")
    if text is not None and cfg.source == "preset":
        raise UserError(f"--text needs a tokenizer, and preset {str(model)!r} has none: give a model "
                         "directory or use --token-ids")
    tokens = (tokenize_text(text, Path(cfg.source).parent, cfg.vocab_size) if text is not None
              else read_token_ids(token_ids, cfg.vocab_size))
    windows = win.make(tokens, seq_len, max_windows, stride)

    weights = "checkpoint" if cfg.source != "preset" and weight_files(model) else "random"
    base = load_model(model, "baseline", dtype, dev, weights="auto")
    try:
        base_ppl, sim = score(base, windows, with_similarity=True, desc="baseline", progress=progress,
                              check_finite=True)
    except NonFiniteLogits as e:
        raise UserError(f"the baseline's logits are not finite (NaN or inf) on {e} of {str(model)!r}: "
                         f"the {weights} weights are broken, or {dtype} overflows; check the checkpoint "
                         "(or try --dtype float32)") from None

    scored = {}

    def measure(v: str) -> float:
        plan = plan_for(v, cfg)  # once per variant string; the plan goes on
        if plan.variant not in scored:
            scored[plan.variant] = score(derive_variant(base, plan), windows, desc=v, progress=progress)[0]
        return scored[plan.variant]

    advised = (advice.advise(cfg, sim.tolist(), measure, base_ppl, seq_len=seq_len, dtype=dtype,
                             budget=budget, candidates=candidates) if RECOMMENDED in requested else None)
    shown = advice.shown_plan(advised)  # (variant, role) or None
    roles = {plan_for(shown[0], cfg).variant: shown[1]} if shown else {}
    kv_advised = None
    if kv_advice:
        from sabench import kv_advice as kva

        kv_advised = kva.advise_kv(cfg, kva.kv_similarity(base, windows.inputs), measure, base_ppl,
                                   seq_len=seq_len, dtype=dtype, budget=budget,
                                   candidates=candidates or advice.DEFAULT_CANDIDATES)

    names, seen = [], set()
    for v in ["baseline"] + requested:  # the baseline always comes first: deltas are against it
        v = (shown[0] if shown else None) if v == RECOMMENDED else v
        key = v and plan_for(v, cfg).variant
        if v and key not in seen:  # rows carry the canonical name, as run records do ("native" expanded)
            seen.add(key)
            names.append(key)
    rows = []
    for v in names:
        plan = plan_for(v, cfg)
        ppl = base_ppl if plan.is_baseline else measure(v)
        rows.append({"variant": v, "perplexity": ppl, "delta_vs_baseline": ppl - base_ppl,
                     "kv_cache_bytes_per_token": accounting.kv_bytes_per_token(cfg, plan, dtype),
                     "advice_role": roles.get(plan.variant)})
    return {
        "model": str(model), "weights": weights, "dtype": dtype, "device": str(dev),
        "tokens": windows.tokens, "input_tokens": tokens.numel(), "windows": windows.count,
        "seq_len": seq_len, "stride": stride, "predictions": windows.predictions,
        "perplexity_convention": windows.convention(),
        "variants": rows,
        "attention_similarity": [[round(x, 6) for x in row] for row in sim.tolist()],
        "advice": advised, "kv_advice": kv_advised,
    }

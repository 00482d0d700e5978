"""One Llama-family decoder that executes any sharing plan.

Module names follow transformers' Llama (`model.layers.N.self_attn.q_proj`, ...)
so a checkpoint's state dict loads as is; a plan only removes the projections a
layer no longer needs (no Q/K for an SA layer, no K/V for a CLA non-owner).

The building blocks (norm, RoPE, MLP, attention, decoder layer, KV cache) are in
layers.py. The KV cache is preallocated and written in place with `index_copy_`; a decode
step has static shapes (it attends over the whole buffer under a mask) and never
reads a value back to the host, so it can be captured in a CUDA graph.

SA spans run as the plan's `sa_strategy` says (plan.py): the source layer hands
on P (`probs`) or its Q and K for a fused SDPA in every shared layer (`recompute`,
prefill only). `set_execution("compiled")` compiles regionally: one torch.compile'd
function runs every decoder layer (the layers of a kind, same code and same shapes,
share one graph, so a 32-layer model is traced about as fast as a 1-layer one) and
another the final norm and lm_head. A layer returns its MLP output unadded; the next
layer's graph adds it before its norm, so the residual add still fuses with the norm
as in a whole-model graph. Nothing else runs between layers but Python, which a CUDA
graph of the step (the harness, generate) removes.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sabench import ops
from sabench.dtypes import parse_dtype
from sabench.layers import DecoderLayer, KVCache, RMSNorm, DecodeStep, rope_inv_freq
from sabench.plan import SharingPlan, as_plan
from sabench.presets import ModelConfig, ModelSourceError, resolve_config, weight_files


EXECUTIONS = ("eager", "compiled")
COMPILED_GRAPHS_MAX = 64  # dynamo's recompile limit for the layer function (default 8 is too few)
GENERATE_GRAPHS_KEPT = 4  # generate's captured decode graphs (each with its cache) kept, by shape


def _call_layer(layer: DecoderLayer, *args):
    """One code object for every layer, so compiled layers of a kind share one graph."""
    return layer(*args)


# ---------------------------------------------------------------- the model
class SharedLlama(nn.Module):
    """A Llama-family decoder executing `plan`.

    model(input_ids) -> logits [B, T, vocab] (full forward, a throwaway cache);
    model.generate(input_ids, max_new_tokens=n) -> ids [B, T+n], greedy, cached.
    For benchmarking: new_cache, prefill, decode_step.
    """

    def __init__(self, cfg: ModelConfig, plan: SharingPlan):
        super().__init__()
        if plan.num_layers != cfg.num_layers:
            raise ValueError(f"plan has {plan.num_layers} layers, model {cfg.num_layers}")
        self.cfg, self.plan = cfg, plan
        sources = plan.sources_of_attention()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg, lp, lp.index in sources) for lp in plan.layers)
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self._graphs: dict = {}  # generate's CUDA graphs, by (batch, length, device, execution)
        self.set_execution("eager")

    # -- weights ---------------------------------------------------------------
    @property
    def lm_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    @torch.no_grad()
    def init_random(self, std: float = 0.02, seed: int = 0, shard=None) -> "SharedLlama":
        """The random weights of `seed`: norms 1, biases 0, every other parameter N(0, std), drawn on
        the CPU from one generator in parameter order, on a GPU from a seed per parameter name (drawn
        there: a CPU detour would cost minutes for 8B weights).

        shard(name, whole tensor) -> the part this model keeps (a tensor-parallel rank passes
        parallel.shard_tensor): each parameter is then drawn at the whole model's shape (`full_cfg`),
        one at a time, and only the part is kept, so a rank holds slices of the very weights the whole
        model of `seed` draws, never the whole model in memory."""
        whole = {}
        if shard is not None:
            full_cfg = getattr(self, "full_cfg", self.cfg)
            whole = dict(build_model(full_cfg, self.plan, self.lm_weight.dtype, "meta").named_parameters())
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                drawn = p if shard is None else torch.empty(whole[name].shape, dtype=p.dtype, device=p.device)
                if p.device.type == "cpu":
                    drawn.normal_(0.0, std, generator=gen)
                else:
                    torch.manual_seed(seed * 100_003 + zlib.crc32(name.encode()))
                    drawn.normal_(0.0, std)
                if shard is not None:
                    p.copy_(shard(name, drawn))
        return self

    # -- positions -------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """Preallocate the cache for `max_len` positions; sized by the plan."""
        if max_len > self.cfg.max_position_embeddings:
            raise ValueError(f"{max_len} positions exceed the model's {self.cfg.max_position_embeddings}")
        w = self.model.embed_tokens.weight
        return KVCache(self.cfg, self.plan, batch_size, max_len, w.dtype, w.device, self.inv_freq)

    # -- execution -------------------------------------------------------------
    def set_execution(self, execution: str = "eager", dynamic: bool = True) -> "SharedLlama":
        """How prefill chunks and decode steps run: "eager" (plain PyTorch) or "compiled".

        compiled: torch.compile (Inductor; Triton kernels on CUDA, C++ on CPU), regional:
        one compiled function runs every decoder layer and one the head (final norm and
        lm_head). Dynamo keys its graphs by code object and guards on what a layer reads
        (its kind's flags, tensor shapes), not on which layer it is, so the layers of a
        kind share one graph: a few graphs per phase (first layer, plain, CLA non-owner,
        SA source and shared layer; causal and chunked prefill, decode) instead of one
        trace of the whole model, whose warm load took ~8 s a process on the 8B shape.
        fullgraph: a graph break is an error, not a silent slowdown. `dynamic` keeps batch
        and sequence sizes symbolic so one artefact serves every point of a sweep (sizes
        0 and 1 are always specialised by dynamo), and Inductor's on-disk caches
        (TORCHINDUCTOR_CACHE_DIR) let later processes skip most of the compile.
        Compilation happens lazily on the first call of each, which callers keep untimed.
        """
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
        self.execution = execution
        if execution == "compiled":
            # every (layer kind, phase) is one cache entry of _call_layer's code object
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_GRAPHS_MAX)
            self._layer_fn = torch.compile(_call_layer, dynamic=dynamic, fullgraph=True)
            self._head_fn = torch.compile(self._head, dynamic=dynamic, fullgraph=True)
        else:
            self._layer_fn, self._head_fn = _call_layer, self._head
        return self

    def _head(self, x: torch.Tensor, pending: torch.Tensor, logits_last_only: bool) -> torch.Tensor:
        if logits_last_only:
            x, pending = x[:, -1:], pending[:, -1:]
        return F.linear(self.model.norm(x + pending), self.lm_weight)

    def _run(self, input_ids: torch.Tensor, st: DecodeStep, cache: KVCache, logits_last_only: bool) -> torch.Tensor:
        x, pending, shared = self.model.embed_tokens(input_ids), None, {}
        for layer in self.model.layers:
            lp = layer.lp
            # a layer that computes its own attention finds nothing under its own index
            x, pending, handed_on = self._layer_fn(layer, x, pending, st, *cache.layer_buffers(lp),
                                                   shared.get(lp.attn_source))
            if handed_on is not None:
                shared[lp.index] = handed_on
        return self._head_fn(x, pending, logits_last_only)

    def _prefill_chunk(self, ids: torch.Tensor, cache: KVCache, start: int, causal: bool, last_only: bool):
        """causal: the chunk starts the sequence (start == 0; decided by the caller so that
        `start` can stay a symbolic size in a compiled graph)."""
        t = ids.shape[1]
        end = start + t
        dev = ids.device
        mask = None if causal else ops.causal_mask(t, end, dev)
        st = DecodeStep(cache.cos[start:end], cache.sin[start:end], torch.arange(start, end, device=dev),
                   mask, causal, share_probs=self.plan.sa_strategy == "probs")
        return self._run(ids, st, cache, last_only)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: KVCache, chunk_size: Optional[int] = None,
                start: int = 0) -> torch.Tensor:
        """Fill the cache with the prompt; logits of the last position [B, 1, vocab].

        chunk_size bounds activation memory (notably SA's materialised P with the
        /probs strategy, which is B x H x chunk x context instead of B x H x T x T)
        by running the whole model over query blocks, each attending to everything
        cached before it.
        """
        t = input_ids.shape[1]
        step = chunk_size or t
        if step < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if start + t > cache.max_len:
            raise ValueError(f"prompt ends at position {start + t}, beyond the cache's {cache.max_len}")
        logits = None
        for s in range(0, t, step):
            # a fresh contiguous tensor (a few bytes a token): one layout for every chunk and no
            # view of another tensor, so a compiled chunk never recompiles on strides or bases
            chunk = input_ids[:, s: s + step].clone(memory_format=torch.contiguous_format)
            logits = self._prefill_chunk(chunk, cache, start + s, start + s == 0, True)
        return logits

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per sequence. tokens [B, 1]; pos: long tensor on the device, [1] (every
        sequence at one position) or [B] (each at its own: continuous batching).

        Static shapes, no host reads: attends over the whole buffer with positions
        beyond each sequence's own masked, so the step can be captured in a CUDA graph. P is
        kept for SA in decode with either strategy (one row per head; plan.py says why).
        """
        cos = cache.cos.index_select(0, pos)[:, None, None]
        sin = cache.sin.index_select(0, pos)[:, None, None]
        mask = (torch.arange(cache.max_len, device=pos.device) <= pos[:, None])[:, None, None]
        st = DecodeStep(cos, sin, pos, mask, False, share_probs=True, per_sequence=True)
        return self._run(tokens, st, cache, logits_last_only=True)

    def _greedy_step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        logits = self.decode_step(tokens, pos, cache)
        tokens.copy_(logits[:, -1].argmax(-1, keepdim=True))
        pos.add_(1)
        return logits

    def greedy_step_fn(self, cache: KVCache, tokens: torch.Tensor, pos: torch.Tensor):
        """A zero-argument step for loops and CUDA graphs: decode `tokens` at `pos`,
        write the argmax back into `tokens` and advance `pos`, all on the device
        (its layers and head compiled when the model's execution is "compiled")."""
        return lambda: self._greedy_step(tokens, pos, cache)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full forward without a persistent cache: logits [B, T, vocab] (always eager)."""
        b, t = input_ids.shape
        cache = self.new_cache(b, t)
        return self._prefill_chunk(input_ids, cache, 0, True, last_only=False)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, prefill_chunk: Optional[int] = None,
                 cuda_graph: Optional[bool] = None):
        """Greedy decoding with the static cache; returns ids [B, T + max_new_tokens].

        cuda_graph (default: on CUDA) replays the decode step from a CUDA graph, compiled
        first when the model's execution is "compiled": the step the benchmark times, the
        same tokens as eager execution. The graph, its cache and its step tensors are kept
        per (batch, T + max_new_tokens), for the GENERATE_GRAPHS_KEPT most recent shapes, and
        reused by later calls of that shape, so only the first call pays the capture;
        free_generate_graphs() gives their memory back.
        """
        b, t = input_ids.shape
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        dev = input_ids.device
        out = torch.empty(b, t + max_new_tokens, dtype=torch.long, device=dev)
        out[:, :t] = input_ids
        if max_new_tokens == 0:
            return out
        use_graph = (dev.type == "cuda" if cuda_graph is None else cuda_graph) and max_new_tokens > 1
        if use_graph:
            cache, tokens, pos, graph = self._generate_graph(b, t + max_new_tokens, dev)
            step = graph.replay
        else:
            cache = self.new_cache(b, t + max_new_tokens)
            tokens = torch.empty(b, 1, dtype=torch.long, device=dev)
            pos = torch.empty(1, dtype=torch.long, device=dev)
            step = self.greedy_step_fn(cache, tokens, pos)
        # Positions past the prompt may hold an earlier call's K/V: every step writes its
        # position before attending to it, and attends to nothing beyond it.
        logits = self.prefill(input_ids, cache, prefill_chunk)
        tokens.copy_(logits[:, -1].argmax(-1, keepdim=True))
        out[:, t: t + 1] = tokens
        pos.fill_(t)
        for _ in range(max_new_tokens - 1):
            step()
            out.index_copy_(1, pos, tokens)
        return out

    def _generate_graph(self, batch_size: int, max_len: int, device: torch.device):
        key = (batch_size, max_len, str(device), self.execution)
        if key in self._graphs:
            self._graphs[key] = self._graphs.pop(key)  # most recently used last
        else:
            from sabench.measure.timing import CudaGraphStep

            while len(self._graphs) >= GENERATE_GRAPHS_KEPT:  # the least recently used shape goes
                self._graphs.pop(next(iter(self._graphs)))[-1].close()
            cache = self.new_cache(batch_size, max_len)
            tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
            pos = torch.zeros(1, dtype=torch.long, device=device)  # the warm-up step writes position 0
            graph = CudaGraphStep(self.greedy_step_fn(cache, tokens, pos), device=device, warmup_iters=1)
            self._graphs[key] = (cache, tokens, pos, graph)
        return self._graphs[key]

    def free_generate_graphs(self) -> None:
        """Drop generate's captured graphs and their caches (their memory goes back to torch)."""
        for *_, graph in self._graphs.values():
            graph.close()
        self._graphs.clear()


# ---------------------------------------------------------------- loading
def _resolve_device(device) -> torch.device:
    from sabench.devices import resolve_device

    return torch.device(resolve_device(device))


def build_model(source, variant: str = "baseline", dtype=torch.bfloat16, device="meta") -> SharedLlama:
    """The model's modules with uninitialised storage (meta by default: no memory, for accounting)."""
    cfg = resolve_config(source)
    if cfg.cannot_run and str(device) != "meta":  # meta modules only count (inspect --count)
        raise ModelSourceError(f"{cfg.source}: sabench cannot run this model: {cfg.cannot_run}")
    plan = as_plan(variant, cfg)
    with torch.device("meta"):
        m = SharedLlama(cfg, plan)
    m = m.to(dtype=parse_dtype(dtype)).requires_grad_(False)  # inference only: no autograd bookkeeping
    if str(device) != "meta":
        m = m.to_empty(device=_resolve_device(device))
        m.inv_freq = rope_inv_freq(cfg).to(m.inv_freq.device)
    return m.eval()


@contextlib.contextmanager
def _open_checkpoint(f):
    """safe_open with a damaged or unreadable file as a ModelSourceError naming it (the user can fix it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            yield sf
    except (SafetensorError, OSError) as e:
        raise ModelSourceError(f"{f}: not a readable safetensors checkpoint ({' '.join(str(e).split())}), "
                               "re-download the file or remove it to use random weights") from None


@torch.no_grad()
def load_weights(model: SharedLlama, files, transform=None) -> dict:
    """Copy checkpoint tensors into `model`; tensors of projections the plan removed are skipped.

    transform(name, tensor) -> tensor, when given, maps each checkpoint tensor the model keeps
    before it is copied (parallel.py: a tensor-parallel rank's slice).

    Returns {"loaded": n, "dropped": [names]}; raises ModelSourceError when the
    checkpoint lacks a tensor the model needs or holds one no plan would explain.
    """
    params = dict(model.named_parameters())
    base_names = {n for n, _ in build_model(model.cfg, "baseline").named_parameters()}  # meta: free
    loaded, dropped, unexpected = set(), [], []
    for f in files:
        with _open_checkpoint(f) as sf:
            for name in sf.keys():
                if name in params:
                    t = sf.get_tensor(name)
                    if transform is not None:
                        t = transform(name, t)
                    if t.shape != params[name].shape:
                        raise ModelSourceError(
                            f"{f}: tensor {name} has shape {tuple(t.shape)}, the config implies "
                            f"{tuple(params[name].shape)}")
                    params[name].copy_(t)
                    loaded.add(name)
                elif name in base_names or (name == "lm_head.weight" and model.cfg.tie_word_embeddings):
                    dropped.append(name)
                elif not name.endswith("rotary_emb.inv_freq"):
                    unexpected.append(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ModelSourceError(f"checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}")
    if unexpected:
        raise ModelSourceError(f"checkpoint holds {len(unexpected)} tensors sabench does not know, "
                               f"e.g. {unexpected[:3]}")
    return {"loaded": len(loaded), "dropped": sorted(dropped)}


def load_model(source, variant: str = "baseline", dtype=torch.bfloat16, device=None,
               weights: str = "auto", seed: int = 0) -> SharedLlama:
    """A ready model: `source` is a preset, an HF model directory or a config.json path.

    device=None: CUDA when it is available, else the CPU.
    weights="auto" loads safetensors when the directory holds them, random
    weights (std 0.02, seeded) otherwise; "random" always uses random weights.
    """
    if weights not in ("auto", "random"):
        raise ValueError(f"weights must be 'auto' or 'random', got {weights!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = resolve_config(source)
    files = weight_files(cfg.source) if weights == "auto" and cfg.source != "preset" else []
    m = build_model(cfg, variant, dtype, device)
    if files:
        m.load_report = load_weights(m, files)
    else:
        m.init_random(seed=seed)
    return m

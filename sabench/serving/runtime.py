"""Continuous batching over one static cache of S slots: the runtime a serving scheduler drives.

A slot holds one request. Admitting a request prefills its prompt into a free slot through a
batch-1 view of the cache (`KVCache.slot`), so the sharing plan is honoured exactly as in
`generate`: a CLA group's owner writes the group's K/V once, an SA span's source hands P (or,
with /recompute, its Q and K) to the span within that prefill. A decode step then advances every
slot at once, each at its own position (`SharedLlama.decode_step` with positions [S]): static
shapes and no host read inside the step, so it compiles and, on CUDA, replays as a graph.

Free slots ride along in the step (a static batch) at position 0, which stays put (`active` is 0),
so they rewrite their own row there and nothing else; the next prefill overwrites it.
"""
from __future__ import annotations

from typing import Optional

import torch

from sabench.model import SharedLlama


class SlotRuntime:
    """S slots of `max_len` positions each. admit() -> (slot, first token); step() -> each slot's
    next token; release(slot) frees it. A request of prompt T and n output tokens needs T + n - 1
    positions (its last token is never written back)."""

    def __init__(self, model: SharedLlama, slots: int, max_len: int, prefill_chunk: Optional[int] = None,
                 cuda_graph: Optional[bool] = None):
        if slots < 1:
            raise ValueError(f"a runtime needs at least one slot, got {slots}")
        self.model, self.slots, self.max_len, self.prefill_chunk = model, slots, max_len, prefill_chunk
        dev = model.inv_freq.device
        self.device = dev
        self.cache = model.new_cache(slots, max_len)
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(slots, dtype=torch.long, device=dev)
        self.active = torch.zeros(slots, dtype=torch.long, device=dev)  # 1: the slot's position advances
        self._free = list(range(slots))
        use_graph = dev.type == "cuda" if cuda_graph is None else cuda_graph
        if use_graph:
            from sabench.measure.timing import CudaGraphStep

            self._step = CudaGraphStep(self._decode, device=dev, warmup_iters=1).replay
        else:
            self._step = self._decode

    @torch.no_grad()
    def _decode(self) -> torch.Tensor:
        logits = self.model.decode_step(self.tokens, self.pos, self.cache)
        self.tokens.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.pos.add_(self.active)
        return logits

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @torch.no_grad()
    def admit(self, prompt: torch.Tensor, max_new_tokens: int) -> tuple[int, int]:
        """Prefill `prompt` ([T] token ids) into the lowest free slot; (slot, first token).
        Reading the first token back synchronises: the caller's clock then sees the work done."""
        if not self._free:
            raise RuntimeError("no free slot: admit only when free_slots > 0")
        t = prompt.shape[-1]
        if t < 1 or max_new_tokens < 1:
            raise ValueError(f"a request needs a prompt and an output, got {t} and {max_new_tokens} tokens")
        if t + max_new_tokens - 1 > self.max_len:
            raise ValueError(f"a request of {t} + {max_new_tokens} tokens exceeds the slots' {self.max_len} positions")
        slot = min(self._free)
        self._free.remove(slot)
        ids = prompt.reshape(1, t).to(self.device)
        logits = self.model.prefill(ids, self.cache.slot(slot), self.prefill_chunk)
        first = logits[0, -1].argmax()
        self.tokens[slot, 0] = first
        self.pos[slot] = t
        self.active[slot] = 1
        return slot, int(first)

    def step(self) -> list[int]:
        """One decode step over every slot; each slot's new token (free slots' are meaningless)."""
        self._step()
        return self.tokens[:, 0].tolist()

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in use")
        self.active[slot] = 0
        self.pos[slot] = 0  # a full slot's next position lies past the cache; a free one rewrites 0
        self._free.append(slot)

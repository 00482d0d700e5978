"""Continuous batching changes no request's tokens: each request's greedy output, decoded beside
others at other positions in one static cache (arriving at different steps, slots reused), equals
what `generate` gives it alone."""
import pytest
import torch

from sabench.model import load_model
from sabench.serving.runtime import SlotRuntime
from tests.helpers import sharpen

# (arrival step, prompt length, output tokens): 5 requests through 2 slots, so slots are reused
# while the other slot is mid-sequence, and one request (1 token) finishes at its prefill
REQUESTS = [(0, 7, 6), (0, 3, 9), (2, 12, 4), (4, 5, 1), (5, 9, 7)]


def _model(variant):
    # batched and alone runs differ in rounding only, never by an argmax tie
    return sharpen(load_model("tiny", variant, torch.float32, "cpu", seed=2))


def _serve(rt: SlotRuntime, prompts):
    """FCFS by hand: admit arrived requests into free slots before each decode step."""
    out = {i: [] for i in range(len(REQUESTS))}
    waiting, in_slot, step = list(range(len(REQUESTS))), {}, 0
    reused = set()
    while waiting or in_slot:
        while waiting and REQUESTS[waiting[0]][0] <= step and rt.free_slots:
            i = waiting.pop(0)
            slot, first = rt.admit(prompts[i], REQUESTS[i][2])
            reused |= {slot} & set(s for s, _ in out.get("slots", []))
            out.setdefault("slots", []).append((slot, i))
            out[i].append(first)
            if len(out[i]) == REQUESTS[i][2]:
                rt.release(slot)
            else:
                in_slot[slot] = i
        if in_slot:
            tokens = rt.step()
            for slot, i in list(in_slot.items()):
                out[i].append(tokens[slot])
                if len(out[i]) == REQUESTS[i][2]:
                    rt.release(slot)
                    del in_slot[slot]
        step += 1
    return out, reused


@pytest.mark.parametrize("variant", ["baseline", "cla:2", "sa:2-3", "sa:2-3/recompute", "cla:2+sa:2-3"])
def test_continuous_batching_gives_each_request_its_tokens_alone(variant):
    m = _model(variant)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 512, (t,), generator=gen) for _, t, _ in REQUESTS]
    rt = SlotRuntime(m, slots=2, max_len=max(t + n for _, t, n in REQUESTS), prefill_chunk=4)
    out, reused = _serve(rt, prompts)
    assert reused, "the scenario must reuse a slot"
    for i, (_, t, n) in enumerate(REQUESTS):
        alone = m.generate(prompts[i][None], n)[0, t:].tolist()
        assert out[i] == alone, f"request {i}"


def test_admit_refuses_what_does_not_fit():
    rt = SlotRuntime(_model("baseline"), slots=1, max_len=8)
    with pytest.raises(ValueError, match="exceeds"):
        rt.admit(torch.zeros(6, dtype=torch.long), 4)
    rt.admit(torch.zeros(6, dtype=torch.long), 3)
    with pytest.raises(RuntimeError, match="no free slot"):
        rt.admit(torch.zeros(2, dtype=torch.long), 2)
    rt.release(0)
    with pytest.raises(ValueError, match="not in use"):
        rt.release(0)


def test_a_slot_filled_to_the_last_position_can_be_freed_while_others_decode():
    m = _model("cla:2")
    rt = SlotRuntime(m, slots=2, max_len=10)
    a, _ = rt.admit(torch.arange(6), 5)  # positions 0..9: the whole slot
    b, first = rt.admit(torch.arange(3), 7)
    out = [first]
    for _ in range(4):
        out.append(rt.step()[b])
    rt.release(a)
    out += [rt.step()[b] for _ in range(2)]  # slot a rides along, freed
    assert out == m.generate(torch.arange(3)[None], 7)[0, 3:].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_runtime_gives_each_request_its_tokens_alone():
    m = sharpen(load_model("tiny", "cla:2+sa:2-3", torch.float32, "cuda", seed=2))
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 512, (t,), generator=gen) for _, t, _ in REQUESTS]
    rt = SlotRuntime(m, slots=2, max_len=max(t + n for _, t, n in REQUESTS), cuda_graph=True)
    out, _ = _serve(rt, prompts)
    for i, (_, t, n) in enumerate(REQUESTS):
        assert out[i] == m.generate(prompts[i][None].cuda(), n, cuda_graph=False)[0, t:].tolist(), f"request {i}"

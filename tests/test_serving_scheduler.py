"""The serving loop and its metrics: schedules worked out by hand on a virtual clock, summaries
computed by hand from raw per-request figures, and the model runtime under the same loop."""
import math

import numpy as np
import pytest
import torch

from sabench.model import load_model
from sabench.records.serving import RequestRecord
from sabench.serving.metrics import Targets, summarize
from sabench.serving.runtime import SlotRuntime
from sabench.serving.scheduler import ModelEngine, VirtualClock, WallClock, serve
from sabench.serving.simulate import CostEngine, StepCosts
from sabench.serving.stream import ClosedLoop, Lengths, Poisson, Request, Workload
from tests.helpers import sharpen

COSTS = StepCosts(prefill_s=1.0, prefill_per_token_s=0.0, decode_s=0.5)


class Fixed(Workload):
    def __init__(self, *requests):
        self.requests = [Request(i, a, p, o) for i, (a, p, o) in enumerate(requests)]

    def initial(self):
        return list(self.requests)


def _sim(slots, workload, costs=COSTS):
    clock = VirtualClock()
    return serve(CostEngine(slots, costs, clock), workload, clock)


def test_one_slot_queues_fcfs_by_hand():
    # request 0 holds the only slot 0..2.0 (prefill 1 s, two 0.5 s steps); request 1 waits from 0.2
    r0, r1 = _sim(1, Fixed((0.0, 4, 3), (0.2, 4, 2)))
    assert r0.token_s == (1.0, 1.5, 2.0) and r0.queue_wait_s == 0.0
    assert r1.admitted_s == 2.0 and r1.token_s == (3.0, 3.5)
    assert math.isclose(r1.queue_wait_s, 1.8) and math.isclose(r1.ttft_s, 2.8) and math.isclose(r1.e2e_s, 3.3)
    assert r1.tpot_s == 0.5 and r1.itl_s == [0.5]


def test_an_arrival_is_prefilled_before_the_next_decode_step():
    # request 1 arrives during request 0's first step (1.0..1.5): prefilled 1.5..2.5, then one step
    # serves both, so request 0's gap includes that prefill
    r0, r1 = _sim(2, Fixed((0.0, 4, 3), (1.2, 4, 2)))
    assert r0.token_s == (1.0, 1.5, 3.0)
    assert r1.admitted_s == 1.5 and r1.token_s == (2.5, 3.0)
    assert r0.itl_s == [0.5, 1.5] and r0.tpot_s == 1.0


def test_one_token_requests_finish_at_their_prefill():
    (r,) = _sim(1, Fixed((0.5, 4, 1)))
    assert r.token_s == (1.5,) and r.tpot_s == 0.0 and r.ttft_s == r.e2e_s == 1.0


def test_summary_equals_hand_computation():
    recs = [RequestRecord(0, 8, 3, 0, 0.0, 0.0, (0.1, 0.2, 0.4)),   # ttft .1 tpot .15 e2e .4
            RequestRecord(1, 8, 2, 1, 0.5, 0.6, (0.9, 1.0)),          # ttft .4 tpot .1  e2e .5
            RequestRecord(2, 8, 4, 0, 1.0, 1.0, (1.2, 1.5, 1.8, 2.0))]  # ttft .2 tpot .2667 e2e 1.0
    s = summarize(recs, Targets(ttft_ms=300, tpot_ms=200))  # only request 0 meets both
    assert s.duration_s == 2.0 and s.requests == 3
    assert s.output_tokens_per_s == 9 / 2.0 and s.requests_per_s == 1.5
    assert s.goodput_rps == 0.5 and s.goodput_share == pytest.approx(1 / 3)
    # linear interpolation: rank p/100 * (n-1) in the sorted values
    assert s.ms["ttft"][50] == pytest.approx(200) and s.ms["ttft"][90] == pytest.approx(200 + 0.8 * 200)
    assert s.ms["tpot"][50] == pytest.approx(150)
    assert s.ms["e2e"][99] == pytest.approx(500 + 0.98 * 500)
    # ITL pools every gap: .1 .2 | .1 | .3 .3 .2 -> sorted .1 .1 .2 .2 .3 .3, median .2
    assert s.ms["itl"][50] == pytest.approx(200)
    assert s.ms["queue_wait"][50] == pytest.approx(0)  # 0, .1, 0
    assert s.tokens_per_s_per_user == pytest.approx(1 / 0.15)
    assert summarize(recs).goodput_share == 1.0  # no targets: every request counts


def test_far_below_capacity_every_target_met_and_no_queueing():
    costs = StepCosts(prefill_s=0.01, prefill_per_token_s=1e-4, decode_s=0.002, decode_per_slot_s=1e-4)
    stream = Poisson(rate=0.5, count=40, prompt=Lengths(8, 32), output=Lengths(2, 10), seed=3)
    recs = _sim(4, stream, costs)
    busy = [(r.admitted_s, r.token_s[-1]) for r in recs]
    for r in recs:
        # a request arriving while another is in flight may wait for the step under way, no more
        in_flight = any(a < r.arrival_s < b for a, b in busy)
        assert r.queue_wait_s <= (costs.decode(4, 4 * 42) if in_flight else 0.0)
        assert r.ttft_s <= r.e2e_s
    s = summarize(recs, Targets(ttft_ms=1e3 * costs.prefill(32) + 1e3 * costs.decode(4, 200),
                                tpot_ms=1e3 * costs.decode(4, 200) + 1e3 * costs.prefill(32)))
    assert s.goodput_share == 1.0 and s.ms["queue_wait"][50] == 0.0


def test_saturation_queues_and_more_slots_serve_more():
    costs = StepCosts(prefill_s=0.01, prefill_per_token_s=0.0, decode_s=0.01, decode_per_slot_s=0.001)
    stream = lambda: Poisson(rate=200, count=60, prompt=Lengths(8, 8), output=Lengths(16, 16), seed=1)
    few, many = summarize(_sim(2, stream())), summarize(_sim(8, stream()))
    assert many.requests_per_s > few.requests_per_s
    assert few.ms["queue_wait"][50] > many.ms["queue_wait"][50] > 0


def test_closed_loop_keeps_c_requests_in_flight():
    recs = _sim(8, ClosedLoop(clients=3, count=12, prompt=Lengths(4, 4), output=Lengths(3, 5), seed=0))
    assert len(recs) == 12
    ends = sorted(r.token_s[-1] for r in recs)
    for r in recs[3:]:  # every later request arrives the moment an earlier one finished
        assert r.arrival_s in ends
    for t in ends:
        assert sum(r.arrival_s <= t < r.token_s[-1] for r in recs) <= 3


def test_poisson_stream_is_seeded_with_exponential_gaps():
    a = Poisson(rate=4.0, count=4000, prompt=Lengths(1, 9), output=Lengths(5, 5), seed=11).initial()
    assert a == Poisson(rate=4.0, count=4000, prompt=Lengths(1, 9), output=Lengths(5, 5), seed=11).initial()
    gaps = np.diff([0.0] + [r.arrival_s for r in a])
    assert abs(gaps.mean() - 0.25) < 0.25 * 0.05  # 4000 draws: sd of the mean is 1.6% of it
    assert {r.prompt_len for r in a} == set(range(1, 10)) and {r.output_len for r in a} == {5}


@pytest.mark.parametrize("variant", ["baseline", "sa:2-3"])
def test_model_under_the_loop_gives_each_request_its_tokens_alone(variant):
    m = sharpen(load_model("tiny", variant, torch.float32, "cpu", seed=4))
    engine = ModelEngine(SlotRuntime(m, slots=2, max_len=32), seed=5)
    recs = serve(engine, ClosedLoop(3, 6, Lengths(3, 12), Lengths(1, 8), seed=2), WallClock())
    for r in recs:
        assert r.arrival_s <= r.admitted_s < r.token_s[0] and list(r.token_s) == sorted(r.token_s)
        assert r.ttft_s <= r.e2e_s and len(r.token_s) == r.output_len
        alone = m.generate(engine.prompt(Request(r.id, 0, r.prompt_len, r.output_len))[None], r.output_len)
        assert engine.outputs[r.id] == alone[0, r.prompt_len:].tolist()


def test_costs_fitted_on_a_simulated_run_are_the_costs_that_made_it():
    from sabench.serving.simulate import fit_costs, simulate, step_samples

    truth = StepCosts(prefill_s=0.004, prefill_per_token_s=2e-4, decode_s=0.003, decode_per_slot_s=5e-4,
                      decode_per_context_s=1e-5)
    runs = [simulate(truth, 4, Poisson(r, 40, Lengths(8, 40), Lengths(2, 12), seed=r)) for r in (20, 400)]
    pre, dec = step_samples(runs[0])
    for tokens, s in pre:
        assert s == pytest.approx(truth.prefill(tokens))
    for n, ctx, s in dec:
        assert s == pytest.approx(truth.decode(n, ctx))
    fitted = fit_costs(runs)
    for field in ("prefill_s", "prefill_per_token_s", "decode_s", "decode_per_slot_s", "decode_per_context_s"):
        assert getattr(fitted, field) == pytest.approx(getattr(truth, field), rel=1e-6, abs=1e-12)


def test_held_out_rates_are_predicted_exactly_when_the_runs_came_from_the_cost_model():
    from sabench.records.serving import SERVING_SCHEMA, ServingResults, ServingRun
    from sabench.serving.simulate import held_out, simulate

    truth = StepCosts(prefill_s=0.004, prefill_per_token_s=2e-4, decode_s=0.003, decode_per_slot_s=5e-4,
                      decode_per_context_s=1e-5)
    runs = []
    for rnd in (0, 1):
        for rate in (10, 60, 500):
            recs = simulate(truth, 4, Poisson(rate, 30, Lengths(8, 40), Lengths(2, 12), seed=rnd))
            runs.append(ServingRun("baseline", rnd, 4, 0, float(rate), None, tuple(recs)))
    rows = held_out(ServingResults(SERVING_SCHEMA, "now", {}, {}, tuple(runs)))
    assert [(v, r) for v, r, _, _ in rows] == [("baseline", 10.0), ("baseline", 60.0), ("baseline", 500.0)]
    for _, _, measured, predicted in rows:
        for k in measured:
            assert predicted[k] == pytest.approx(measured[k], rel=1e-6)

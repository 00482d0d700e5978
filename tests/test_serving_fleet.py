"""Fleet predictions: step costs at the closed forms' roofline floors, the sustained rate the
simulated scheduler keeps, GPUs for a demand; labelled as a prediction with its inputs."""
import math

import pytest

from sabench import accounting
from sabench.cli import main
from sabench.measure.calibrate import DATASHEET
from sabench.plan import parse_variant
from sabench.serving.fleet import RooflineCosts, predict, sustained_rate
from sabench.serving.metrics import Targets, summarize
from sabench.serving.simulate import simulate
from sabench.serving.stream import Lengths, Poisson
from sabench.tp_shapes import rank_config

PEAKS = DATASHEET["H100 SXM"]


@pytest.mark.parametrize("variant, tp", [("baseline", 1), ("cla:2", 1), ("sa:2-3", 2)])
def test_decode_cost_is_the_closed_form_floor_at_every_batch_and_context(variant, tp):
    costs = RooflineCosts("tiny", parse_variant(variant, 4), "bfloat16", PEAKS, tp)
    rank = rank_config(accounting.resolve_config("tiny"), tp)
    for slots, ctx in ((1, 7), (3, 100), (16, 2049)):
        flops = accounting.decode_flops(rank, costs.plan, slots, ctx).total
        nbytes = accounting.decode_step_bytes(rank, costs.plan, slots, ctx + 1, "bfloat16")
        link = accounting.all_reduce_bytes(rank, slots, 1, "bfloat16", tp)["per_rank"]
        floor = accounting.floor_s(flops, nbytes, link, PEAKS, accounting.NVLINK_DATASHEET["bytes_per_s"])
        assert costs.decode(slots, slots * ctx) == pytest.approx(floor["floor_s"], rel=1e-9)


def test_sustained_rate_meets_the_share_and_sets_the_gpu_count():
    costs = RooflineCosts("tiny", parse_variant("baseline", 4), "bfloat16", PEAKS)
    # targets that bind: a few steps of this (microsecond) model
    targets = Targets(ttft_ms=1e3 * 4 * costs.prefill(64), tpot_ms=1e3 * 3 * costs.decode(8, 8 * 72))
    rate = sustained_rate(costs, 8, 64, 16, targets, 0.9, requests=100)
    recs = simulate(costs, 8, Poisson(rate, 100, Lengths(64, 64), Lengths(16, 16), 0))
    assert summarize(recs, targets).goodput_share >= 0.9
    recs = simulate(costs, 8, Poisson(rate * 4, 100, Lengths(64, 64), Lengths(16, 16), 0))
    assert summarize(recs, targets).goodput_share < 0.9
    (p,) = predict("tiny", ["baseline"], "bfloat16", 2 ** 30, PEAKS, 64, 16, targets, 1e6, 0.9)
    assert p.gpus == math.ceil(1e6 / p.sustained_rps) and p.slots > 0


def test_fleet_prints_a_labelled_prediction(capsys):
    assert main(["fleet", "--model", "tiny", "--memory", "64MiB", "--prompt-len", "64", "--output-len", "8",
                 "--ttft-ms", "0.0003", "--tpot-ms", "0.001"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PREDICTION (simulated, not measured)") and "measured: nothing" in out
    assert "| baseline |" in out and "| cla:2 |" in out

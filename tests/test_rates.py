"""records.rates: a record's tokens/s, MFU, MBU and roofline floor, from its median, against
figures worked out by hand here."""
import pytest

from sabench.records.rates import with_rates
from sabench.records import Flops, Latency, PhaseRecord, PointSpec
from sabench.records.parallel import TensorParallel

PEAKS = {"peak_flops_per_s": 1e12, "peak_bandwidth_bytes_per_s": 1e12}


def test_a_prefill_rates_from_its_median_its_flops_and_bytes():
    rec = PhaseRecord("baseline", 2, 8, "prefill", "ok", flops=Flops(analytic=1_600_000_000),
                      bytes_moved=400_000_000, latency_ms=Latency.of([1.0, 2.0, 3.0]), tokens_per_s=1.0, mfu=9.0)
    r = with_rates(rec, PEAKS)
    assert r.tokens_per_s == pytest.approx(2 * 8 / 2e-3)  # B*T tokens per 2 ms prompt
    assert r.mfu == pytest.approx(1.6e9 / (2e-3 * 1e12)) and r.mbu == pytest.approx(4e8 / (2e-3 * 1e12))
    assert r.floor_ms == pytest.approx(1.6e9 / 1e12 * 1e3) and r.roofline_metric == "mfu"
    bare = with_rates(rec, {})  # no peaks: tokens/s still, the utilisations left as they were
    assert bare.tokens_per_s == pytest.approx(8000.0) and bare.mfu == 9.0 and bare.floor_ms is None


def test_a_tensor_parallel_decode_is_one_ranks_share_plus_its_link():
    tp = TensorParallel(world=2, per_rank={"flops": 800_000_000, "bytes_moved": 4_000_000_000},
                        link_bytes=4_000_000, link_bandwidth_bytes_per_s=1e9)
    rec = PhaseRecord("baseline", 2, 8, "decode", "ok", decode_tokens=4, flops=Flops(analytic=1_600_000_000),
                      bytes_moved=8_000_000_000, latency_ms=Latency.of([10.0]), tensor_parallel=tp)
    r = with_rates(rec, PEAKS)
    # per step (4 steps): the rank's 2e8 FLOPs, 1e9 bytes, 1e6 link bytes; the model's figures unused
    assert r.tokens_per_s == pytest.approx(2 / 10e-3)
    assert r.mfu == pytest.approx(2e8 / (10e-3 * 1e12)) and r.mbu == pytest.approx(1e9 / (10e-3 * 1e12))
    assert r.tensor_parallel.link_ms == pytest.approx(1e6 / 1e9 * 1e3)
    assert r.floor_ms == pytest.approx(1e9 / 1e12 * 1e3 + 1.0) and r.roofline_metric == "mbu"


def test_a_record_that_did_not_measure_is_left_as_it_is():
    rec = PhaseRecord.failed(PointSpec("cla:2", 4, 512), "decode", "oom", "CUDA out of memory")
    assert with_rates(rec, PEAKS) is rec

"""compare across topologies: 1 GPU against 8 GPUs tensor-parallel, total and per-GPU throughput."""
import re

import pytest

from report_fixtures import make_results, scale_timings, write_results
from sabench.records import RunRecord
from sabench.report import compare_runs
from sabench.report.topology import Topology, per_gpu, topology


def _run(parallel=None, device="NVIDIA H100 80GB HBM3"):
    d = make_results(seed=1, device_name=device)
    if parallel:
        d["suite"]["parallel"] = parallel
    return RunRecord.from_dict(d)


def test_topology_of_a_run():
    assert topology(_run()) == Topology(1, 1, "H100 80GB HBM3")
    t = topology(_run({"tensor": 8, "link_bandwidth": None}))
    assert (t.tensor, t.devices, t.gpus, t.label) == (8, 1, 8, "8×H100 80GB HBM3 TP-8")
    assert topology(_run({"tensor": 4, "data": 2})).gpus == 8
    assert topology(_run()).label == "1×H100 80GB HBM3"


@pytest.mark.parametrize("total,tensor,devices,want", [(1000.0, 1, 1, 1000.0), (4000.0, 8, 1, 500.0),
                                                        (4000.0, 4, 2, 500.0), (None, 8, 1, None)])
def test_per_gpu_is_total_over_tensor_degree_times_devices(total, tensor, devices, want):
    assert per_gpu(total, Topology(tensor, devices, "H100")) == want


def _row(md, title, variant, b, s):
    table = md.split(f"## {title}")[1].split("\n## ")[0]
    row = [line for line in table.splitlines() if re.match(rf"\|\s*{re.escape(variant)}\s*\|\s*{b}\s*\|\s*{s}\s*\|", line)]
    assert len(row) == 1, table
    return [c.strip() for c in row[0].strip("|").split("|")]


def test_compare_1_gpu_against_8_gpus_tp8_says_total_and_per_gpu_throughput(tmp_path):
    one = make_results(seed=1)
    tp8 = scale_timings(make_results(seed=1, host="box-8"), 0.25)  # 4x the total throughput
    tp8["suite"]["parallel"] = {"tensor": 8, "link_bandwidth": None}
    md = compare_runs([write_results(one, tmp_path / "a"), write_results(tp8, tmp_path / "b")],
                      tmp_path / "out").read_text()
    env = md.split("## Environment differences")[1].split("\n## ")[0]
    assert re.search(r"\|\s*topology \(GPUs per point\)\s*\|\s*1×H100 80GB HBM3\s*\|\s*8×H100 80GB HBM3 TP-8\s*\|", env)
    assert "8×H100 80GB HBM3 TP-8 / 1×H100 80GB HBM3" in md  # runs are named by their topology
    ref = next(r for r in one["records"] if r["variant"] == "baseline" and r["batch_size"] == 1
               and r["seq_len"] == 128 and r["phase"] == "decode")["tokens_per_s"]
    total = _row(md, "Decode throughput (tokens/s)", "baseline", 1, 128)
    gpu = _row(md, "Decode throughput per GPU (tokens/s: total / GPUs per point)", "baseline", 1, 128)
    assert total[-1].startswith("4.00×") and gpu[-1] == "0.50×"  # 4x the total, half per GPU
    assert float(re.sub(r"[^\d.]", "", gpu[3])) == pytest.approx(ref, rel=0.01)
    num = float(re.sub(r"[^\d.]", "", gpu[4]))
    assert num == pytest.approx(ref * 4 / 8, rel=0.01)


def test_same_topology_adds_nothing(tmp_path):
    a, b = make_results(seed=1), make_results(seed=1, host="other")
    md = compare_runs([write_results(a, tmp_path / "a"), write_results(b, tmp_path / "b")],
                      tmp_path / "out").read_text()
    assert "topology (GPUs per point)" not in md and "per GPU" not in md and "TP-" not in md

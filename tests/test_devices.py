"""`sabench run --devices`: point processes on several devices at once, each pinned with
CUDA_VISIBLE_DEVICES, merged into one results file. On CPU the device ids only label the
concurrent slots and set CUDA_VISIBLE_DEVICES, which the point process records as it saw it."""
import json
import statistics
import sys
from pathlib import Path

import pytest

from sabench.cli import main
from sabench.errors import RunInterrupted, UserError
from sabench.harness import device_list, sweep
from sabench.harness.device_list import ALL, parse_devices, resolve_pins
from sabench.harness.pool import Pool, Slot, cell_units
from sabench.records import PhaseRecord, PointSpec, load_results
from sabench.report import devices, topology
from tests import fake_nvml
from tests.helpers import tiny_suite, write_suite

SUITE = tiny_suite("devices", variants=("baseline", "cla:2"), batch_sizes=(1,), decode_tokens=2, warmup=0, repeats=2)
DETERMINISTIC = ("params", "kv_cache_bytes", "flops", "bytes_moved", "memory_predicted_bytes", "status")


@pytest.fixture
def env(tmp_path, monkeypatch):
    # conftest gives each test its own history and the session one cache: the FLOP counts of these
    # points are traced once and shared with the later runs, as a user's later runs share them
    for k in ("SABENCH_FAULT_KILL", "SABENCH_FAULT_OOM", "SABENCH_FAULT_SLOWDOWN", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def _suite(tmp_path, text=SUITE):
    return write_suite(tmp_path, text, "devices.yaml")


def _data(out):
    return json.loads((Path(out) / "results.json").read_text())


def _rounds(data):
    """{(variant, seq_len, round): round entry} of the prefill records."""
    return {(r["variant"], r["seq_len"], x["round"]): x for r in data["records"] if r["phase"] == "prefill"
            for x in r["rounds"]}


# ---- parsing and resolving --devices

@pytest.mark.parametrize("text, ids", [("0", (0,)), ("0,1,3", (0, 1, 3)), (" 2 , 0 ", (2, 0)), ("all", ALL),
                                       ("ALL", ALL)])
def test_devices_parse_to_typed_ids(text, ids):
    assert parse_devices(text) == ids


@pytest.mark.parametrize("value, fragment", [
    ("", "empty"), (",", "is not a GPU id"), ("0,0", "given twice"), ("-1", "negative"), ("x", "not a GPU id"),
    ("1.5", "not a GPU id"), ("0,,1", "not a GPU id"), ("all", "shows no GPU")])
def test_bad_devices_exit_2_with_one_line_and_write_nothing(env, tmp_path, capsys, monkeypatch, value, fragment):
    monkeypatch.setattr("sabench.devices.gpu_count", lambda: 0)
    out = tmp_path / "run"
    assert main(["run", str(_suite(tmp_path)), "--out", str(out), f"--devices={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sabench: error:") and fragment in err[0], err
    assert not out.exists()


def test_ids_are_positions_among_the_visible_gpus(monkeypatch):
    monkeypatch.setattr("sabench.devices.gpu_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert [(p.id, p.gpu) for p in resolve_pins((2, 0), "cuda")] == [(2, "7"), (0, "4")]
    assert [p.gpu for p in resolve_pins(ALL, "cuda")] == ["4", "6", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [p.gpu for p in resolve_pins(ALL, "cuda:1")] == ["0", "1", "2"]


def test_an_id_beyond_the_visible_gpus_is_refused_on_cuda_only(monkeypatch, capsys):
    monkeypatch.setattr("sabench.devices.gpu_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError, match="GPU 2 does not exist, this process sees 2 GPU"):
        resolve_pins((0, 2), "cuda")
    assert [p.gpu for p in resolve_pins((0, 5), "cpu")] == ["0", "5"]  # CPU: labels only, with a warning
    assert "share the CPU cores" in capsys.readouterr().err


def test_a_tensor_parallel_suite_refuses_devices():
    with pytest.raises(UserError, match="2-way tensor-parallel suite: each point needs 2 GPUs"):
        resolve_pins((0, 1), "cpu", tensor_parallel=2)


# ---- the pool

def test_units_are_a_rounds_cells_and_one_slot_keeps_the_order():
    todo = [(1, PointSpec("a", 1, 16)), (1, PointSpec("b", 1, 32)), (1, PointSpec("b", 1, 16)),
            (2, PointSpec("a", 1, 16))]
    assert cell_units(todo, by_cell=True) == [[todo[0], todo[2]], [todo[1]], [todo[3]]]
    assert cell_units(todo, by_cell=False) == [[x] for x in todo]


def test_every_item_runs_once_a_unit_on_one_slot_and_a_bug_is_raised(tmp_path):
    slots = [Slot(i, str(i), tmp_path) for i in range(3)]
    units = [[(u, j) for j in range(3)] for u in range(10)]
    ran = []
    Pool(slots).run(units, lambda item, slot: ran.append((item, slot.id)))
    assert sorted(i for i, _ in ran) == sorted(x for u in units for x in u)
    for u in range(10):
        assert len({s for (uu, _), s in ran if uu == u}) == 1  # a unit's items all on one slot
        assert [j for (uu, j), _ in ran if uu == u] == [0, 1, 2]  # in order

    def bug(item, slot):
        if item == (4, 1):
            raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        Pool(slots).run(units, bug)


def test_an_interrupt_in_a_slot_stops_the_dispatch_and_names_devices_in_the_resume_command(env, tmp_path,
                                                                                            monkeypatch):
    calls = []

    def fake(job, workdir):
        calls.append(job.key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while a slot measures
        return _fake_records(job, 1.0), {"total_s": 0.1, "device": {"gpu": job.gpu}}

    monkeypatch.setattr(sweep, "run_point", fake)
    suite = _suite(tmp_path, SUITE.replace("seq_len: [16, 32]", "seq_len: [16, 24, 32, 40, 48, 56]"))
    with pytest.raises(RunInterrupted) as e:
        sweep.run_suite(suite, out=tmp_path / "run", report=False, devices=(0, 1))
    assert "--devices 0,1" in e.value.resume_cmd and "--resume" in e.value.resume_cmd
    assert len(calls) < 12  # the dispatch stopped
    load_results(tmp_path / "run" / "results.json")  # what was kept is valid


def _fake_records(job, ms):
    recs = {}
    for ph in ("prefill", "decode"):
        s = [ms, ms + 0.5]
        recs[ph] = PhaseRecord.from_dict({"variant": job.variant, "batch_size": job.batch_size, "seq_len": job.seq_len,
                                          "phase": ph, "status": "ok",
                                          "latency_ms": {"median": statistics.median(s), "p10": s[0], "p90": s[1],
                                                         "samples": s}})
    return recs


def test_a_rounds_cell_is_measured_on_one_device(env, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_point", lambda job, wd: (_fake_records(job, 1.0),
                                                             {"total_s": 0.1, "device": {"gpu": job.gpu}}))
    suite = _suite(tmp_path, SUITE.replace("baseline, \"cla:2\"", "baseline, \"cla:2\", \"sa:2-3\"")
                   .replace("seq_len: [16, 32]", "seq_len: [16, 24, 32]").replace("rounds: 1\n", "rounds: 4\n"))
    assert sweep.run_suite(suite, out=tmp_path / "run", report=False, devices=(0, 1, 2)) == 0
    rounds = _rounds(_data(tmp_path / "run"))
    assert len(rounds) == 3 * 3 * 4
    for t in (16, 24, 32):
        for k in range(1, 5):
            assert len({rounds[(v, t, k)]["device"] for v in ("baseline", "cla:2", "sa:2-3")}) == 1
    # the report says which device measured which point; the topology stays one GPU per point
    run = load_results(tmp_path / "run" / "results.json")
    lines = devices.section(run)
    assert lines[0] == "## Which device measured which point"
    table = [ln for ln in "\n".join(lines).splitlines() if ln.startswith("| `")]
    assert len(table) == 9
    for ln in table:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        v, t = cells[0].strip("`"), int(cells[2])
        assert cells[3:] == [rounds[(v, t, k)]["device"] for k in range(1, 5)]
    assert topology.topology(run).gpus == 1


def test_a_run_on_one_device_has_no_device_section(env, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_point", lambda job, wd: (_fake_records(job, 1.0), {"total_s": 0.1}))
    assert sweep.run_suite(_suite(tmp_path), out=tmp_path / "run", report=False) == 0
    data = _data(tmp_path / "run")
    assert "devices" not in data["env"] and all("device" not in x for x in _rounds(data).values())
    assert devices.section(load_results(tmp_path / "run" / "results.json")) == []


# ---- real point processes

def test_devices_runs_every_point_pinned_concurrently_as_a_one_device_run_would(env, tmp_path, capsys):
    suite = _suite(tmp_path, SUITE.replace("rounds: 1\n", "rounds: 2\n"))
    out, ref = tmp_path / "run", tmp_path / "ref"
    assert main(["run", str(suite), "--out", str(out), "--devices", "0,1", "--no-report"]) == 0
    assert "share the CPU cores" in capsys.readouterr().err
    assert main(["run", str(suite), "--out", str(ref), "--no-report"]) == 0
    data, one = _data(out), _data(ref)
    load_results(out / "results.json")  # valid, as a one-device run's
    rounds = _rounds(data)
    assert len(rounds) == 2 * 2 * 2 and all(x.get("status", "ok") == "ok" for x in rounds.values())
    # each round names the device its point process saw in CUDA_VISIBLE_DEVICES: one of the two slots
    assert {x["device"] for x in rounds.values()} <= {"0", "1"}
    for t in (16, 32):
        for k in (1, 2):  # a cell's variants on one device within a round
            assert rounds[("baseline", t, k)]["device"] == rounds[("cla:2", t, k)]["device"]
    # one point process at a time per device; the two devices' processes overlap in time
    by_device: dict = {}
    for x in rounds.values():
        by_device.setdefault(x["device"], set()).add((x["t_start"], x["t_end"]))
    for spans in by_device.values():
        spans = sorted(spans)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert len(by_device) == 2  # both slots measured (each took a cell at the start)
    a, b = by_device.values()
    assert any(s0 < e1 and s1 < e0 for s0, e0 in a for s1, e1 in b)
    assert [d["id"] for d in data["env"]["devices"]] == [0, 1]
    # the deterministic figures and the record keys are those of a one-device run
    key = lambda r: (r["variant"], r["seq_len"], r["phase"])  # noqa: E731
    ref_recs = {key(r): r for r in one["records"]}
    assert sorted(ref_recs) == sorted(key(r) for r in data["records"])
    for r in data["records"]:
        assert {k: r.get(k) for k in DETERMINISTIC} == {k: ref_recs[key(r)].get(k) for k in DETERMINISTIC}
        assert set(r) - {"notes"} == set(ref_recs[key(r)]) - {"notes"}


def test_a_killed_worker_loses_nothing_else_and_resume_remeasures_it_on_the_new_devices(env, tmp_path,
                                                                                        monkeypatch):
    suite, out = _suite(tmp_path), tmp_path / "run"
    monkeypatch.setenv("SABENCH_FAULT_KILL", "cla:2|1|32")
    assert main(["run", str(suite), "--out", str(out), "--devices", "0,1", "--no-report"]) == 1
    rounds = _rounds(_data(out))
    assert rounds[("cla:2", 32, 1)]["status"] == "killed"
    assert rounds[("cla:2", 32, 1)]["device"] in ("0", "1")  # the slot's, as the process left no result
    others = [x for k, x in rounds.items() if k != ("cla:2", 32, 1)]
    assert len(others) == 3 and all(x.get("status", "ok") == "ok" and x["device"] in ("0", "1") for x in others)
    monkeypatch.delenv("SABENCH_FAULT_KILL")
    assert main(["run", str(suite), "--out", str(out), "--resume", "--retry-failed", "--devices", "3",
                 "--no-report"]) == 0
    data = _data(out)
    after = _rounds(data)
    assert after[("cla:2", 32, 1)].get("status", "ok") == "ok" and after[("cla:2", 32, 1)]["device"] == "3"
    assert {k: v for k, v in after.items() if k != ("cla:2", 32, 1)} == {
        k: v for k, v in rounds.items() if k != ("cla:2", 32, 1)}  # the others kept as they were
    assert [d["gpu"] for d in data["env"]["devices"]] == ["0", "1", "3"]
    load_results(out / "results.json")


def test_conditions_are_read_on_every_pinned_gpu_by_its_physical_id(monkeypatch):
    from sabench.harness.environment import run_conditions

    buses = [f"00000000:{i + 1:02X}:00.0" for i in range(5)]
    gpu = fake_nvml.device
    nvml = fake_nvml.fake(*(gpu(b, clocks=(1000, 2000)) for b in buses[:3]), gpu(buses[3], clocks=(1980, 2619)),
                          gpu(buses[4], clocks=(1410, 2619), throttle=32, uuid="GPU-b"))  # no NVML index 5
    out = run_conditions("cuda:0", "before", ["3", "GPU-b", "5"], nvml=nvml)
    assert out["gpu_before"] == {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "throttle_reasons": [],
                                 "other_processes": [], "temperature_c": 50}  # GPU 3, not NVML index 0
    assert out["gpus_before"]["GPU-b"]["throttle_reasons"] == ["SwThermalSlowdown"]
    assert "Invalid Argument" in out["gpus_before"]["5"]["unavailable"]  # said, not raised
    one = run_conditions("cuda:0", "after", None, nvml=nvml)
    assert one["gpu_after"]["sm_clock_mhz"] == 1000 and "gpus_after" not in one
    assert "gpu_before" not in run_conditions("cpu", "before", ["3"], nvml=nvml)


def test_device_facts_name_each_pinned_gpu_or_say_why_not(monkeypatch):
    pins = [device_list.Pin(0, "1"), device_list.Pin(1, "GPU-x")]
    nvml = fake_nvml.fake(fake_nvml.device("00000000:19:00.0", name="A"),
                          fake_nvml.device("00000000:3B:00.0", name="B"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # what `import pynvml` gives
    first, second = device_list.device_facts(pins, "cuda")
    assert first == {"id": 0, "gpu": "1", "name": "B", "pci_bus_id": "00000000:3B:00.0"}
    assert second["gpu"] == "GPU-x" and "Not Found" in second["nvml_unavailable"]
    assert device_list.device_facts(pins[:1], "cpu") == [{"id": 0, "gpu": "1"}]


def test_the_suites_gpu_is_named_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,GPU-x")
    assert [device_list.physical_gpu(i) for i in (0, 1)] == ["4", "GPU-x"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_list.physical_gpu(2) == "2"

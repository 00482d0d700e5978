"""Results schema v2 (sabench.records): real v1 files load, render and compare with v2 ones; a v2 file
round-trips losslessly; a damaged file gives one clear ResultsError naming the field, through every
command that reads results."""
import copy
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest

from report_fixtures import make_results, write_results
from sabench.io import write_atomic
from sabench.records.checks import Where
from sabench.records.codec import Record, checked, parse, required
from sabench.records import (SCHEMA, SCHEMA_V1, PhaseRecord, PointSpec, ResultsError, RunRecord, load_results,
                             point_key, write_results as write_run)
from sabench.report.check import check
from sabench.cli import main
from sabench.report.compare import compare_runs
from sabench.report.report import write_report

V1 = Path(__file__).parent / "data" / "results_v1"
V1_FILES = sorted(V1.glob("*.json"))


def test_the_v1_fixtures_are_real_v1_files():
    assert len(V1_FILES) >= 3
    for f in V1_FILES:
        assert json.loads(f.read_text())["schema"] == SCHEMA_V1


def test_point_key_and_label():
    p = PointSpec("cla:2", 4, 512)
    assert p.key == "cla:2|4|512" == point_key("cla:2", 4, 512)
    assert p.label == "cla:2 b=4 s=512" and p.size == "b=4 s=512"
    assert PointSpec("cla:2", "max", 512).key == "cla:2|max|512"
    r = PhaseRecord("cla:2", 4, 512, "decode", "oom")
    assert r.label == "decode cla:2 b=4 s=512" and r.point == p and r.key == ("cla:2", 4, 512, "decode")


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.name)
def test_v1_file_loads_with_its_renamed_fields_upgraded(path):
    raw = json.loads(path.read_text())
    run = load_results(path)
    assert run.schema == SCHEMA and len(run.records) == len(raw["records"])
    for old, new in zip(raw["records"], run.records):
        assert (new.variant, new.batch_size, new.seq_len, new.phase, new.status) == \
               (old["variant"], old["batch_size"], old["seq_len"], old["phase"], old["status"])
        mem = old.get("memory_bytes") or {}
        if "peak_nvml_process" in mem:  # GPU v1: the process's NVML reading is the footprint
            assert new.memory_bytes.device_peak == mem["peak_nvml_process"]
            assert new.memory_source == "nvml-process"
        if "peak_nvml" in mem:  # renamed: the phase's rise
            assert new.memory_bytes.phase_rise == mem["peak_nvml"]
        if new.ok:
            assert new.latency_ms.median == old["latency_ms"]["median"]
            assert list(new.latency_ms.samples) == old["latency_ms"]["samples"]
            assert new.flops.analytic == old["flops"]["analytic"] and new.params == old["params"]
        assert new.extra.get("roofline_metric") is None  # a typed field now
        assert new.roofline_metric == old.get("roofline_metric")


def _strip_upgraded(rec: dict) -> dict:
    """A v1 record as a v2 writer would hold it: the renamed memory fields under their new names."""
    rec = copy.deepcopy(rec)
    mem = rec.get("memory_bytes") or {}
    if "peak_nvml" in mem:
        mem["phase_rise"] = mem.pop("peak_nvml")
    if "peak_nvml_process" in mem:
        mem["device_peak"] = mem.pop("peak_nvml_process")
    return rec


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.name)
def test_v1_upgrade_loses_nothing_but_the_old_names(path):
    raw = json.loads(path.read_text())
    out = load_results(path).to_dict()
    assert out["env"] == raw["env"] and out["suite"] == raw["suite"] and out["overhead"] == raw["overhead"]
    for old, new in zip(raw["records"], out["records"]):
        old = _strip_upgraded(old)
        new = {k: v for k, v in new.items() if k != "memory_source" or "memory_source" in old}
        if "device_peak" not in (old.get("memory_bytes") or {}) and "device_peak" in (new.get("memory_bytes") or {}):
            new["memory_bytes"] = {k: v for k, v in new["memory_bytes"].items() if k != "device_peak"}
        assert new == old


@pytest.mark.parametrize("path", V1_FILES + [None], ids=lambda p: p.name if p else "synthetic-v2")
def test_v2_write_load_round_trip_is_lossless(tmp_path, path):
    run = load_results(path) if path else RunRecord.from_dict(make_results(seed=5))
    out = write_run(tmp_path / "results.json", run)
    again = load_results(out)
    assert again == run
    assert json.loads(out.read_text()) == run.to_dict()
    if path is None:  # a v2 file the runner wrote comes back exactly as written
        raw = json.loads(json.dumps(make_results(seed=5)))
        assert again.to_dict() == raw


def test_every_v1_fixture_renders_a_report(tmp_path):
    for f in V1_FILES:
        d = tmp_path / f.stem
        d.mkdir()
        (d / "results.json").write_text(f.read_text())
        md = write_report(d).read_text()
        assert md.startswith("# sabench report:") and "## Setup" in md
    gpu = (tmp_path / "h200-llama32-1b" / "report.md").read_text()
    assert "device peak (nvml-process)" in gpu and "NVIDIA H200" in gpu


def test_v1_and_v2_runs_compare_and_check(tmp_path):
    h100, h200 = V1 / "h100-llama32-1b.json", V1 / "h200-llama32-1b.json"
    v2 = write_run(tmp_path / "v2.json", load_results(h200))
    assert json.loads(v2.read_text())["schema"] == SCHEMA
    md = compare_runs([h100, v2], tmp_path / "cmp").read_text()
    assert "## Prefill median latency" in md and "24 points are in every run" in md
    res = check(h100, v2, timings=False)
    assert res.shared_points == 24 and res.deterministic_checked > 0
    assert not [f for f in res.regressions if f.metric != "latency"]  # same model: same params, KV, FLOPs
    same = check(h200, v2)
    assert same.passed and not same.regressions and not same.memory_changes
    cpu = V1 / "cpu-smoke.json"
    assert check(cpu, write_run(tmp_path / "cpu.json", load_results(cpu)), timings=False).passed


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "x.json"
    write_atomic(p, "one")
    write_atomic(p, b"two")
    assert p.read_text() == "two" and sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]

    with pytest.raises(TypeError):
        write_atomic(p, 3.5)  # not text or bytes: nothing is written
    assert p.read_text() == "two" and sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]


# ---------------------------------------------------------------------------- damaged files


def _ok(d):
    return next(r for r in d["records"] if r["status"] == "ok" and r["phase"] == "decode")


def _set(path, value):
    """A mutation: set d[path...] (the first ok decode record when path starts with 'rec')."""
    def mutate(d):
        cur = _ok(d) if path[0] == "rec" else d
        keys = path[1:] if path[0] == "rec" else path
        for k in keys[:-1]:
            cur = cur[k]
        if value is _DELETE:
            del cur[keys[-1]]
        else:
            cur[keys[-1]] = value
    return mutate


_DELETE = object()

# (id, mutation, text the message must hold)
DAMAGED = [
    ("median-string", _set(("rec", "latency_ms", "median"), "abc"), "latency_ms.median must be a number, got 'abc'"),
    ("median-nan", _set(("rec", "latency_ms", "median"), float("nan")), "latency_ms.median must be a finite"),
    ("median-inf", _set(("rec", "latency_ms", "median"), float("inf")), "latency_ms.median must be a finite"),
    ("median-negative", _set(("rec", "latency_ms", "median"), -1.0), "latency_ms.median must be > 0, got -1.0"),
    ("median-zero", _set(("rec", "latency_ms", "median"), 0), "latency_ms.median must be > 0"),
    ("median-missing", _set(("rec", "latency_ms", "median"), _DELETE), "latency_ms.median is missing"),
    ("sample-zero", _set(("rec", "latency_ms", "samples", 0), 0.0), "latency_ms.samples[0] must be > 0"),
    ("samples-mapping", _set(("rec", "latency_ms", "samples"), {"a": 1}), "latency_ms.samples must be a list"),
    ("latency-list", _set(("rec", "latency_ms"), [1.0, 2.0]), "latency_ms must be a mapping"),
    ("latency-missing", _set(("rec", "latency_ms"), _DELETE), "latency_ms is missing"),
    ("memory-list", _set(("rec", "memory_bytes"), [1, 2]), "memory_bytes must be a mapping"),
    ("peak-string", _set(("rec", "memory_bytes", "device_peak"), "big"), "memory_bytes.device_peak must be a number"),
    ("tokens-zero", _set(("rec", "tokens_per_s"), 0.0), "tokens_per_s must be > 0"),
    ("kv-negative", _set(("rec", "kv_cache_bytes"), -5), "kv_cache_bytes must be >= 0"),
    ("params-float", _set(("rec", "params"), 1.5), "params must be an integer"),
    ("flops-string", _set(("rec", "flops", "analytic"), "many"), "flops.analytic must be a number"),
    ("flops-list", _set(("rec", "flops"), [1]), "flops must be a mapping"),
    ("breakdown-string", _set(("rec", "memory_breakdown", "weights"), "w"), "memory_breakdown.weights must be"),
    ("stable-string", _set(("rec", "stability"), {"stable": "yes"}), "stability.stable must be true or false"),
    ("notes-string", _set(("rec", "memory_notes"), "a note"), "memory_notes must be a list of strings"),
    ("status-unknown", _set(("rec", "status"), "fine"), "status must be one of"),
    ("phase-missing", _set(("rec", "phase"), _DELETE), "phase is missing"),
    ("batch-string", _set(("rec", "batch_size"), "4"), "batch_size must be an integer, got '4'"),
    ("seq-zero", _set(("rec", "seq_len"), 0), "seq_len must be > 0"),
    ("variant-number", _set(("rec", "variant"), 3), "variant must be a string"),
    ("attempts-mapping", _set(("rec", "max_attempts"), {"batch_size": 1}), "max_attempts must be a list"),
    ("record-list", _set(("records", 0), [1, 2]), "record 0 must be a mapping, got a list [1, 2]"),
    ("records-mapping", _set(("records",), {"a": 1}), "records must be a list"),
    ("env-list", _set(("env",), ["cpu"]), "env must be a mapping"),
    ("env-peak-string", _set(("env", "peak_flops_per_s"), "fast"), "env.peak_flops_per_s must be a number"),
    ("suite-string", _set(("suite",), "smoke"), "suite must be a mapping"),
    ("overhead-number", _set(("overhead",), {"cla:2|1|128": 3}), "overhead['cla:2|1|128'] must be a mapping"),
    ("schema-wrong", _set(("schema",), "sabench-results/9"), "has schema 'sabench-results/9'"),
    ("schema-missing", _set(("schema",), _DELETE), "has schema None"),
]


@pytest.fixture(scope="module")
def good():
    return make_results(batch_sizes=(1,), seq_lens=(128,), oom=False, error=False)


def _damaged(tmp_path, good, mutate) -> Path:
    d = copy.deepcopy(good)
    mutate(d)
    run = tmp_path / "bad"
    run.mkdir(exist_ok=True)
    (run / "results.json").write_text(json.dumps(d))
    return run


@pytest.mark.parametrize("mutate,needle", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_damaged_file_names_file_record_and_field(tmp_path, good, mutate, needle):
    run = _damaged(tmp_path, good, mutate)
    with pytest.raises(ResultsError) as e:
        load_results(run)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(run / "results.json") in msg
    if needle.startswith(("latency", "memory", "tokens", "kv", "params", "flops", "stab")):
        assert "record 'decode " in msg and "b=1 s=128'" in msg  # the record, by its label


@pytest.mark.parametrize("mutate,needle", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_every_reading_command_refuses_a_damaged_file_in_one_line(tmp_path, good, mutate, needle, capsys):
    bad = _damaged(tmp_path, good, mutate)
    fine = write_results(good, tmp_path / "fine")
    for argv in (["report", str(bad)], ["compare", str(fine), str(bad), "--out", str(tmp_path / "c")],
                 ["check", str(fine), str(bad)], ["check", str(bad), str(fine)],
                 ["history", "--db", str(tmp_path / "h.sqlite"), "--import", str(bad)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sabench: error: ") and err.count("\n") == 1 and needle in err, (argv, err)
        assert "Traceback" not in err
    assert not (bad / "report.md").exists()


def test_damaged_file_through_the_installed_cli_has_no_traceback(tmp_path, good):
    bad = _damaged(tmp_path, good, DAMAGED[0][1])
    p = subprocess.run([sys.executable, "-m", "sabench.cli", "report", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "latency_ms.median must be a number" in p.stderr


def test_non_ok_records_need_no_timing_and_timings_beyond_ok_are_still_typed():
    base = {"schema": SCHEMA, "records": [{"variant": "baseline", "batch_size": 1, "seq_len": 8,
                                           "phase": "prefill", "status": "oom", "error": "CUDA out of memory"}]}
    run = RunRecord.from_dict(base)
    assert run.records[0].latency_ms is None and not run.records[0].ok
    base["records"][0]["latency_ms"] = {"median": math.nan}
    with pytest.raises(ResultsError, match="latency_ms.median must be a finite"):
        RunRecord.from_dict(base)


def test_a_record_with_every_field_round_trips_exactly():
    lat = {"median": 2.0, "p10": 1.0, "p90": 3.0, "p99": 3.5, "mean": 2.1, "std": 0.2, "min": 1.0, "max": 4.0,
           "samples": [1.0, 2.0, 4.0]}
    rec = {"variant": "cla:2", "batch_size": 27, "seq_len": 512, "phase": "decode", "status": "ok",
           "warmup": 2, "repeats": 5, "execution": "eager", "params": 10, "kv_cache_bytes": 20,
           "memory_predicted_bytes": {"total": 9, "needed": 8}, "bytes_moved": 30,
           "flops": {"counted": 1, "analytic": 2, "analytic_breakdown": {"mlp": 2}},
           "latency_ms": lat, "latency_eager_ms": dict(lat), "tokens_per_s": 13.5, "prefill_mode": "graph",
           "decode_mode": "graph", "decode_tokens": 16,
           "stability": {"p90_over_p10": 3.0, "stable": False, "threshold": 1.05, "extra_rounds": 3, "note": "n"},
           "memory_bytes": {"device_peak": 5, "phase_rise": -1, "peak_allocated": 4, "peak_reserved": 4,
                            "peak_rss": 3, "peak_other": 7},
           "memory_source": "nvml-device", "memory_breakdown": {"weights": 1, "context": 0}, "memory_notes": ["a"],
           "mfu": 0.1, "mbu": 0.5, "floor_ms": 1.5, "roofline_metric": "mbu",
           "nvml": {"notes": ["x"], "achieved_hz": 99.5}, "energy_j": 2.5, "joules_per_token": 0.1,
           "energy_source": "nvml-energy-counter", "energy_scope": "5 calls", "energy_window_s": 0.3,
           "energy_note": "fine", "batch_request": "max", "predicted_max_batch": 28, "max_attempt": 2,
           "memory_budget_bytes": 100, "memory_budget_source": "device total memory",
           "max_attempts": [{"batch_size": 28, "status": "oom"}, {"batch_size": 27, "status": "ok"}],
           "something_new": {"kept": True}}
    run = {"schema": SCHEMA, "created": "2026-12-01T00:00:00+00:00", "env": {"device": "cuda:0"},
           "suite": {"name": "s"}, "overhead": {"cla:2|max|512": {"total_s": 1.5, "flops_from_cache": True}},
           "records": [rec, {"variant": "cla:2", "batch_size": 28, "seq_len": 512, "phase": "decode",
                             "status": "oom", "error": "out of memory", "energy_note": "NVML unavailable",
                             "energy_j": None, "joules_per_token": None, "energy_source": None}],
           "note": "top-level extra"}
    parsed = RunRecord.from_dict(run)
    assert parsed.to_dict() == run
    r = parsed.records[0]
    assert r.extra == {"something_new": {"kept": True}} and r.memory_bytes.extra == {"peak_other": 7}
    assert r.max_attempts[1].batch_size == 27 and r.stability.stable is False and r.latency_eager_ms.p99 == 3.5
    assert parsed.overhead["cla:2|max|512"].total_s == 1.5


def test_failed_and_skipped_records_are_made_by_their_constructors_and_round_trip():
    point = PointSpec("cla:2", 4, 512)
    killed = PhaseRecord.failed(point, "decode", "killed", "worker killed by SIGKILL", stderr_tail="", signal="SIGKILL")
    skipped = PhaseRecord.skipped_after_oom(point, "prefill", "seq_len 256 already ran out of memory")
    assert killed.to_dict() == {"variant": "cla:2", "batch_size": 4, "seq_len": 512, "phase": "decode",
                                "status": "killed", "error": "worker killed by SIGKILL", "stderr_tail": "",
                                "signal": "SIGKILL"}
    assert (skipped.status, skipped.label) == ("skipped_after_oom", "prefill cla:2 b=4 s=512")
    for r in (killed, skipped):
        assert PhaseRecord.from_dict(r.to_dict()) == r


# ---------------------------------------------------------------------------- the codec itself

@dataclass(frozen=True)
class _Part(Record):
    """A record type written for this test: the codec reads, checks and writes it from its fields alone."""
    n: int = required(lo=1)
    status: str = checked("ok", choices=("ok", "failed"), status_of="part", omit="ok")
    x: Optional[float] = checked(positive=True, when_ok={"required": True})
    tags: Tuple[str, ...] = checked((), omit=())
    rates: Optional[Dict[str, float]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize("raw,message", [
    ({"x": 1.0}, "f.json: part 3: n is missing"),
    ({"n": 1.5, "x": 1.0}, "f.json: part 3: n must be an integer, got 1.5"),
    ({"n": True, "x": 1.0}, "f.json: part 3: n must be an integer, got true"),  # as JSON (and YAML) spell it
    ({"n": 0, "x": 1.0}, "f.json: part 3: n must be >= 1, got 0"),
    ({"n": 1}, "f.json: part 3: x is missing (the part's status is ok)"),
    ({"n": 1, "x": 0.0}, "f.json: part 3: x must be > 0, got 0.0"),
    ({"n": 1, "x": float("inf")}, "f.json: part 3: x must be a finite number, got inf"),
    ({"n": 1, "x": 1.0, "status": "fine"}, "f.json: part 3: status must be one of ok, failed, got 'fine'"),
    ({"n": 1, "x": 1.0, "tags": ["a", 2]}, "f.json: part 3: tags must be a list of strings"),
    ({"n": 1, "x": 1.0, "rates": {"a": 1.0, "b": "fast"}}, "f.json: part 3: rates.b must be a number, got 'fast'"),
    ([1], "f.json: part 3 must be a mapping, got a list [1]"),
])
def test_the_codec_checks_a_type_from_its_annotations_and_metadata(raw, message):
    with pytest.raises(ResultsError) as e:
        parse(_Part, Where("f.json", "part 3"), "", raw)
    assert str(e.value).startswith(message)


def test_the_codec_reads_defaults_keeps_extras_and_writes_back_what_it_read():
    ok = parse(_Part, Where("f.json", "part 3"), "", {"n": 2.0, "x": 1.5, "new": [1]})
    assert ok == _Part(n=2, status="ok", x=1.5, extra={"new": [1]}) and type(ok.n) is int
    assert ok.to_dict() == {"n": 2, "x": 1.5, "new": [1]}  # status "ok" and no tags: omitted
    failed = {"n": 1, "status": "failed", "tags": ["t"], "rates": {"a": 0.5}}  # no x: not required
    assert parse(_Part, Where("f.json", "p"), "", failed).to_dict() == failed

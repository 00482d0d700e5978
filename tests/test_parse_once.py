"""The variant string is parsed at the edge, once: the sweep parses each variant once per run,
and a point process parses nothing (its PointJob carries the SharingPlan)."""
from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

import sabench.plan
from sabench.harness.job import PointJob
from sabench.presets import resolve_config
from sabench.suite import load_suite

SUITE = """\
name: parse-once
model: tiny
dtype: float32
device: cpu
variants: [baseline, "sa:2-3"]
sweep:
  batch_size: [1]
  seq_len: [8, 16]
decode_tokens: 2
rounds: 1
warmup: 0
repeats: 1
"""


@pytest.fixture
def parses(monkeypatch):
    """Counts parse_variant calls by variant, wherever sabench code calls it from."""
    original = sabench.plan.parse_variant
    calls: Counter = Counter()

    def counting(text, num_layers, **kw):
        calls[text] += 1
        return original(text, num_layers, **kw)

    for name, mod in list(sys.modules.items()):
        if name.startswith("sabench") and getattr(mod, "parse_variant", None) is original:
            monkeypatch.setattr(mod, "parse_variant", counting)
    return calls


def _job(variant="sa:2-3", **kw) -> PointJob:
    cfg = resolve_config("tiny")
    return PointJob(cfg=cfg, plan=sabench.plan.parse_variant(variant, cfg.num_layers), device="cpu",
                    dtype="float32", batch_size=1, seq_len=8, decode_tokens=2, warmup=0, repeats=1, **kw)


def test_a_point_process_parses_no_variant(parses):
    from sabench.harness.point import measure

    job = _job()
    parses.clear()
    result = measure(job)
    assert [r["status"] for r in result["records"]] == ["ok", "ok"]
    assert [r["variant"] for r in result["records"]] == ["sa:2-3", "sa:2-3"]
    assert sum(parses.values()) == 0, dict(parses)


def test_a_job_from_json_parses_its_variant_once(parses):
    spec = {"model_config": resolve_config("tiny").to_dict(), "device": "cpu", "dtype": "float32",
            "variant": "cla:2", "batch_size": 1, "seq_len": 8, "decode_tokens": 2, "warmup": 0, "repeats": 1,
            "prefill_chunk": None, "peaks": {}}
    job = PointJob.from_dict(json.loads(json.dumps(spec)))
    assert job.plan.variant == "cla:2" and job.key == "cla:2|1|8"
    assert parses == Counter({"cla:2": 1})


def test_a_sweep_parses_each_variant_once_whatever_its_points(parses, tmp_path, monkeypatch):
    # every point measured in this process (the launcher's fork replaced), so the count covers
    # the sweep and all its point processes
    from sabench.harness import point, sweep

    def in_process(job, workdir):
        result = point.measure(job)
        return {r["phase"]: r for r in result["records"]}, result["overhead"]

    monkeypatch.setattr(sweep, "run_point", in_process)
    monkeypatch.setattr(sweep, "capture_run_env", lambda device, dtype, workdir: {"device": device})
    (tmp_path / "s.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "s.yaml")  # the suite file's own validation is its edge
    parses.clear()
    assert sweep.run_suite(suite, out=tmp_path / "run", report=False) == 0
    records = json.loads((tmp_path / "run" / "results.json").read_text())["records"]
    assert len(records) == 2 * 2 * 2 and all(r["status"] == "ok" for r in records)
    assert parses == Counter({"baseline": 1, "sa:2-3": 1})  # 4 points, 2 variants: 2 parses

"""The variant string is parsed at the edge, once: `sabench run` parses each variant once per run
(when it loads the suite), the sweep and its shards use the suite's plans, and a point process
parses nothing (its PointJob carries the SharingPlan)."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

import sabench.plan
from sabench.cli import main
from sabench.harness import launch, point
from sabench.harness.job import PointJob
from sabench.io import write_json_atomic
from sabench.presets import resolve_config
from sabench.records import PointSpec, load_results
from tests.helpers import tiny_suite

SUITE = tiny_suite("parse-once", variants=("baseline", "sa:2-3"), batch_sizes=(1,), seq_lens=(8, 16),
                   decode_tokens=2, warmup=0, repeats=1)
ONCE = Counter({"baseline": 1, "sa:2-3": 1})


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


class _InProcess:
    """The launcher's forked process, run in this process instead: the point's measurement and
    its result file as a point process leaves them (launch.run_point reads and parses them)."""

    def __init__(self, target, args=(), daemon=None):
        self.target, self.args, self.pid, self.exitcode = target, args, None, None

    def start(self):
        self.pid = os.getpid()
        if self.args:  # child_main(job, result_path, stderr_path)
            job, result_path = self.args[0], self.args[1]
            write_json_atomic(result_path, point.result_json(*point.measure(job)), indent=None, fsync=False)
        else:  # warm_server's empty process
            self.target()
        self.exitcode = 0

    def join(self, timeout=None):
        pass


@pytest.fixture
def in_process(monkeypatch):
    """Only the fork is replaced: every point is measured in this process, so the count covers
    the CLI, the suite, the sweep, the shard and every point process."""
    monkeypatch.setattr(launch, "_context", lambda: SimpleNamespace(Process=_InProcess))
    monkeypatch.setattr(launch, "_start_server", lambda: None)
    monkeypatch.setattr(launch, "_wait", lambda proc: None)


def _job(variant="sa:2-3", **kw) -> PointJob:
    cfg = resolve_config("tiny")
    plan = sabench.plan.parse_variant(variant, cfg.num_layers)
    return PointJob(point=PointSpec(plan.variant, 1, 8), cfg=cfg, plan=plan, device="cpu", dtype="float32",
                    decode_tokens=2, warmup=0, repeats=1, **kw)


def test_a_point_process_parses_no_variant(parses):
    job = _job()
    parses.clear()
    records, _ = point.measure(job)
    assert [r.status for r in records] == ["ok", "ok"]
    assert [r.variant for r in records] == ["sa:2-3", "sa:2-3"]
    assert sum(parses.values()) == 0, dict(parses)


def test_a_job_from_json_parses_its_variant_once(parses):
    spec = {"model_config": resolve_config("tiny").to_dict(), "device": "cpu", "dtype": "float32",
            "variant": "cla:2", "batch_size": 1, "seq_len": 8, "decode_tokens": 2, "warmup": 0, "repeats": 1,
            "prefill_chunk": None, "peaks": {}}
    job = PointJob.from_dict(json.loads(json.dumps(spec)))
    assert job.plan.variant == "cla:2" and job.key == "cla:2|1|8" and job.label == "cla:2 b=1 s=8"
    assert parses == Counter({"cla:2": 1})


def test_sabench_run_parses_each_variant_once_per_run_whole_sharded_and_resumed(parses, in_process, tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE)
    suite, whole, half = str(tmp_path / "s.yaml"), tmp_path / "whole", tmp_path / "half"

    assert main(["run", suite, "--out", str(whole), "--no-report"]) == 0
    assert parses == ONCE  # 4 points of 2 variants, loaded, swept and measured: 2 parses
    run = load_results(whole)
    assert len(run.records) == 2 * 2 * 2 and all(r.ok for r in run.records)

    parses.clear()
    assert main(["run", suite, "--out", str(half), "--shard", "1/2", "--no-report"]) == 0
    assert parses == ONCE  # the shard's split costs each point by the suite's plans
    assert 0 < len(load_results(half).records) < len(run.records)

    parses.clear()
    assert main(["run", suite, "--out", str(whole), "--resume", "--rounds", "2", "--no-report"]) == 0
    assert parses == ONCE  # the results file is read as records: no variant parsed again
    assert all([x.round for x in r.rounds] == [1, 2] for r in load_results(whole).records)

"""Sweeping a suite: the order of points, the results file, resuming, OOM skips, progress.

results.json is rewritten atomically (temp file, fsync, rename) after every point, so killing
the runner at any moment leaves a valid file; `--resume` with the same `--out` measures only
the points missing from it. The suite is turned into typed PointJobs here, once: each variant
is parsed into its SharingPlan once per run, and the point processes parse nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional

from sabench.devices import resolve_device
from sabench.io import write_json_atomic
from sabench.harness.environment import capture_run_env
from sabench.harness.faults import fault_keys_from_env, kill_keys_from_env
from sabench.harness.job import PointJob
from sabench.harness.launch import run_point
from sabench.harness.lock import holds_run_lock, lock_run_dir
from sabench.harness.max_batch import done_max, memory_budget, run_max_point
from sabench.harness.preflight import preflight
from sabench.harness.progress import Progress, summary
from sabench.errors import RunInterrupted
from sabench.loading import point_extras
from sabench.paths import cache_root, inductor_cache_dir, reports_dir
from sabench.plan import parse_variant
from sabench.records import FAILED_STATUSES, PHASES, SCHEMA, ResultsError, load_results
from sabench.suite import MAX_BATCH, Suite, SuiteError, find_suite, load_suite, resolve_execution

# Suite settings that change what a number means: a resumed run must not mix them.
# (value assumed when an older results.json lacks the key: runs before execution modes were eager)
_COMPARABLE = {"model_config": None, "dtype": None, "decode_tokens": None, "warmup": None, "repeats": None,
               "prefill_chunk": None, "memory": None, "execution": "eager", "weights": "random", "quality": None}


def default_out_dir(suite: Suite) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return reports_dir() / suite.name / f"{stamp}-{socket.gethostname()}"


def open_results(out: Path, suite: Suite, resume: bool) -> Optional[dict]:
    """The results file to complete (resume), None to start one; ValueError on a mismatch."""
    path = out / "results.json"
    if not path.exists():
        if resume:
            raise ValueError(f"--resume: {path} does not exist; nothing to resume")
        return None
    if not resume:
        raise ValueError(f"{path} already exists: pass --resume to complete it, or another --out")
    try:
        data = load_results(path).to_dict()  # validated; a v1 file is upgraded to this schema
    except ResultsError as e:
        raise ValueError(f"--resume: {e}") from None
    old, new = data.get("suite", {}), suite.to_dict()
    diff = [k for k, missing in _COMPARABLE.items() if old.get(k, missing) != new.get(k)]
    if diff:
        raise ValueError(f"--resume: the suite changed since {path} was written ({', '.join(diff)} differ); "
                         "use another --out")
    return data


def resolve_suite(suite_arg, variants=None, execution: Optional[str] = None) -> tuple[Suite, str]:
    """(the suite with --variant and the execution mode applied, the device that runs it)."""
    suite = suite_arg if isinstance(suite_arg, Suite) else load_suite(find_suite(suite_arg))
    if variants:
        suite = suite.with_variants(variants)
    try:
        device = resolve_device(suite.device)
    except ValueError as e:
        raise SuiteError(suite.path or suite.name, "device", str(e)) from None
    try:
        suite = dataclasses.replace(suite, execution=resolve_execution(execution or suite.execution, device))
    except ValueError as e:
        raise SuiteError(suite.path or suite.name, "--execution" if execution else "execution", str(e)) from None
    return suite, device


def point_jobs(suite: Suite, device: str, peaks: dict, threads: Optional[int]) -> dict:
    """{variant: PointJob template} with the variant parsed once; batch_size and seq_len are
    filled per point (`job.replace(batch_size=..., seq_len=...)`)."""
    cache_dir = str(inductor_cache_dir()) if suite.execution == "compiled" else None
    common = dict(cfg=suite.model_config, device=device, dtype=suite.dtype, batch_size=0, seq_len=0,
                  decode_tokens=suite.decode_tokens, warmup=suite.warmup, repeats=suite.repeats,
                  prefill_chunk=suite.prefill_chunk, execution=suite.execution, peaks=peaks, threads=threads,
                  fault_oom=fault_keys_from_env(), fault_kill=kill_keys_from_env(), inductor_cache_dir=cache_dir,
                  count_cache_dir=str(cache_root() / "flops"))
    return {v: PointJob(plan=parse_variant(v, suite.model_config.num_layers), **common) for v in suite.variants}


def _new_results(suite: Suite, device: str, workdir: Path) -> dict:
    data = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run_id": uuid.uuid4().hex,  # tells runs apart in the history even when created in the same second
            "env": capture_run_env(device, suite.dtype, workdir), "suite": suite.to_dict(), "overhead": {},
            "records": []}
    if suite.execution == "compiled":
        data["env"]["inductor_cache_dir"] = str(inductor_cache_dir())
    return data


def _oom_seq_lens(records) -> dict:
    """(variant, batch) -> the smallest seq_len that ran out of memory (explicit batches)."""
    oom_at: dict = {}
    for r in records:
        if r.get("status") == "oom" and r.get("batch_request") != MAX_BATCH:
            k = (r["variant"], r["batch_size"])
            oom_at[k] = min(oom_at.get(k, r["seq_len"]), r["seq_len"])
    return oom_at


def _skipped(job: PointJob, oom_seq: int) -> dict:
    return {ph: {"variant": job.variant, "batch_size": job.batch_size, "seq_len": job.seq_len, "phase": ph,
                 "status": "skipped_after_oom",
                 "error": f"seq_len {oom_seq} already ran out of memory at this batch size"} for ph in PHASES}


@holds_run_lock
def run_suite(suite_arg, out=None, resume: bool = False, variants=None, report: bool = True,
              threads: Optional[int] = None, execution: Optional[str] = None) -> int:
    """Run a suite; returns the CLI exit code (0 all ok or OOM, 1 some point errored).

    execution: None keeps the suite's; "eager" or "compiled" overrides it. The suite
    stored in results.json carries the resolved mode (never "auto").
    """
    suite, device = resolve_suite(suite_arg, variants, execution)
    if resume and out is None:
        raise ValueError("--resume needs --out: the run directory to complete")
    out = Path(out) if out is not None else default_out_dir(suite)
    out.mkdir(parents=True, exist_ok=True)
    lock_run_dir(out)  # held until run_suite returns: a second run on `out` refuses
    existing = open_results(out, suite, resume)
    preflight(suite, device, out, len(suite.points()))  # faults that would break every point, in seconds
    path = out / "results.json"
    workdir = Path(tempfile.mkdtemp(prefix="sabench-"))

    if existing is None:
        data = _new_results(suite, device, workdir)
        write_json_atomic(path, data)
    else:
        data = existing
        data["suite"]["variants"] = list(dict.fromkeys(data["suite"]["variants"] + list(suite.variants)))
    peaks = {k: data["env"].get(k) for k in ("peak_bandwidth_bytes_per_s", "peak_flops_per_s")}
    jobs = point_jobs(suite, device, peaks, threads)

    done = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]) for r in data["records"]}
    resolved_max = done_max(data["records"])
    points = suite.points()
    todo = [p for p in points if ((p.variant, p.seq_len) not in resolved_max if p.batch_size == MAX_BATCH
                                  else any((*p, ph) not in done for ph in PHASES))]
    budget = memory_budget(suite, data["env"], device) if MAX_BATCH in suite.batch_sizes else None
    progress = Progress(len(points), len(points) - len(todo))
    if resume:
        print(f"resuming {path}: {len(points) - len(todo)} of {len(points)} points already measured",
              file=sys.stderr)
    oom_at = _oom_seq_lens(data["records"])
    failed = 0
    try:
        for p in todo:
            job = jobs[p.variant].replace(batch_size=p.batch_size, seq_len=p.seq_len,
                                         **point_extras(suite, p.variant, data["records"]))
            label, k = job.label, (p.variant, p.batch_size)
            if p.batch_size == MAX_BATCH:
                progress.start(label)
                new, overheads, final = run_max_point(job, suite.batch_sizes, budget, workdir, data)
                data["records"] += new
                data["overhead"].update(overheads)
                failed += sum(r["status"] in FAILED_STATUSES for r in new)
                write_json_atomic(path, data)
                b_run = final[PHASES[0]]["batch_size"]
                progress.finish(label, f"B={b_run} (predicted {final[PHASES[0]]['predicted_max_batch']}): "
                                + summary(final), measured=bool(new))
                continue
            if k in oom_at and p.seq_len > oom_at[k]:
                records, overhead = _skipped(job, oom_at[k]), None
            else:
                progress.start(label)
                records, overhead = run_point(job, workdir)
                if all(records[ph]["status"] == "oom" for ph in PHASES):
                    oom_at[k] = min(oom_at.get(k, p.seq_len), p.seq_len)
            for ph in PHASES:
                if (*p, ph) not in done:
                    data["records"].append(records[ph])
                    failed += records[ph]["status"] in FAILED_STATUSES
            if overhead is not None:
                data["overhead"][p.key] = overhead
            write_json_atomic(path, data)
            progress.finish(label, summary(records), measured=overhead is not None)
    except KeyboardInterrupt:  # results.json holds every point finished: say so, and how to go on
        measured = len({(r["variant"], r.get("batch_request", r["batch_size"]), r["seq_len"])
                        for r in data["records"]})
        cmd = " ".join(["sabench run", str(suite.path or suite.name), "--out", str(out), "--resume"]
                       + [f"--variant {v}" for v in (variants or [])])
        raise RunInterrupted(path, min(measured, len(points)), len(points), cmd) from None
    finally:
        progress.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"results: {path}", file=sys.stderr)
    if report:
        _finish(out, path)
    return 1 if failed else 0


def _finish(out: Path, path: Path) -> None:
    """Report and history; a failure here must not lose the measurements already on disk."""
    try:
        from sabench.report import write_report

        print(f"report:  {write_report(out)}", file=sys.stderr)
    except Exception as e:  # pragma: no cover - report failures are reported, results are kept
        print(f"sabench: report not written ({type(e).__name__}: {e}); results are intact", file=sys.stderr)
    try:
        from sabench.report.history import record_run

        record_run(path)
    except Exception as e:  # pragma: no cover
        print(f"sabench: history not updated ({type(e).__name__}: {e})", file=sys.stderr)

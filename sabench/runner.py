"""Run a suite: every point in its own process, OOM as data, results that survive anything.

results.json is rewritten atomically (temp file, fsync, rename) after every
point, so killing the runner at any moment leaves a valid file; `--resume` with
the same `--out` measures only the points missing from it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from sabench.paths import reports_dir
from sabench.io import write_atomic
from sabench.records import PHASES, SCHEMA, ResultsError, load_results, point_key
from sabench.suite import (MAX_BATCH, Suite, SuiteError, find_suite, load_suite, resolve_device,
                           resolve_execution)

# Fault injection for tests: point keys ("variant|batch|seq", comma-separated) whose worker
# raises an out-of-memory error, so OOM handling is exercised on machines that never run out.
FAULT_ENV = "SABENCH_FAULT_OOM"


# ---------------------------------------------------------------- results file
def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1))


def default_out_dir(suite: Suite) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return reports_dir() / suite.name / f"{stamp}-{socket.gethostname()}"


# Suite settings that change what a number means: a resumed run must not mix them.
# (value assumed when an older results.json lacks the key: runs before execution modes were eager)
_COMPARABLE = {"model_config": None, "dtype": None, "decode_tokens": None, "warmup": None, "repeats": None,
               "prefill_chunk": None, "memory": None, "execution": "eager"}


def cache_root() -> Path:
    """sabench's per-user cache: SABENCH_CACHE_DIR, else ~/.cache/sabench (XDG_CACHE_HOME honoured)."""
    env = os.environ.get("SABENCH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sabench"


def inductor_cache_dir() -> Path:
    """Where compiled artefacts persist across the points, processes and runs of this user.

    TORCHINDUCTOR_CACHE_DIR when set, else cache_root()/inductor. Inductor's FX-graph and
    autotuning caches live there, so a point process compiling a graph another point (or
    an earlier run) already compiled loads it instead.
    """
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(env) if env else cache_root() / "inductor"


def _open_results(out: Path, suite: Suite, resume: bool) -> Optional[dict]:
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


# ---------------------------------------------------------------- one point
_CTX = None


def _context():
    """A forkserver that has imported torch and sabench once: each point is still a fresh
    process (its own allocator, its own CUDA context) but starts in milliseconds, not the
    1-2 s an interpreter needs to import torch. The server never touches CUDA."""
    global _CTX
    if _CTX is None:
        import multiprocessing as mp

        # torch and NVML must number GPUs alike (the sampler also matches by PCI bus id)
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["sabench._forkserver_preload"])
    return _CTX


def run_point(spec: dict, workdir: Path) -> tuple[dict, dict]:
    """Measure one point in its own process; returns (records by phase, overhead)."""
    from sabench.worker import child_main

    key = point_key(spec["variant"], spec["batch_size"], spec["seq_len"])
    result_path, stderr_path = workdir / "result.json", workdir / "stderr.txt"
    for f in (result_path, stderr_path):
        if f.exists():
            f.unlink()
    spec = dict(spec, t_spawn=time.time())
    t0 = time.perf_counter()
    proc = _context().Process(target=child_main, args=(spec, str(result_path), str(stderr_path)), daemon=True)
    proc.start()
    proc.join()
    wall = time.perf_counter() - t0
    if proc.exitcode == 0 and result_path.exists():
        result = json.loads(result_path.read_text())
        overhead = dict(result["overhead"], total_s=wall)
        return {r["phase"]: r for r in result["records"]}, overhead
    tail = stderr_path.read_text(errors="replace").strip().splitlines() if stderr_path.exists() else []
    if proc.exitcode is not None and proc.exitcode < 0:
        sig = signal.Signals(-proc.exitcode).name
        msg = f"worker killed by {sig}" + (" (the kernel's OOM killer, likely)" if sig == "SIGKILL" else "")
        status = "oom" if sig == "SIGKILL" else "error"
    else:
        msg = f"worker exited with code {proc.exitcode}: " + (tail[-1] if tail else "no message")
        status = "error"
    records = {}
    for phase in PHASES:
        records[phase] = {"variant": spec["variant"], "batch_size": spec["batch_size"],
                          "seq_len": spec["seq_len"], "phase": phase, "status": status, "error": msg[:500],
                          "stderr_tail": "\n".join(tail[-20:])}
    return records, {"total_s": wall, "point": key}


# ---------------------------------------------------------------- progress
class _Progress:
    """A bar with the current point and an ETA on a terminal; plain lines otherwise."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.t0 = total, done, time.perf_counter()
        self.measured = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="point", dynamic_ncols=True)

    def start(self, label: str):
        if self.bar is not None:
            self.bar.set_description(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label} ...", file=sys.stderr, flush=True)

    def finish(self, label: str, summary: str, measured: bool = True):
        self.done += 1
        self.measured += measured
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.update(1)
            return
        eta = ""
        if self.measured:
            elapsed = time.perf_counter() - self.t0
            eta = f" (ETA {elapsed / self.measured * (self.total - self.done):.0f} s)"
        print(f"[{self.done}/{self.total}] {label}: {summary}{eta}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _summary(records: dict) -> str:
    parts = []
    for phase in PHASES:
        r = records.get(phase, {})
        if r.get("status") == "ok":
            parts.append(f"{phase} {r['latency_ms']['median']:.3g} ms")
        else:
            parts.append(f"{phase} {r.get('status')}")
    return ", ".join(parts)


# ---------------------------------------------------------------- calibration
def calibrate_in_subprocess(device: str, dtype: str, workdir: Path) -> dict:
    """Roofline ceilings measured in a child, so the runner never holds a CUDA context."""
    out = workdir / "calibration.json"
    code = ("import json,sys; from sabench.measure.calibrate import calibrate; from sabench.dtypes import parse_dtype;"
            f"c = calibrate({device!r}, parse_dtype({dtype!r})); json.dump(c, open({str(out)!r}, 'w'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"calibration_error": (proc.stderr.strip().splitlines() or ["unknown"])[-1]}
    return json.loads(out.read_text())


def _env(device: str, dtype: str, workdir: Path) -> dict:
    from sabench.measure.env import capture_env

    env = capture_env("cpu")  # the parent stays off the GPU; device facts come from the child below
    env["device"] = device
    cal = calibrate_in_subprocess(device, dtype, workdir)
    env.update({k: v for k, v in cal.items() if k != "calibration"})
    env["calibration"] = cal.get("calibration")
    if device.startswith("cuda"):
        code = ("import json,torch; from sabench.measure.env import capture_env; "
                f"print(json.dumps(capture_env({device!r})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode == 0:
            gpu = json.loads(proc.stdout.strip().splitlines()[-1])
            env.update({k: v for k, v in gpu.items() if v is not None})
    return env


# ---------------------------------------------------------------- batch_size: max
MAX_ATTEMPTS = 6  # runs of one `max` point: the predicted batch, then steps down by 1/8 on OOM


def memory_budget(suite: Suite, env: dict, device: str) -> tuple:
    """(bytes a `max` batch must fit in, where that figure came from).

    The suite's `memory` key wins; otherwise the CUDA device's total memory (env capture),
    or on CPU the RAM available when the run starts (/proc/meminfo MemAvailable)."""
    if suite.memory:
        return suite.memory, "suite memory"
    if device.startswith("cuda") and env.get("memory_total_bytes"):
        return int(env["memory_total_bytes"]), "device total memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return None, "unknown: set `memory:` in the suite"


def _done_max(records) -> set:
    return {(r["variant"], r["seq_len"]) for r in records if r.get("batch_request") == MAX_BATCH
            and "max_attempts" in r}


def _run_max_point(p, suite: Suite, base_spec: dict, budget, workdir: Path, data: dict):
    """Resolve and measure one `max` point: predict the largest batch that fits, run it, step
    down by 1/8 (at least 1) on OOM, at most MAX_ATTEMPTS runs.

    Every attempt's records carry batch_request "max", predicted_max_batch and max_attempt; the
    last attempt's also carry max_attempts (batch and status of each). A batch the suite also
    lists explicitly and that was already measured is not run again: its records are annotated.
    Returns (new records, overheads, the last attempt's records by phase)."""
    from sabench import memory_model

    budget_bytes, source = budget
    predicted = 0
    if budget_bytes:
        predicted, _ = memory_model.max_batch(suite.model_config, p.variant, suite.dtype, p.seq_len,
                                              budget_bytes, suite.decode_tokens, suite.prefill_chunk,
                                              base_spec["device"])
    info = {"batch_request": MAX_BATCH, "predicted_max_batch": predicted, "memory_budget_bytes": budget_bytes,
            "memory_budget_source": source}
    by_key = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]): r for r in data["records"]}
    b, attempts, new, overheads = max(predicted, 1), [], [], {}
    while len(attempts) < MAX_ATTEMPTS:
        existing = {ph: by_key.get((p.variant, b, p.seq_len, ph)) for ph in PHASES}
        measured = all(r and r["status"] in ("ok", "oom") for r in existing.values())
        if measured and (b in suite.batch_sizes or all(
                r.get("batch_request") == MAX_BATCH for r in existing.values())):  # measured before
            records = existing
        else:  # an explicit point skipped after an OOM elsewhere is measured now, in its place
            stale = [r for r in existing.values() if r is not None]
            data["records"] = [r for r in data["records"] if not any(r is x for x in stale)]
            spec = dict(base_spec, batch_size=b)
            records, overhead = run_point(spec, workdir)
            overheads[point_key(p.variant, b, p.seq_len)] = overhead
            new += [records[ph] for ph in PHASES]
        statuses = [records[ph]["status"] for ph in PHASES]
        status = "ok" if all(x == "ok" for x in statuses) else (
            "oom" if "oom" in statuses else next(x for x in statuses if x != "ok"))
        attempts.append({"batch_size": b, "status": status})
        for r in records.values():
            r.update(info, max_attempt=len(attempts))
        if status != "oom" or b == 1:
            break
        b = max(1, min(b - 1, b * 7 // 8))
    for r in records.values():
        r["max_attempts"] = attempts
    return new, overheads, records


# ---------------------------------------------------------------- the sweep
def run_suite(suite_arg, out=None, resume: bool = False, variants=None, report: bool = True,
              threads: Optional[int] = None, execution: Optional[str] = None) -> int:
    """Run a suite; returns the CLI exit code (0 all ok or OOM, 1 some point errored).

    execution: None keeps the suite's; "eager" or "compiled" overrides it. The suite
    stored in results.json carries the resolved mode (never "auto").
    """
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
    cache_dir = str(inductor_cache_dir()) if suite.execution == "compiled" else None
    if resume and out is None:
        raise ValueError("--resume needs --out: the run directory to complete")
    out = Path(out) if out is not None else default_out_dir(suite)
    out.mkdir(parents=True, exist_ok=True)
    existing = _open_results(out, suite, resume)
    path = out / "results.json"
    workdir = Path(tempfile.mkdtemp(prefix="sabench-"))

    if existing is None:
        data = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "env": _env(device, suite.dtype, workdir), "suite": suite.to_dict(), "overhead": {},
                "records": []}
        if cache_dir:
            data["env"]["inductor_cache_dir"] = cache_dir
        write_json_atomic(path, data)
    else:
        data = existing
        data["suite"]["variants"] = list(dict.fromkeys(data["suite"]["variants"] + list(suite.variants)))
    peaks = {k: data["env"].get(k) for k in ("peak_bandwidth_bytes_per_s", "peak_flops_per_s")}

    done = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]) for r in data["records"]}
    done_max = _done_max(data["records"])
    points = suite.points()
    todo = [p for p in points if ((p.variant, p.seq_len) not in done_max if p.batch_size == MAX_BATCH
                                  else any((*p, ph) not in done for ph in PHASES))]
    budget = memory_budget(suite, data["env"], device) if MAX_BATCH in suite.batch_sizes else None
    progress = _Progress(len(points), len(points) - len(todo))
    if resume:
        print(f"resuming {path}: {len(points) - len(todo)} of {len(points)} points already measured",
              file=sys.stderr)
    oom_at: dict = {}  # (variant, batch) -> smallest seq_len that ran out of memory
    for r in data["records"]:
        if r.get("status") == "oom" and r.get("batch_request") != MAX_BATCH:
            k = (r["variant"], r["batch_size"])
            oom_at[k] = min(oom_at.get(k, r["seq_len"]), r["seq_len"])
    failed = 0
    try:
        for p in todo:
            label = f"{p.variant} B={p.batch_size} T={p.seq_len}"
            k = (p.variant, p.batch_size)
            spec = {"model_config": suite.model_config.to_dict(), "device": device, "dtype": suite.dtype,
                    "variant": p.variant, "batch_size": p.batch_size, "seq_len": p.seq_len,
                    "decode_tokens": suite.decode_tokens, "warmup": suite.warmup,
                    "repeats": suite.repeats, "prefill_chunk": suite.prefill_chunk, "peaks": peaks,
                    "threads": threads, "fault_oom": os.environ.get(FAULT_ENV),
                    "execution": suite.execution, "inductor_cache_dir": cache_dir,
                    "count_cache_dir": str(cache_root() / "flops")}
            if p.batch_size == MAX_BATCH:
                progress.start(label)
                new, overheads, final = _run_max_point(p, suite, spec, budget, workdir, data)
                data["records"] += new
                data["overhead"].update(overheads)
                failed += sum(r["status"] == "error" for r in new)
                write_json_atomic(path, data)
                b_run = final[PHASES[0]]["batch_size"]
                progress.finish(label, f"B={b_run} (predicted {final[PHASES[0]]['predicted_max_batch']}): "
                                + _summary(final), measured=bool(new))
                continue
            if k in oom_at and p.seq_len > oom_at[k]:
                records = {ph: {"variant": p.variant, "batch_size": p.batch_size, "seq_len": p.seq_len,
                                "phase": ph, "status": "skipped_after_oom",
                                "error": f"seq_len {oom_at[k]} already ran out of memory at this batch size"}
                           for ph in PHASES}
                overhead = None
            else:
                progress.start(label)
                records, overhead = run_point(spec, workdir)
                if all(records[ph]["status"] == "oom" for ph in PHASES):
                    oom_at[k] = min(oom_at.get(k, p.seq_len), p.seq_len)
            for ph in PHASES:
                if (*p, ph) not in done:
                    data["records"].append(records[ph])
                    failed += records[ph]["status"] == "error"
            if overhead is not None:
                data["overhead"][p.key] = overhead
            write_json_atomic(path, data)
            progress.finish(label, _summary(records), measured=overhead is not None)
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

"""Sweeping a suite: rounds of points, the results file, resuming, retrying, OOM skips, progress.

Every round visits every point once, in the round's shuffled order (harness.rounds); each
(point, round) is its own point process, merged into the point's one phase record per phase.
results.json is rewritten atomically (temp file, fsync, rename) after every point, so killing
the runner at any moment leaves a valid file; `--resume` with the same `--out` measures only
the (point, round) pairs missing from it (and, with `retry`, those that failed), and only for
the suite that wrote it. Ctrl-C at any stage ends the run with RunInterrupted (one line, the
command that goes on) once every point process has ended. The suite is turned into typed
PointJobs here, from its plans (each variant parsed once, when the suite was loaded): the sweep,
its shard and the point processes parse nothing. The records are typed PhaseRecords throughout
(a resume continues the RunRecord that load_results returns); results.json is written from them.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from sabench.devices import resolve_device, resolve_execution, resolve_threads
from sabench.harness.environment import busy_warning, capture_run_env, run_conditions
from sabench.harness.device_list import device_facts, devices_text, merge_device_facts, physical_gpu, resolve_pins
from sabench.harness import interrupts
from sabench.harness.faults import fault_keys_from_env, kill_keys_from_env, pause_at, slowdown_from_env
from sabench.harness.job import PointJob
from sabench.harness.launch import run_point, warm_server
from sabench.harness.lock import holds_run_lock, lock_run_dir
from sabench.harness.max_batch import done_max, memory_budget, run_max_point
from sabench.harness.pool import Pool, Slot, cell_units
from sabench.harness.preflight import preflight
from sabench.harness.same_suite import FIELDS, IDENTITY, differences
from sabench.harness.progress import Progress, summary
from sabench.harness.shard import check_resume, suite_shard
from sabench.harness.rounds import RETRY_STATUSES, failing_rounds, merge_round, round_order, round_status
from sabench.errors import RunInterrupted, UserError
from sabench.loading import point_extras
from sabench.paths import cache_root, inductor_cache_dir, reports_dir
from sabench.records import (PHASES, Overhead, PhaseRecord, PointSpec, ResultsError, RunRecord, load_results,
                             write_results)
from sabench.suite import Suite, SuiteError, find_suite, load_suite
from sabench.suite_fields import MAX_BATCH

def default_out_dir(suite: Suite) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return reports_dir() / suite.name / f"{stamp}-{socket.gethostname()}"


def open_results(out: Path, suite: Suite, resume: bool, variants_given: bool = False,
                 threads_given: bool = False) -> Optional[RunRecord]:
    """The results file to complete (resume), None to start one; ValueError on a mismatch.

    A run is completed only by its own suite (harness.same_suite): another name, model, variant
    list or sweep is another suite's run, and a changed setting would mix numbers that mean
    different things. `rounds` may differ (a resume adds rounds); `threads` only when not given
    (the resume keeps the run's); the variants when given (--variant adds them to the run)."""
    path = out / "results.json"
    if not path.exists():
        if resume:
            raise UserError(f"--resume: {path} does not exist; nothing to resume")
        return None
    if not resume:
        raise UserError(f"{path} already exists: pass --resume to complete it, or another --out")
    try:
        run = load_results(path)  # validated; a v1 file is upgraded to this schema
    except ResultsError as e:
        raise UserError(f"--resume: {e}") from None
    old, new = run.suite, suite.to_dict()
    fields = [k for k in FIELDS if not (variants_given and k == "variants")] + (["threads"] if threads_given else [])
    diff = differences(old, new, fields)
    if any(k in IDENTITY for k in diff):
        named = list(dict.fromkeys("model" if k == "model_config" else k for k in diff))
        hint = ("; to measure other variants into the run, name them with --variant" if named == ["variants"]
                else "; use another --out")
        raise UserError(f"--resume: {out} was written by suite {_described(old, diff)}, this is "
                         f"{_described(new, diff)}; differs in: {', '.join(named)}{hint}")
    if diff:
        raise UserError(f"--resume: the suite changed since {path} was written ({', '.join(diff)} differ); "
                         "use another --out")
    return run


def _described(suite: dict, diff: list) -> str:
    """'smoke' (variants baseline, cla:2), with the model and the sweep when they differ."""
    parts = [f"variants {', '.join(suite.get('variants') or [])}"]
    if "model" in diff or "model_config" in diff:
        parts.append(f"model {suite.get('model')}")
    if "sweep" in diff:
        sweep = suite.get("sweep") or {}
        parts.append(f"batch sizes {sweep.get('batch_size')}, seq_lens {sweep.get('seq_len')}")
    return f"{suite.get('name')!r} ({'; '.join(parts)})"


def resolve_suite(suite_arg, variants=None, execution: Optional[str] = None, rounds: Optional[int] = None,
                  threads: Optional[int] = None) -> tuple[Suite, str]:
    """(the suite with --variant, --rounds, --threads and the execution mode applied, the device that runs it)."""
    suite = suite_arg if isinstance(suite_arg, Suite) else load_suite(find_suite(suite_arg))
    if variants:
        suite = suite.with_variants(variants)
    if rounds is not None:
        suite = dataclasses.replace(suite, rounds=rounds)
    if threads is not None:
        suite = dataclasses.replace(suite, threads=threads)
    try:
        device = resolve_device(suite.device)
    except ValueError as e:
        raise SuiteError(suite.path or suite.name, "device", str(e)) from None
    try:
        suite = dataclasses.replace(suite, execution=resolve_execution(execution or suite.execution, device))
    except ValueError as e:
        raise SuiteError(suite.path or suite.name, "--execution" if execution else "execution", str(e)) from None
    return suite, device


def point_jobs(suite: Suite, device: str, peaks: dict, threads: Optional[int] = None) -> dict:
    """{variant: PointJob template} with the suite's plan of the variant (parsed once, when the
    suite was); its point is set per point (`job.replace(point=...)`)."""
    cache_dir = str(inductor_cache_dir()) if suite.execution == "compiled" else None
    common = dict(cfg=suite.model_config, device=device, dtype=suite.dtype,
                  decode_tokens=suite.decode_tokens, warmup=suite.warmup, repeats=suite.repeats,
                  prefill_chunk=suite.prefill_chunk, execution=suite.execution, peaks=peaks, threads=threads,
                  fault_oom=fault_keys_from_env(), fault_slowdown=slowdown_from_env(),
                  fault_kill=kill_keys_from_env(), inductor_cache_dir=cache_dir,
                  count_cache_dir=str(cache_root() / "flops"),
                  tensor_parallel=suite.tensor_parallel, link_bandwidth=suite.link_bandwidth)
    return {v: PointJob(point=PointSpec(v, 0, 0), plan=suite.plans[v], **common) for v in suite.variants}


def _new_results(suite: Suite, device: str, workdir: Path, gpus=None, shard=None, pins=None) -> RunRecord:
    env = capture_run_env(device, suite.dtype, workdir)
    env["conditions"] = run_conditions(device, "before", gpus)
    if suite.execution == "compiled":
        env["inductor_cache_dir"] = str(inductor_cache_dir())
    if pins:
        env["devices"] = device_facts(pins, device)
    extra = {"run_id": uuid.uuid4().hex}  # tells runs apart in the history even when created in the same second
    if shard is not None:
        extra["shard"] = shard.to_dict()
    return RunRecord(env=env, suite=suite.to_dict(), extra=extra,
                     created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _oom_seq_lens(records) -> dict:
    """(variant, batch) -> the smallest seq_len that ran out of memory (explicit batches)."""
    oom_at: dict = {}
    for r in records:
        if r.status == "oom" and r.batch_request != MAX_BATCH:
            k = (r.variant, r.batch_size)
            oom_at[k] = min(oom_at.get(k, r.seq_len), r.seq_len)
    return oom_at


@holds_run_lock
def run_suite(suite_arg, out=None, resume: bool = False, variants=None, report: bool = True,
              threads: Optional[int] = None, execution: Optional[str] = None, rounds: Optional[int] = None,
              retry_failed: Optional[str] = None, shard=None, devices=None) -> int:
    """Run a suite; returns the CLI exit code (0 all ok or OOM, 1 some point's round is still failing).

    execution: None keeps the suite's; "eager" or "compiled" overrides it. The suite
    stored in results.json carries the resolved mode (never "auto"). rounds, threads: None
    keeps the suite's. retry_failed ("errors" or "oom", with resume): the rounds that failed
    with those statuses are measured again. shard: a sabench.harness.shard.Shard: measure only its
    points, and record it as `shard`. devices: device_list.parse_devices's ids (or ALL): the point
    processes run concurrently, one per device, each pinned to its GPU (harness.pool); None: one
    device, as the suite says.
    """
    suite, device = resolve_suite(suite_arg, variants, execution, rounds=rounds, threads=threads)
    pins = resolve_pins(devices, device, suite.tensor_parallel) if devices is not None else None
    # whose clocks and throttling env.conditions records: the pinned GPUs, or the suite's one
    gpus = [p.gpu for p in pins] if pins else None
    if gpus is None and device.startswith("cuda"):
        gpus = [physical_gpu(int(device.partition(":")[2] or 0))]
    if pins and device.startswith("cuda"):  # each point process sees only its GPU: cuda:0 there
        device, job_device = f"cuda:{pins[0].id}", "cuda"
    else:
        job_device = device
    if resume and out is None:
        raise UserError("--resume needs --out: the run directory to complete")
    if retry_failed and not resume:
        raise UserError("--retry-failed needs --resume and the --out of the run whose failed points to retry")
    out = Path(out) if out is not None else default_out_dir(suite)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    started, progress, workdir = resume, None, None
    try:  # Ctrl-C from here on, at any stage: one line with the command that goes on (cli)
        lock_run_dir(out)  # held until run_suite returns: a second run on `out` refuses
        existing = open_results(out, suite, resume, variants_given=bool(variants),
                                threads_given=threads is not None)
        if existing is not None and threads is None:  # a resume measures with the threads the run measured with
            suite = dataclasses.replace(suite, threads=existing.suite.get("threads"))
        preflight(suite, device, out, len(suite.points()))  # faults that would break every point, in seconds
        busy = busy_warning()
        if busy:
            print(busy, file=sys.stderr)
        workdir = Path(tempfile.mkdtemp(prefix="sabench-"))
        if existing is None:
            run = _new_results(suite, device, workdir, gpus, shard, pins)
            write_results(path, run)
            started = True
        else:
            run = _continue_results(existing, suite, device, gpus, shard, pins, path)
        peaks = {k: run.env.get(k) for k in ("peak_bandwidth_bytes_per_s", "peak_flops_per_s")}
        jobs = point_jobs(suite, job_device, peaks, resolve_threads(suite.threads, job_device))
        sweep = _Sweep(suite, device, run, path, workdir, jobs, RETRY_STATUSES.get(retry_failed, ()), peaks)
        sweep.points = suite_shard(suite, suite.points(), shard)
        todo = sweep.todo()
        if todo:
            warm_server()
        total = suite.rounds * len(sweep.points)
        progress = sweep.progress = Progress(total, total - len(todo))
        if resume:
            print(f"resuming {path}: {total - len(todo)} of {total} (point, round) pairs already measured",
                  file=sys.stderr)
        pool = Pool(_slots(pins, workdir))
        sweep.stop = pool.stop
        try:  # every point process has ended when pool.run returns or raises
            pool.run(cell_units(todo, by_cell=len(pool.slots) > 1),
                     lambda kp, slot: sweep.measure(kp[1], kp[0], slot))
        finally:
            progress.close()
            with interrupts.ignored(), sweep.lock:  # a second Ctrl-C must not cut the last write short
                sweep.run = dataclasses.replace(sweep.run, env=dict(sweep.run.env, conditions=dict(
                    sweep.run.env.get("conditions") or {}, **run_conditions(device, "after", gpus))))
                sweep.write()
        print(f"results: {path}", file=sys.stderr)
        if report:
            _finish(out, path, history=shard is None)  # a shard's partial run: its merge is recorded
    except KeyboardInterrupt:  # results.json holds every point finished: say so, and how to go on
        go_on = _command(suite, out, variants, rounds, shard, pins, resume=started)
        raise RunInterrupted(path, progress and progress.done, progress and progress.total, go_on,
                             started=started) from None
    finally:
        if workdir is not None:
            with interrupts.ignored():
                shutil.rmtree(workdir, ignore_errors=True)
    failing = failing_rounds(sweep.records)
    if failing:
        shown = ", ".join(f"{label} (round {k})" for label, k in failing[:5])
        print(f"sabench: {len(failing)} point phase round(s) failed: {shown}{' ...' if len(failing) > 5 else ''}; "
              f"measure them again with: sabench run {suite.path or suite.name} --out {out} --resume "
              "--retry-failed", file=sys.stderr)
    return 1 if failing else 0


def _command(suite: Suite, out: Path, variants, rounds, shard, pins, resume: bool) -> str:
    """The `sabench run` command line that goes on with this run (resume: with --resume)."""
    return " ".join(["sabench run", str(suite.path or suite.name), "--out", str(out)]
                    + (["--resume"] if resume else [])
                    + [f"--variant {v}" for v in (variants or [])]
                    + ([f"--rounds {suite.rounds}"] if rounds else [])
                    + ([f"--shard {shard.label}"] if shard is not None else [])
                    + ([f"--devices {devices_text(pins)}"] if pins else []))


def _continue_results(run: RunRecord, suite: Suite, device: str, gpus, shard, pins, path: Path) -> RunRecord:
    """A resumed run's results, made ready for this run's points (the same shard, the variants added)."""
    check_resume(run.extra.get("shard"), shard, path)
    echo = dict(run.suite, variants=list(dict.fromkeys(run.suite["variants"] + list(suite.variants))),
                rounds=max(run.suite.get("rounds") or 1, suite.rounds))
    env = dict(run.env, conditions=dict(run.env.get("conditions") or {}, **run_conditions(device, "before", gpus)))
    if pins:  # another --devices than the first run's is fine: each round names its device
        env["devices"] = merge_device_facts(env.get("devices"), device_facts(pins, device))
    return dataclasses.replace(run, suite=echo, env=env)


def _slots(pins, workdir: Path) -> list:
    """One slot per --devices entry, each with its own work directory; without --devices one unpinned slot."""
    if not pins:
        return [Slot(0, None, workdir)]
    out = []
    for pin in pins:
        (workdir / f"slot-{pin.id}").mkdir()
        out.append(Slot(pin.id, pin.gpu, workdir / f"slot-{pin.id}"))
    return out


class _Sweep:
    """The points of a run, round by round: what is left to measure, measuring one (point, round).

    Slots (harness.pool) call `run` concurrently: measuring holds nothing; reading and changing
    the records, the overheads and results.json happen under `lock`. The records are typed
    (PhaseRecord) from the point process's edge (harness.launch) to results.json (`write`)."""

    def __init__(self, suite: Suite, device: str, run: RunRecord, path: Path, workdir: Path, jobs: dict,
                 retry: tuple, peaks: Optional[dict] = None):
        self.suite, self.path, self.workdir, self.jobs, self.retry = suite, path, workdir, jobs, retry
        self.run, self.peaks = run, peaks  # the run's env, suite echo and stamps; the records are kept apart
        self.records: list = list(run.records)
        self.overhead: dict = dict(run.overhead)
        self.at = {r.key: i for i, r in enumerate(self.records)}
        self.oom_at = _oom_seq_lens(self.records)
        self.resolved_max = done_max(self.records)
        self.budget = memory_budget(suite, run.env, device) if MAX_BATCH in suite.batch_sizes else None
        self.progress = None
        self.points = suite.points()  # run_suite narrows it to a shard
        self.lock = threading.RLock()
        self.stop = threading.Event()  # the pool's: set when the run is interrupted

    def write(self) -> None:
        """results.json as it stands (atomically: temp file, fsync, rename)."""
        write_results(self.path, dataclasses.replace(self.run, records=tuple(self.records),
                                                     overhead=dict(self.overhead)))

    def record(self, p: PointSpec, phase: str) -> Optional[PhaseRecord]:
        i = self.at.get(p.record_key(phase))
        return None if i is None else self.records[i]

    def needed(self, p: PointSpec, k: int) -> bool:
        if p.batch_size == MAX_BATCH:  # resolved and measured in the first round only
            return k == 1 and (p.variant, p.seq_len) not in self.resolved_max
        return any(round_status(self.record(p, ph), k) in (None, *self.retry) for ph in PHASES)

    def todo(self) -> list:
        created = self.run.created
        if self.suite.rounds == 1:  # one round: the suite's order, sizes ascending, so OOM skips apply
            return [(1, p) for p in self.points if self.needed(p, 1)]
        return [(k, p) for k in range(1, self.suite.rounds + 1)
                for p in round_order(self.points, created, k) if self.needed(p, k)]

    def measure(self, p: PointSpec, k: int, slot: Optional[Slot] = None) -> None:
        slot = slot or Slot(0, None, self.workdir)
        with self.lock:
            job = self.jobs[p.variant].replace(point=p, gpu=slot.gpu,
                                              **point_extras(self.suite, p.variant, self.records))
            label = f"{job.label} round {k}" + (f" on GPU {slot.gpu}" if slot.gpu is not None else "")
            if p.batch_size == MAX_BATCH:  # reads and rewrites the records while it steps down: under the lock
                return self._run_max(job, label, slot)
            skip = self._skip_reason(p, k)
            if skip is None:
                self.progress.start(label)
        where = None
        if skip is not None:
            records, overhead = {ph: PhaseRecord.skipped_after_oom(p, ph, skip) for ph in PHASES}, None
        else:
            t0 = time.time()
            records, overhead = run_point(job, slot.workdir)
            where = _where(slot, overhead, t0, time.time())
            if self.stop.is_set() and any(not records[ph].ok for ph in PHASES):
                return  # the run was interrupted and this process ended with it: not a measurement
        with self.lock:
            self._record(p, k, label, records, overhead, where)

    def _run_max(self, job: PointJob, label: str, slot: Slot) -> None:
        self.progress.start(label)
        self.records, overheads, final = run_max_point(job, self.suite.batch_sizes, self.budget, slot.workdir,
                                                       self.records)
        self.at = {r.key: i for i, r in enumerate(self.records)}
        self.overhead.update({k: Overhead.of(o) for k, o in overheads.items()})
        self.write()
        first = final[PHASES[0]]
        self.progress.finish(label, f"b={first.batch_size} (predicted {first.predicted_max_batch}): "
                             + summary(final), measured=bool(overheads))

    def _record(self, p: PointSpec, k: int, label: str, records: dict, overhead, where) -> None:
        """Merge one (point, round) into the records and rewrite results.json (under the lock)."""
        if overhead is not None and all(records[ph].status == "oom" for ph in PHASES):
            kb = (p.variant, p.batch_size)
            self.oom_at[kb] = min(self.oom_at.get(kb, p.seq_len), p.seq_len)
        for ph in PHASES:
            merged = merge_round(self.record(p, ph), records[ph], k, where, self.peaks)
            i = self.at.get(merged.key)
            if i is None:
                self.at[merged.key] = len(self.records)
                self.records.append(merged)
            else:
                self.records[i] = merged
        if overhead is not None:
            self._overhead(p.key, k, overhead)
        self.write()
        self.progress.finish(label, summary(records), measured=overhead is not None)

    def _skip_reason(self, p: PointSpec, k: int) -> Optional[str]:
        """Why (point, round) is not measured, or None: a point that ran out of memory in every
        earlier round, or a longer prompt than one that ran out of memory at this batch size."""
        earlier = [round_status(self.record(p, PHASES[0]), j) for j in range(1, k)]
        earlier = [s for s in earlier if s is not None]
        if any(s == "ok" for s in earlier):
            return None
        if earlier and all(s in ("oom", "skipped_after_oom") for s in earlier) and "oom" not in self.retry:
            return f"ran out of memory (or was skipped after an OOM) in every earlier round of {p.key}"
        kb = (p.variant, p.batch_size)
        if kb in self.oom_at and p.seq_len > self.oom_at[kb]:
            return f"seq_len {self.oom_at[kb]} already ran out of memory at this batch size"
        return None

    def _overhead(self, key: str, k: int, overhead: dict) -> None:
        """The first round's overhead as the point's; later rounds add their process's total time."""
        old = self.overhead.get(key)
        by_round = dict(old.extra.get("total_s_by_round") or {}) if old is not None else {}
        by_round[str(k)] = overhead.get("total_s")
        if k == 1 or old is None:
            self.overhead[key] = Overhead.of(dict(overhead, total_s_by_round=by_round))
        else:
            self.overhead[key] = dataclasses.replace(old, extra=dict(old.extra, total_s_by_round=by_round))


def _where(slot: Slot, overhead: dict, t_start: float, t_end: float) -> Optional[dict]:
    """Where and when a pinned (point, round) ran: the GPU its process saw (or was given, when it
    left no result), that GPU's bus id and the process's start and end (unix s); None unpinned."""
    seen = overhead.pop("device", None)
    if slot.gpu is None:
        return None
    return {"device": seen.get("gpu") if seen else slot.gpu, "device_bus_id": (seen or {}).get("pci_bus_id"),
            "t_start": t_start, "t_end": t_end}


def _finish(out: Path, path: Path, history: bool = True) -> None:
    """Report and history; a failure here must not lose the measurements already on disk."""
    pause_at("report")  # a test seam: hold here to be interrupted
    try:
        from sabench.report import write_report

        print(f"report:  {write_report(out)}", file=sys.stderr)
    except Exception as e:  # pragma: no cover - report failures are reported, results are kept
        print(f"sabench: report not written ({type(e).__name__}: {e}); results are intact", file=sys.stderr)
    if not history:
        return
    try:
        from sabench.history import record_run

        record_run(path)
    except Exception as e:  # pragma: no cover
        print(f"sabench: history not updated ({type(e).__name__}: {e})", file=sys.stderr)

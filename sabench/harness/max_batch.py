"""`batch_size: max`: predict the largest batch that fits, run it, step down on OOM."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from sabench.harness.job import PointJob
from sabench.harness.launch import run_point
from sabench.records import PHASES, MaxAttempt, PhaseRecord
from sabench.suite import Suite
from sabench.suite_fields import MAX_BATCH

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


def done_max(records) -> set:
    """(variant, seq_len) of the `max` points a results file already resolved."""
    return {(r.variant, r.seq_len) for r in records if r.batch_request == MAX_BATCH and r.max_attempts is not None}


def predicted_max_batch(job: PointJob, budget_bytes) -> int:
    from sabench import memory_model

    if not budget_bytes:
        return 0
    return memory_model.max_batch(job.cfg, job.plan, job.dtype, job.seq_len, budget_bytes, job.decode_tokens,
                                  job.prefill_chunk, job.device)[0]


def _attempt_status(records: dict) -> str:
    statuses = [records[ph].status for ph in PHASES]
    if all(x == "ok" for x in statuses):
        return "ok"
    return "oom" if "oom" in statuses else next(x for x in statuses if x != "ok")


def _swap(records: list, old: dict, new: dict) -> list:
    """`records` with each record of `old` (by identity) replaced by `new`'s of its phase, or
    `new`'s appended when `old` holds none of them."""
    out = list(records)
    for ph, r in new.items():
        i = next((i for i, x in enumerate(out) if x is old.get(ph)), None)
        if i is None:
            out.append(r)
        else:
            out[i] = r
    return out


def run_max_point(job: PointJob, explicit_batches, budget, workdir: Path, records: Sequence[PhaseRecord]):
    """Resolve and measure one `max` point (`job`'s batch_size is ignored): predict the largest
    batch that fits, run it, step down by 1/8 (at least 1) on OOM, at most MAX_ATTEMPTS runs.

    Every attempt's records carry batch_request "max", predicted_max_batch and max_attempt; the
    last attempt's also carry max_attempts (batch and status of each). A batch the suite also
    lists explicitly (`explicit_batches`) and that was already measured is not run again: its
    records are annotated. Returns (the run's `records` with the attempts in, the overheads of the
    attempts run, the last attempt's records by phase)."""
    budget_bytes, source = budget
    predicted = predicted_max_batch(job, budget_bytes)
    info = {"batch_request": MAX_BATCH, "predicted_max_batch": predicted, "memory_budget_bytes": budget_bytes,
            "memory_budget_source": source}
    by_key = {r.key: r for r in records}
    out, b, attempts, overheads = list(records), max(predicted, 1), [], {}
    while len(attempts) < MAX_ATTEMPTS:
        existing = {ph: by_key.get((job.variant, b, job.seq_len, ph)) for ph in PHASES}
        measured = all(r is not None and r.status in ("ok", "oom") for r in existing.values())
        if measured and (b in explicit_batches or all(
                r.batch_request == MAX_BATCH for r in existing.values())):  # measured before
            got = existing
        else:  # an explicit point skipped after an OOM elsewhere is measured now, in its place
            stale = [r for r in existing.values() if r is not None]
            out = [r for r in out if not any(r is x for x in stale)]
            attempt = job.replace(batch_size=b)
            got, overheads[attempt.key] = run_point(attempt, workdir)
        attempts.append(MaxAttempt(b, _attempt_status(got)))
        final = {ph: replace(r, **info, max_attempt=len(attempts)) for ph, r in got.items()}
        out = _swap(out, got, final)
        if attempts[-1].status != "oom" or b == 1:
            break
        b = max(1, min(b - 1, b * 7 // 8))
    last = {ph: replace(r, max_attempts=tuple(attempts)) for ph, r in final.items()}
    return _swap(out, final, last), overheads, last

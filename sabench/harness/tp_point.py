"""A tensor-parallel point: one point's phases measured on N ranks (suite `parallel: {tensor: N}`).

Processes. The launcher (harness.launch) starts a TP point's process like any other, from the
forkserver, but *not daemonic*, and hands it `measure_on_ranks`: harness.point.measure assembles
the records as for any point and calls it for the phases, which launches the ranks with
harness.ranks.run_ranks (torch.distributed's elastic_launch: N spawned processes, gloo on the
CPU, NCCL on CUDA with rank r on GPU r). The point process itself never touches the
accelerator; it dies with the runner (PR_SET_PDEATHSIG, as every point process), and each rank
dies with the point process the same way, so no rank outlives a killed run.

What each rank runs. Its shard of the model (parallel.load_tp_model: for random weights its
slices of the very weights a TP-1 point of the same seed draws, for a checkpoint its slices as
read), its own cache (1/N of the KV heads: 1/N of the bytes), and the same phases as a TP-1 point
(harness.point.measure_phases: warmup, repeats, prefill then decode), with a barrier that every
rank passes, untimed, before each timed call (prefill) or sequence (decode). On the CPU the
ranks share the machine's cores: each gets 1/N of the point's threads.

What the records hold. `latency_ms` (and tokens/s, stability, memory, energy) are rank 0's; the
deterministic fields (`params`, `kv_cache_bytes`, `flops`, `bytes_moved`) are the model's, as a
TP-1 record of the same point has them; `tensor_parallel` adds one rank's analytic figures, the
all-reduce traffic, the link and every rank's measured cache, latency median and memory peaks.
`floor_ms`, `mfu` and `mbu` are one rank's, against one GPU's peaks, and the floor adds the
rank's all-reduce bytes over the link (harness.point reads them from `tensor_parallel.per_rank`;
accounting.tp_summary's floor, which inspect --tp shows). `memory_predicted_bytes` is one rank's
prediction (what rank 0's measured memory compares with).

Failures. The ranks' collectives tie them together: a rank that fails in any phase (out of
memory, an error) writes its failure and exits, the launcher then stops the others, and both
records of the point carry the first failing rank's status and message; a rank that died is
classified as a point process is (harness.exits). The fault seams
(SABENCH_FAULT_OOM, SABENCH_FAULT_KILL) fire on the last rank only. Perplexity (`quality`) is
not scored on tensor-parallel points yet (`quality_error` says so).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from sabench import accounting, devices, memory_model
from sabench.harness import point
from sabench.harness.exits import classify_exit
from sabench.harness.faults import maybe_inject_kill
from sabench.harness.job import PointJob
from sabench.harness.oom_evidence import oom_kill_count, oom_killed
from sabench.harness.phases import failure
from sabench.harness.ranks import TPLaunchError, run_ranks
from sabench.records import PhaseRecord
from sabench.records.parallel import RankMeasure, TensorParallel
from sabench.suite_fields import MAX_BATCH
from sabench.tp_shapes import rank_config

TIMING_RANK = 0  # whose samples are the record's latency


def link(job: PointJob) -> dict:
    """{"bytes_per_s", "source"}: the suite's parallel.link_bandwidth, else the datasheet's."""
    if job.link_bandwidth:
        return {"bytes_per_s": float(job.link_bandwidth), "source": "the suite's parallel.link_bandwidth"}
    return dict(accounting.NVLINK_DATASHEET)


def tp_blocks(job: PointJob) -> dict:
    """{phase: the record's `tensor_parallel` block before measurement}: one rank's analytic
    figures (phase totals, as the record's own), the all-reduce traffic and the link
    (records.rates derives the rank's roofline from them)."""
    world, b, t, n = job.tensor_parallel, job.batch_size, job.seq_len, job.decode_tokens
    rank_cfg = rank_config(job.cfg, world)
    rank_pre, rank_dec = point.analytic_records(job.replace(cfg=rank_cfg), {}, count=False)
    lk = link(job)
    summary = accounting.tp_summary(job.cfg, job.plan, b, t, job.dtype, world, job.prefill_chunk, lk)
    per_rank_link = summary["per_rank"]["link_bytes"]
    payload = {"prefill": accounting.all_reduce_bytes(rank_cfg, b, t, job.dtype, world)["payload"],
               "decode": accounting.all_reduce_bytes(rank_cfg, b, 1, job.dtype, world)["payload"] * n}
    out = {}
    for rec, link_bytes in ((rank_pre, per_rank_link["prefill"]), (rank_dec, per_rank_link["decode_step"] * n)):
        out[rec.phase] = TensorParallel(
            world=world, timing_rank=TIMING_RANK,
            per_rank={"params": rec.params, "weight_bytes": summary["per_rank"]["weight_bytes"],
                      "kv_cache_bytes": rec.kv_cache_bytes, "flops": rec.flops.analytic,
                      "bytes_moved": rec.bytes_moved},
            all_reduce_payload_bytes=payload[rec.phase], link_bytes=link_bytes,
            link_bandwidth_bytes_per_s=lk["bytes_per_s"], link_bandwidth_source=lk["source"])
    return out


def measure_on_ranks(job: PointJob, records, overhead: dict, notes: list) -> list[PhaseRecord]:
    """The point's `records` (prefill, decode before measurement) measured on job.tensor_parallel
    ranks (harness.point.measure's `on_ranks`): rank 0's measurement, one rank's memory prediction
    and the `tensor_parallel` block with every rank's figures; if a rank failed, the point's
    failure (rank_failure) instead of the measurement."""
    world = job.tensor_parallel
    predicted = memory_model.predict(rank_config(job.cfg, world), job.plan, job.dtype, job.batch_size,
                                     job.seq_len, job.decode_tokens, job.prefill_chunk,
                                     torch.device(job.device).type)
    blocks = tp_blocks(job)
    records = [replace(r, memory_predicted_bytes=predicted[r.phase].to_dict(),  # one rank's
                       tensor_parallel=blocks[r.phase]) for r in records]
    threads = job.threads or torch.get_num_threads()
    rank_dir = Path(tempfile.mkdtemp(prefix="sabench-tp-"))
    t0, ooms_before = time.perf_counter(), oom_kill_count()
    try:  # every rank measures the point's records; rank TIMING_RANK's are the point's
        ranks = run_ranks(_rank_main, world, (job, str(rank_dir), threads, records), device=job.device,
                          log_dir=str(rank_dir / "logs"))
    except TPLaunchError as e:
        fail = rank_failure(e, rank_dir, world, (ooms_before, oom_kill_count()))
        status, error = fail.pop("status"), fail.pop("error")
        return [r.with_failure(status, error, **fail) for r in records]
    finally:
        shutil.rmtree(rank_dir, ignore_errors=True)
    overhead["ranks_s"] = time.perf_counter() - t0
    lead = ranks[TIMING_RANK]
    overhead.update(lead["overhead"])
    notes.extend(lead["notes"])
    out = [replace(lead[r.phase], tensor_parallel=replace(
        r.tensor_parallel, ranks=tuple(_rank_summary(x, r.phase) for x in ranks)))
        .with_extra(torch_threads=lead["torch_threads"]) for r in records]
    if job.quality:
        out = [r.with_extra(quality_error="perplexity is not scored on tensor-parallel points yet") for r in out]
    return out


def _rank_summary(r: dict, phase: str) -> RankMeasure:
    rec = r[phase]
    return RankMeasure(r["rank"], r["kv_cache_bytes"], rec.latency_ms.median, r["torch_threads"], rec.memory_source,
                       rec.memory_bytes.to_dict() if rec.memory_bytes is not None else None)


# ---------------------------------------------------------------- failures
def rank_failure(e: TPLaunchError, rank_dir: Path, world: int, oom_counts: tuple) -> dict:
    """The point's status and error from its failed ranks: a rank that died of a signal first, else
    the earliest failure a rank wrote (the others then fail on the broken collective), else the
    first failed rank's exit. A rank's death or exit is classified as a point process's (exits)."""
    def exited(rank, exitcode, msg) -> dict:
        oom = oom_killed(*oom_counts) if exitcode == -signal.SIGKILL else None
        status, text = classify_exit(exitcode, str(msg).strip().splitlines(), oom, who=f"rank {rank} of {world}")
        return {"status": status, "error": text[:500]}

    for rank, exitcode, msg in e.failures:
        if isinstance(exitcode, int) and exitcode < 0:
            return exited(rank, exitcode, msg)
    written = []
    for f in rank_dir.glob("failure-rank*.json"):
        try:
            written.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    if written:
        first = min(written, key=lambda w: w["t"])
        out = {"status": first["status"], "error": f"rank {first['rank']} of {world}, {first['phase']}: "
                                                   f"{first['error']}"[:500]}
        if first.get("traceback"):
            out["traceback"] = first["traceback"]
        return out
    if e.failures:
        return exited(*e.failures[0])
    return {"status": "error", "error": str(e)[:500]}


def _write_failure(rank_dir: str, rank: int, phase: str, e: BaseException) -> None:
    """Called in an except block: the rank's failure, for the point process to read."""
    fail = dict(failure(e), rank=rank, phase=phase, t=time.time())
    path = Path(rank_dir) / f"failure-rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fail))
    os.replace(tmp, path)


# ---------------------------------------------------------------- one rank
def _rank_model(job: PointJob, device: torch.device, rank: int, world: int):
    from sabench.dtypes import parse_dtype
    from sabench.parallel import load_tp_model

    checkpoint = job.weights == "checkpoint"
    return load_tp_model(job.model_source if checkpoint else job.cfg, job.plan, parse_dtype(job.dtype), device,
                         rank=rank, world=world, weights="auto" if checkpoint else "random", seed=job.seed)


def _rank_main(rank: int, world: int, job: PointJob, rank_dir: str, threads: int, records) -> dict:
    """What each rank runs (in its process group): build its shard, measure the point's `records`."""
    import torch.distributed as dist

    point.die_with_parent()
    device = torch.device("cuda", torch.cuda.current_device()) if job.device.startswith("cuda") \
        else torch.device("cpu")
    torch.set_num_threads(max(1, threads // world) if device.type == "cpu" else threads)
    if rank == world - 1:  # the fault seams fire on one rank: the others must cope
        maybe_inject_kill(job.fault_kill, job.variant, job.batch_size, job.seq_len)
    else:
        job = job.replace(fault_oom=None, fault_kill=None)

    def on_error(e, phase):
        _write_failure(rank_dir, rank, phase, e)
        raise e

    notes, overhead = [], {}
    try:
        pre_cuda = point.pre_cuda_levels(device, notes)
        model = point.build_point_model(job, device, overhead, lambda: _rank_model(job, device, rank, world))
    except Exception as e:
        on_error(e, "building the model")
    prefill, decode, nbytes = point.measure_phases(job, model, device, notes, overhead, pre_cuda, records,
                                                   on_error=lambda rec, e: on_error(e, rec.phase),
                                                   barrier=dist.barrier)
    return {"rank": rank, "prefill": prefill, "decode": decode, "kv_cache_bytes": nbytes,
            "torch_threads": torch.get_num_threads(), "overhead": overhead, "notes": notes}


# ---------------------------------------------------------------- before a run
def check_run(suite, device: str) -> str:
    """UserError (one line) when a tensor-parallel suite cannot run here; else a note for stderr
    ('' when there is nothing to say). The degree against the model is checked when the suite loads."""
    from sabench.errors import UserError

    world, where = suite.tensor_parallel, f"{suite.path or suite.name}: parallel.tensor {suite.tensor_parallel}"
    if world <= 1:
        return ""
    if MAX_BATCH in suite.batch_sizes:
        raise UserError(f"{where}: `batch_size: max` is not supported on tensor-parallel points yet; "
                        "list the batch sizes")
    if device.startswith("cuda"):
        if ":" in device and device != "cuda:0":
            raise UserError(f"{where}: rank r runs on GPU r; use device cuda (or auto) and choose the GPUs "
                            "with CUDA_VISIBLE_DEVICES")
        visible = devices.gpu_count()
        if visible < world:
            raise UserError(f"{where}: {world} ranks need {world} GPUs, {visible} visible here; run it on a "
                            f"machine with {world} GPUs, or lower parallel.tensor")
        return ""
    return (f"sabench: note: {world} tensor-parallel ranks on the CPU share this machine's cores (each rank gets "
            f"1/{world} of the threads) and all-reduce over gloo: the timings are not a multi-GPU measurement")

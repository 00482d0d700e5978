"""The point process: build the model of one PointJob, measure its phases, write the result.

Runs in a forkserver child per point (harness.launch), or as
`python -m sabench.harness.point JOB.json RESULT.json` (a job in its JSON form). It writes
RESULT (JSON: the point's two records, typed PhaseRecords until written, and its overhead) and
exits 0; anything else is the launcher's to classify. The job arrives with its variant parsed (a SharingPlan): the analytic
figures, the memory prediction, the FLOP count and the model all take that plan.

`measure` is the one place a point's records are assembled; a tensor-parallel point's phases run
on N ranks (harness.tp_point), each rank through this module's build_point_model and
measure_phases, and its records come back here to get their rates.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from sabench import accounting, flops, memory_model
from sabench.dtypes import parse_dtype
from sabench.io import write_json_atomic
from sabench.harness.faults import maybe_inject_kill, maybe_inject_oom, slow_down, slowdown_factors
from sabench.harness.interrupts import ignore_in_this_process
from sabench.harness.job import PointJob
from sabench.harness.phases import failed, measure_decode, measure_prefill, release
from sabench.records.rates import with_rates
from sabench.measure.nvml_readings import parse_pci_bus_id
from sabench.measure.timing import sync
from sabench.loading import add_quality, point_model
from sabench.records import Flops, PhaseRecord


def pre_cuda_levels(device: torch.device, notes: list):
    """Used memory of every GPU, read before this process touches CUDA ({} off CUDA or without NVML)."""
    if device.type != "cuda":
        return {}
    from sabench.measure.nvml_readings import used_bytes_by_bus

    try:
        return used_bytes_by_bus()
    except Exception as e:
        notes.append(f"NVML level before CUDA initialisation unavailable: {e}")
        return {}


def _open_sampler(device: torch.device, notes: list):
    if device.type != "cuda":
        return None
    from sabench.measure.nvml import NvmlSampler

    avail = NvmlSampler.available()
    if not avail:
        notes.append(f"NVML unavailable: {getattr(avail, 'reason', avail)}")
        return None
    try:
        return NvmlSampler(device.index or 0)
    except Exception as e:  # NVML trouble must not cost the timing
        notes.append(f"NVML sampler failed to start: {e}")
        return None


def _weights_bytes(model) -> int:
    """Bytes of the model's parameters (`params` of the record, a tied weight counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def analytic_records(job: PointJob, overhead: dict, count: bool = True) -> tuple[PhaseRecord, PhaseRecord]:
    """The prefill and decode records before measurement: identity, the analytic FLOPs, bytes
    moved and parameters, the counted FLOPs (count=False: none) and the memory prediction. Their
    status says "not measured" until measure_phases measures them (or they fail)."""
    cfg, plan, dtype = job.cfg, job.plan, job.dtype
    b, t, n, chunk = job.batch_size, job.seq_len, job.decode_tokens, job.prefill_chunk
    counted = {"prefill": None, "decode_step": None}
    if count:
        t0 = time.perf_counter()
        counted, overhead["flops_from_cache"] = flops.point_counts(cfg, plan, b, t, n, dtype, chunk,
                                                                    cache_dir=job.count_cache_dir)
        overhead["count_flops_s"] = time.perf_counter() - t0
    pre_an = accounting.prefill_flops(cfg, plan, b, t)
    dec_an = accounting.decode_phase_flops(cfg, plan, b, t, n)
    predicted = memory_model.predict(cfg, plan, dtype, b, t, n, chunk, torch.device(job.device).type)
    base = dict(variant=job.variant, batch_size=b, seq_len=t, status="error", error="not measured",
                warmup=job.warmup, repeats=job.repeats, execution=job.execution,
                params=accounting.params(cfg, plan),
                kv_cache_bytes=accounting.kv_cache_bytes(cfg, plan, b, t + n, dtype))
    prefill = PhaseRecord(
        phase="prefill", memory_predicted_bytes=predicted["prefill"].to_dict(),
        flops=Flops(counted["prefill"], pre_an.total, pre_an.to_dict()),
        bytes_moved=accounting.prefill_bytes(cfg, plan, b, t, dtype, chunk), **base)
    decode = PhaseRecord(
        phase="decode", decode_tokens=n, memory_predicted_bytes=predicted["decode"].to_dict(),
        flops=Flops(counted["decode_step"] and counted["decode_step"] * n, dec_an.total, dec_an.to_dict()),
        # every step reads all weights and, layer by layer, the whole static cache buffer it
        # attends over (t + n positions, masked ones too: what the static-shape kernel reads)
        bytes_moved=accounting.decode_step_bytes(cfg, plan, b, t + n, dtype) * n, **base)
    return prefill, decode


def measure(job: PointJob, on_ranks=None) -> tuple[list[PhaseRecord], dict]:
    """([prefill, decode] records, overhead) of one point, assembled here however its phases ran:
    the closed forms, then the measured fields, then the rates derived from them (records.rates).

    on_ranks(job, records, overhead, notes) -> [prefill, decode]: the phases measured on N ranks
    (harness.tp_point.measure_on_ranks, the launcher's choice for a tensor-parallel job); without
    it, in this process."""
    t_start = time.time()
    notes: list = []
    pre_cuda = pre_cuda_levels(torch.device(job.device), notes) if on_ranks is None else {}  # before CUDA starts
    seen = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "pci_bus_id": None} if job.gpu is not None else None
    overhead = {"process_start_s": max(0.0, t_start - job.t_spawn) if job.t_spawn else None}
    if seen is not None:  # the GPU this process was pinned to, as it sees it (`run --devices`)
        overhead["device"] = seen
    records = [r.with_extra(torch_threads=torch.get_num_threads())  # what ran (--threads)
               for r in analytic_records(job, overhead)]
    model = None
    if on_ranks is not None:
        records = on_ranks(job, records, overhead, notes)
    else:
        device = torch.device(job.device)
        try:  # the weights alone may not fit: both phases are then out of memory, and that is data
            model = build_point_model(job, device, overhead, lambda: point_model(job, parse_dtype(job.dtype), device))
        except Exception as e:
            records = [failed(r, e, "building the model: ") for r in records]
        else:
            *records, _ = measure_phases(job, model, device, notes, overhead, pre_cuda, records, seen=seen)
    records = add_quality(model, job, [with_rates(r, job.peaks) for r in records])  # which weights ran
    finish_overhead(job, overhead, t_start)
    if notes:
        records = [r.with_extra(notes=notes) for r in records]
    return records, overhead


def result_json(records, overhead: dict) -> dict:
    """What a point process leaves in its result file (harness.launch parses it back)."""
    return {"records": [r.to_dict() for r in records], "overhead": overhead}


def build_point_model(job: PointJob, device: torch.device, overhead: dict, build):
    """`build()`'s model, set to the job's execution (and slowdown seam), timed as overhead;
    raises what building raises (an out-of-memory error is the point's data)."""
    if job.inductor_cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = job.inductor_cache_dir
    t0 = time.perf_counter()
    maybe_inject_oom(job.fault_oom, job.variant, job.batch_size, job.seq_len, "model build")
    model = build()
    model.set_execution(job.execution)
    slow_down(model, slowdown_factors(job.fault_slowdown, job.variant, job.batch_size, job.seq_len))  # a test seam
    sync(device)
    overhead["model_build_s"] = time.perf_counter() - t0
    return model


def measure_phases(job: PointJob, model, device: torch.device, notes: list, overhead: dict, pre_cuda: dict,
                   records, on_error=failed, barrier=None,
                   seen=None) -> tuple[PhaseRecord, PhaseRecord, int]:
    """(prefill, decode, the cache's bytes): `records` (prefill, decode before measurement)
    measured on `model`: the prefill that fills a fresh cache, then decode from that cache
    (zeros if prefill failed: same work).

    on_error(record, exception): the failed phase's record (default: its status and error; a
    tensor-parallel rank raises instead). barrier: see phases.py (tensor-parallel ranks). seen: the
    pinned GPU's record (`run --devices`), given the sampler's PCI bus id."""
    b, t, n = job.batch_size, job.seq_len, job.decode_tokens
    sampler = _open_sampler(device, notes)
    if seen is not None and sampler is not None:
        seen["pci_bus_id"] = sampler.nvml_pci_bus_id
    no_nvml = notes[-1] if sampler is None and device.type == "cuda" and notes else None
    mem_kw = {"weights": _weights_bytes(model), "nvml_reason": no_nvml,
              "pre_cuda_used": pre_cuda.get(parse_pci_bus_id(sampler.nvml_pci_bus_id)) if sampler else None}
    gen = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(0, job.cfg.vocab_size, (b, t), generator=gen).to(device)
    prefill, decode = records
    cache = None
    try:
        maybe_inject_oom(job.fault_oom, job.variant, b, t, "prefill")
        cache = model.new_cache(b, t + n)
        prefill = measure_prefill(job, prefill, model, ids, cache, device, sampler, mem_kw, notes, overhead, barrier)
    except Exception as e:
        prefill = on_error(prefill, e)
    release(device)
    try:
        if cache is None:
            cache = model.new_cache(b, t + n)
        decode = measure_decode(job, decode, model, cache, device, sampler, mem_kw, overhead, barrier)
    except Exception as e:
        decode = on_error(decode, e)
    if sampler is not None:
        sampler.close()
    nbytes = cache.nbytes if cache is not None else 0
    return prefill, decode, nbytes


def finish_overhead(job: PointJob, overhead: dict, t_start: float) -> None:
    if job.execution == "compiled":  # the first calls compiled (or loaded the compiled artefacts)
        overhead["compile_s"] = sum(overhead.get(k) or 0.0 for k in ("first_prefill_s", "first_decode_s"))
    overhead["total_in_worker_s"] = time.time() - t_start


def _quiet_on_interrupt():
    """Ctrl-C of `python -m sabench.harness.point`: the process just ends, no traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def die_with_parent():
    """No orphan keeps measuring (and skewing the machine) after the runner is killed."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pin(gpu) -> None:
    """The point's GPU (`run --devices`), set before anything in this process initialises CUDA:
    it is then cuda:0 here."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def child_main(job: PointJob, result_path: str, stderr_path: str, on_ranks=None) -> None:
    """Entry point in the forked point process: stderr to a file the launcher reads on failure.
    on_ranks: see `measure` (a tensor-parallel job's kill fault is then injected on a rank)."""
    _pin(job.gpu)
    ignore_in_this_process()  # as forked already: Ctrl-C is the runner's, which ends this process
    die_with_parent()
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    if job.threads:
        torch.set_num_threads(int(job.threads))
    if on_ranks is None:
        maybe_inject_kill(job.fault_kill, job.variant, job.batch_size, job.seq_len)
    write_json_atomic(result_path, result_json(*measure(job, on_ranks)), indent=None, fsync=False)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m sabench.harness.point JOB.json RESULT.json", file=sys.stderr)
        return 2
    _quiet_on_interrupt()
    with open(argv[0]) as f:
        job = PointJob.from_dict(json.load(f))
    if job.tensor_parallel > 1:
        print("sabench: error: a tensor-parallel job runs through `sabench run` (harness.launch launches "
              "its ranks)", file=sys.stderr)
        return 2
    _pin(job.gpu)
    if job.threads:
        torch.set_num_threads(int(job.threads))
    write_json_atomic(argv[1], result_json(*measure(job)), indent=None, fsync=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

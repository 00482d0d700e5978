"""Synthetic results.json files for the report / compare / check / history tests.

`make_results` produces records shaped like the runner's (sabench.records): prefill and
decode per (variant, batch, seq), raw samples with log-normal noise, analytic FLOPs with
their breakdown, KV-cache bytes that shrink with CLA/SA sharing, memory, floor, MFU/MBU,
plus (by default) one OOM point (baseline at the largest batch x seq, whose decode is then
skipped_after_oom) and one error point.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from sabench.records import SCHEMA

LAYERS = 12
HIDDEN = 768
HEADS = 12
HEAD_DIM = 64
INTER = 2048
VOCAB = 32000
DTYPE_BYTES = 2


def _layers(variant: str):
    """(layers owning K, layers owning V, layers computing attention) for the toy grammar."""
    owns_k = set(range(LAYERS))
    owns_v = set(range(LAYERS))
    attn = set(range(LAYERS))
    for part in variant.split("+"):
        m = re.fullmatch(r"cla:(\d+)", part)
        if m:
            n = int(m.group(1))
            keep = {l for l in range(LAYERS) if (l - LAYERS % n) % n == 0 or l < LAYERS % n}
            owns_k &= keep
            owns_v &= keep
        m = re.fullmatch(r"sa:(\d+)-(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            for l in range(a, b + 1):
                attn.discard(l)
                owns_k.discard(l)
    return len(owns_k), len(owns_v), len(attn)


def _breakdown(variant: str, b: int, t: int, ctx: int, n_tokens: int):
    nk, nv, na = _layers(variant)
    tok = b * n_tokens
    proj = 2 * tok * HIDDEN * HIDDEN * (na + nk + nv + LAYERS)  # q, k, v, o
    attn = 2 * 2 * b * n_tokens * ctx * HIDDEN * na // (2 if n_tokens > 1 else 1)
    attn += 2 * b * n_tokens * ctx * HIDDEN * (LAYERS - na)  # P @ V only
    mlp = 2 * tok * 3 * HIDDEN * INTER * LAYERS
    lm = 2 * b * (1 if n_tokens == t else n_tokens) * HIDDEN * VOCAB
    return {"projections": int(proj), "attention": int(attn), "mlp": int(mlp), "lm_head": int(lm)}


def _env(gpu: bool, host: str, commit: Optional[str], device_name: str):
    env = {"sabench": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0", "python": "3.11.7",
           "git_commit": commit, "git_dirty": False, "host": host, "cpu": "AMD EPYC 7R13",
           "cpu_count": 16 if gpu else 2, "platform": "Linux-6.8-x86_64"}
    if gpu:
        env.update({"device": "cuda:0", "device_name": device_name, "driver": "570.86.15",
                    "cuda": "12.8", "memory_total_bytes": 80 * 2 ** 30, "sm_clock_max_mhz": 1980,
                    "mem_clock_max_mhz": 2619, "power_limit_w": 700.0,
                    "peak_bandwidth_bytes_per_s": 3.0e12, "peak_flops_per_s": 7.0e14,
                    "peak_source": "measured"})
    else:
        env.update({"device": "cpu"})
    return env


def make_results(variants: Iterable[str] = ("baseline", "cla:2", "sa:6-11"),
                 batch_sizes: Iterable[int] = (1, 4), seq_lens: Iterable[int] = (128, 512, 2048),
                 seed: int = 0, scale: float = 1.0, *, oom: bool = True, error: bool = True,
                 gpu: bool = True, samples: int = 12, decode_tokens: int = 16,
                 commit: Optional[str] = "a1b2c3d4e5f6", host: str = "bench-01",
                 device_name: str = "NVIDIA H100 80GB HBM3", name: str = "synthetic",
                 created: str = "2026-11-22T04:30:00Z", predicted: bool = False) -> dict:
    """A results dict (write it with `write_results`). `scale` multiplies every timing.

    Every ok record has device_peak with its breakdown (nvml-process on GPU, rss on CPU), on
    GPU energy_j / joules_per_token; `predicted` adds memory_predicted_bytes as well.
    """
    variants, batch_sizes, seq_lens = list(variants), list(batch_sizes), list(seq_lens)
    rng = np.random.default_rng(seed)
    env = _env(gpu, host, commit, device_name)
    peak_bw = env.get("peak_bandwidth_bytes_per_s", 50e9)
    peak_fl = env.get("peak_flops_per_s", 1e12)
    records = []
    oom_point = (variants[0], max(batch_sizes), max(seq_lens)) if oom else None
    err_point = (variants[-1], min(batch_sizes), min(seq_lens)) if error else None
    for v in variants:
        nk, nv, na = _layers(v)
        params = (VOCAB * HIDDEN * 2 + LAYERS * 3 * HIDDEN * INTER
                  + HIDDEN * HIDDEN * (na + nk + nv + LAYERS))
        weight_bytes = params * DTYPE_BYTES
        for b in batch_sizes:
            for t in seq_lens:
                kv = (nk + nv) * b * (t + decode_tokens) * HEADS * HEAD_DIM * DTYPE_BYTES
                for phase in ("prefill", "decode"):
                    if phase == "prefill":
                        bd = _breakdown(v, b, t, t, t)
                        act_bytes = b * t * HIDDEN * DTYPE_BYTES * LAYERS * 6
                        moved = weight_bytes + kv + act_bytes
                    else:
                        bd = _breakdown(v, b, t, t + decode_tokens // 2, 1)
                        bd = {k: x * decode_tokens for k, x in bd.items()}
                        moved = (weight_bytes + kv) * decode_tokens
                    flops = sum(bd.values())
                    per_sample_flops = flops / (1 if phase == "prefill" else decode_tokens)
                    per_sample_bytes = moved / (1 if phase == "prefill" else decode_tokens)
                    floor = 1e3 * max(per_sample_flops / peak_fl, per_sample_bytes / peak_bw)
                    eff = 0.55 if phase == "prefill" else 0.35
                    true_ms = floor / eff * scale * (1.0 + 0.08 * rng.random())
                    rec = {"variant": v, "batch_size": b, "seq_len": t, "phase": phase,
                           "warmup": 2, "repeats": samples if phase == "prefill" else 1,
                           "params": int(params), "kv_cache_bytes": int(kv),
                           "flops": {"counted": int(flops * 1.01), "analytic": int(flops),
                                     "analytic_breakdown": bd},
                           "bytes_moved": int(moved), "floor_ms": floor}
                    if phase == "decode":
                        rec["decode_tokens"] = decode_tokens
                        rec["decode_mode"] = "graph" if gpu else "eager"
                    point = (v, b, t)
                    if point == oom_point:
                        if phase == "prefill":
                            rec.update(status="oom", error="CUDA out of memory. Tried to allocate 2.00 GiB")
                        else:
                            rec.update(status="skipped_after_oom", error="prefill ran out of memory")
                        records.append(rec)
                        continue
                    if point == err_point and phase == "decode":
                        rec.update(status="error",
                                   error="RuntimeError: CUDA error: an illegal memory access was "
                                         "encountered | compile with TORCH_USE_CUDA_DSA to enable "
                                         "device-side assertions.\nTraceback line 2")
                        records.append(rec)
                        continue
                    n = samples if phase == "prefill" else max(samples, decode_tokens)
                    s = true_ms * np.exp(rng.normal(0.0, 0.02, n))
                    lat = latency_summary(s)
                    rec["status"] = "ok"
                    rec["latency_ms"] = lat
                    med_s = lat["median"] / 1e3
                    rec["tokens_per_s"] = (b * t / med_s) if phase == "prefill" else b / med_s
                    if phase == "prefill":
                        rec["mfu"] = per_sample_flops / med_s / peak_fl
                    else:
                        rec["mbu"] = per_sample_bytes / med_s / peak_bw
                    act = b * t * HIDDEN * DTYPE_BYTES * (8 if phase == "prefill" else 1)
                    context = (500 if gpu else 300) * 2 ** 20 + int(0.05 * (weight_bytes + kv + act))
                    peak = weight_bytes + kv + act + context
                    rec["memory_breakdown"] = {"weights": int(weight_bytes), "kv_cache": int(kv),
                                               "activations": int(act), "context": int(context)}
                    if gpu:
                        alloc = weight_bytes + kv + act
                        rec["memory_bytes"] = {"device_peak": int(peak), "phase_rise": int(act * 1.1),
                                               "peak_allocated": int(alloc),
                                               "peak_reserved": int(alloc * 1.05), "peak_rss": 2 ** 30}
                        rec["memory_source"] = "nvml-process"
                        tokens = b * t * samples if phase == "prefill" else b * decode_tokens
                        joules = 350.0 * lat["median"] / 1e3 * len(lat["samples"])  # ~350 W
                        rec.update(energy_j=joules, joules_per_token=joules / tokens,
                                   energy_source="nvml-energy-counter")
                    else:
                        rec["memory_bytes"] = {"device_peak": int(peak), "peak_rss": int(peak),
                                               "phase_rise": int(act)}
                        rec["memory_source"] = "rss"
                    if predicted:  # the memory model's figures, as the capacity code writes them
                        pred = {"weights": int(weight_bytes), "kv_cache": int(kv),
                                "activations": int(act * 0.97), "context": 512 * 2 ** 20}
                        rec["memory_predicted_bytes"] = pred | {"total": sum(pred.values())}
                    records.append(rec)
    suite = {"name": name, "model": "llama-tiny-12l", "dtype": "bfloat16",
             "device": env["device"], "variants": variants, "batch_sizes": batch_sizes,
             "seq_lens": seq_lens, "decode_tokens": decode_tokens, "warmup": 2, "repeats": samples}
    return {"schema": SCHEMA, "created": created, "env": env, "suite": suite, "overhead": {},
            "records": records}


def latency_summary(s) -> dict:
    """A record's `latency_ms` over the samples `s`."""
    s = np.asarray(s, dtype=float)
    q = np.percentile(s, [10, 50, 90, 99])
    return {"median": float(q[1]), "p10": float(q[0]), "p90": float(q[2]), "p99": float(q[3]),
            "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "samples": [float(x) for x in s]}


def scale_timings(results: dict, factor: float, *, variant: Optional[str] = None,
                  phase: Optional[str] = None) -> dict:
    """A copy with the matching records' timings multiplied by `factor`."""
    out = copy.deepcopy(results)
    for r in out["records"]:
        if r.get("status") != "ok":
            continue
        if variant is not None and r["variant"] != variant:
            continue
        if phase is not None and r["phase"] != phase:
            continue
        r["latency_ms"] = latency_summary([x * factor for x in r["latency_ms"]["samples"]])
        r["tokens_per_s"] = r["tokens_per_s"] / factor
        for rd in r.get("rounds", []):
            rd.update(median_ms=rd["median_ms"] * factor, samples=[x * factor for x in rd["samples"]])
    return out


def write_results(results: dict, run_dir) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    p = run_dir / "results.json"
    p.write_text(json.dumps(results, indent=1))
    return run_dir


def big_results(seed: int = 0, **kw) -> dict:
    """1,000 records: 5 variants x 10 batch sizes x 10 seq lens x 2 phases."""
    return make_results(variants=("baseline", "cla:2", "cla:3", "sa:6-11", "cla:2+sa:6-11"),
                        batch_sizes=[1, 2, 4, 8, 16, 24, 32, 48, 64, 128],
                        seq_lens=[2 ** k for k in range(7, 17)], seed=seed, **kw)



def with_rounds(results: dict, rounds: int = 6, *, factors: Optional[dict] = None, seed: int = 0,
                drift_sd: float = 0.10, round_sd: float = 0.03, step_sd: float = 0.02, steps: int = 5) -> dict:
    """A copy whose ok records hold `rounds` rounds, as the runner writes them.

    Every variant of a (batch, seq, phase) cell is drawn from ONE distribution (the baseline's
    time there), times `factors.get(variant, 1.0)`: round k of a cell shares a drift factor
    (sd `drift_sd` on the log scale: load that comes and goes), then each (variant, round) gets its
    own process noise (`round_sd`) and each step its own (`step_sd`). The headline latency
    summarises all samples of all rounds.
    """
    out = copy.deepcopy(results)
    rng = np.random.default_rng(seed)
    factors = factors or {}
    first = out["suite"]["variants"][0]
    true = {(r["batch_size"], r["seq_len"], r["phase"]): r["latency_ms"]["median"]
            for r in out["records"] if r.get("status") == "ok" and r["variant"] == first}
    drift = {cell: np.exp(rng.normal(0, drift_sd, rounds)) for cell in true}
    for r in out["records"]:
        if r.get("status") != "ok":
            continue
        cell = (r["batch_size"], r["seq_len"], r["phase"])
        base = true.get(cell, r["latency_ms"]["median"]) * factors.get(r["variant"], 1.0)
        if cell not in drift:  # the first variant did not measure here (e.g. out of memory)
            drift[cell] = np.exp(rng.normal(0, drift_sd, rounds))
        rs, every = [], []
        for k in range(rounds):
            s = base * drift[cell][k] * np.exp(rng.normal(0, round_sd)) * np.exp(rng.normal(0, step_sd, steps))
            s = [float(x) for x in s]
            rs.append({"round": k + 1, "median_ms": float(np.median(s)), "n": steps, "samples": s})
            every += s
        r["rounds"] = rs
        r["latency_ms"] = latency_summary(every)
        med_s = r["latency_ms"]["median"] / 1e3
        r["tokens_per_s"] = (r["batch_size"] * r["seq_len"] / med_s) if r["phase"] == "prefill" \
            else r["batch_size"] / med_s
    return out

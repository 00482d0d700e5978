"""The results.json contract shared by the runner (writer) and report/compare/check (readers).

Units are in key names where they are not obvious: `_ms` milliseconds, `_bytes`
bytes, `_per_s` per second. FLOPs are plain FLOPs (2 per multiply-add).

results.json::

    {
      "schema": "sabench-results/1",
      "created": "2026-11-22T04:30:00Z",        # UTC, ISO 8601
      "env": {                                   # sabench.measure.env.capture_env()
        "sabench": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0", "python": "3.11.7",
        "git_commit": "abc123..." | null, "git_dirty": bool | null,
        "host": "name", "cpu": "model name", "cpu_count": 2, "platform": "Linux-...",
        "device": "cpu" | "cuda:0",
        # on GPU only:
        "device_name": "NVIDIA H100 80GB HBM3", "driver": "...", "cuda": "12.8",
        "memory_total_bytes": int, "sm_clock_max_mhz": int, "mem_clock_max_mhz": int,
        "power_limit_w": float,
        # roofline ceilings, when known (measured on the device by sabench.measure.calibrate,
        # or datasheet); absent when unknown:
        "peak_bandwidth_bytes_per_s": float, "peak_flops_per_s": float,
        "peak_source": "measured" | "datasheet"
      },
      "suite": { ... the validated suite as run (sabench.suite.Suite.to_dict()) ... },
      "overhead": {"<variant>|<batch>|<seq>": {"process_start_s", "model_build_s", "count_flops_s",
                    "first_prefill_s", "first_decode_s",  # the untimed first call of each phase
                    "compile_s",              # compiled execution: first_prefill_s + first_decode_s
                                              # (compiling, or loading from the Inductor cache)
                    "total_s"}},              # harness overhead, apart from the measured phases
      # env also holds "inductor_cache_dir" when the run compiled (suite.execution == "compiled")
      "records": [ record, ... ]
    }

record (one per point and phase)::

    {
      "variant": "cla:2", "batch_size": 4, "seq_len": 256,
      "phase": "prefill" | "decode",
      "status": "ok" | "oom" | "error" | "skipped_after_oom",
      "error": "message",                        # only when status != ok
      "latency_ms": {"median", "p10", "p90", "p99", "mean", "std", "min", "max",
                     "samples": [...]},          # prefill: one sample per prompt forward;
                                                 # decode: one sample per single-token step
      "latency_eager_ms": {...}                  # decode on CUDA with execution eager: the eager step;
                                                 # the headline above is graph mode (absent when compiled)
      "execution": "eager" | "compiled",         # what ran (suite key `execution`, or --execution)
      "decode_mode": "graph" | "compiled" | "eager",   # decode only: graph = replayed CUDA graph
                                                       # (of the compiled step when compiled)
      "prefill_mode": "graph" | "compiled" | "eager",  # prefill only: graph = compiled and captured
      "stability": {"p90_over_p10": float, "stable": bool,   # stable: p90/p10 <= threshold (1.05)
                    "threshold": 1.05, "extra_rounds": int,  # CUDA: up to 3 more rounds of `repeats`
                    "note": "..."},                          # when still unstable; samples keep them all
      "tokens_per_s": float,                     # prefill: B*T/median_s; decode: B/median_step_s
      "flops": {"counted": int, "analytic": int,  # for the whole phase (prefill forward, or all
                                                 # decode_tokens steps), see accounting.py
                "analytic_breakdown": {"projections": int, "attention": int, "mlp": int,
                                       "lm_head": int}},
      "bytes_moved": int,                        # analytic bytes read+written by the phase (roofline)
      "floor_ms": float,                         # roofline floor of one sample (max of compute, memory)
      "mfu": float, "mbu": float,                # when env has peaks: prefill MFU, decode MBU
      "kv_cache_bytes": int,                     # analytic bytes of the preallocated cache
      "params": int,
      "memory_bytes": {"peak_nvml", "peak_allocated", "peak_reserved", "peak_rss"},  # measured ones only
      "decode_tokens": int,                      # decode only
      "warmup": int, "repeats": int
    }
"""
SCHEMA = "sabench-results/1"
PHASES = ("prefill", "decode")
STATUSES = ("ok", "oom", "error", "skipped_after_oom")


def point_key(variant: str, batch_size: int, seq_len: int) -> str:
    return f"{variant}|{batch_size}|{seq_len}"

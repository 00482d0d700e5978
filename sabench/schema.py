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
      "bytes_moved": int,                        # analytic bytes read+written by the phase (roofline):
                                                 # weights once per forward, every layer's K/V reads
                                                 # (CLA non-owners re-read), SA's V and P traffic,
                                                 # cache writes (accounting.py, README conventions)
      "floor_ms": float,                         # roofline floor of one sample (max of compute, memory)
      "mfu": float, "mbu": float,                # when env has peaks: prefill MFU, decode MBU
      "kv_cache_bytes": int,                     # analytic bytes of the preallocated cache
      "params": int,
      "memory_bytes": {                          # bytes; measured ones only
        "device_peak": int,                      # the point's own absolute peak footprint in this phase
                                                 # (never a rise over a level holding weights and cache)
        "phase_rise": int,                       # the phase's peak minus the level just before it
                                                 # (NVML device reading; CPU: RSS). Older files: "peak_nvml"
        "peak_allocated", "peak_reserved",       # CUDA caching allocator peaks over the phase
        "peak_rss"},                             # the process's peak resident memory
      "memory_source": "nvml-process"            # NVML's per-process used memory (context included)
                     | "nvml-device"             # device used memory minus the level read before the
                                                 # point's process touched CUDA (other processes count)
                     | "rss",                    # CPU runs: peak RSS of the point's process
      "memory_breakdown": {"weights", "kv_cache", "activations", "context"},  # bytes, sum = device_peak:
                                                 # parameter bytes; the preallocated cache; allocator peak
                                                 # allocated minus both (CPU: RSS rise over the phase);
                                                 # the rest (CUDA context, libraries, allocator slack;
                                                 # CPU: interpreter + torch). context < 0 clamped to 0
                                                 # with a note in "memory_notes"
      "memory_notes": [str],                     # how device_peak was read, caveats
      "memory_predicted_bytes": {"weights", "kv_cache", "activations", "context", "total",
                                 "activations_live", "needed"},  # memory_model.predict for this phase:
                                                 # total = what the driver should show (compare with
                                                 # memory_bytes.device_peak), needed = what must fit
      "energy_j": float | null,                  # GPU only: joules over the timed calls (warm-up excluded;
                                                 # decode: the headline graph-mode sequences)
      "joules_per_token": float | null,          # energy_j / tokens of the timed calls (prefill B*T per
                                                 # call, decode B per step)
      "energy_source": "nvml-energy-counter" | "nvml-power-samples" | null,
      "energy_scope": "5 timed prefill calls",   # which calls energy_j covers
      "energy_window_s": float,                  # wall time between the two readings
      "energy_note": str,                        # why a figure is missing / how it was obtained
      "nvml": {"idle_used_bytes", "peak_used_bytes", "pre_cuda_used_bytes", "n_samples", "achieved_hz",
               "device_mapping", "notes"},       # GPU only: the sampler's window
      "decode_tokens": int,                      # decode only
      # only on points of a `batch_size: max` sweep entry (runner._run_max_point):
      "batch_request": "max", "predicted_max_batch": int, "max_attempt": int (1-based),
      "memory_budget_bytes": int, "memory_budget_source": "suite memory" | "device total memory"
                             | "available RAM",
      "max_attempts": [{"batch_size": int, "status": str}, ...],  # on the last attempt's records
      "warmup": int, "repeats": int
    }
"""
SCHEMA = "sabench-results/1"
PHASES = ("prefill", "decode")
STATUSES = ("ok", "oom", "error", "skipped_after_oom")


def point_key(variant: str, batch_size: int, seq_len: int) -> str:
    return f"{variant}|{batch_size}|{seq_len}"

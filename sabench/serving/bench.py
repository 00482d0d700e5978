"""`sabench serve`: a suite's serving scenario measured on the model runtime.

Every variant gets its own slots at the suite's cache budget (equal memory, not equal batch:
`ServingSpec.slots_for`), and the cache the runtime allocates is checked against the memory model's
figure before anything is timed. Each round runs every load; within a (round, load) the variants
run back to back in a fresh shuffled order on the same request stream (seeded by the round), so a
round of one variant pairs with the same round of another and drift over the run lands on all
alike. Before each timed run the runtime serves one untimed wave of requests (first-call costs).
One process runs it all: the models are built once, a run's cache is freed when the run ends.
"""
from __future__ import annotations

import datetime
import random
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from sabench.dtypes import parse_dtype
from sabench.model import SharedLlama, load_model
from sabench.records.serving import SERVING_SCHEMA, ServingResults, ServingRun, write_serving
from sabench.serving.runtime import SlotRuntime
from sabench.serving.scheduler import ModelEngine, WallClock, serve
from sabench.serving.spec import Load, ServingSpec
from sabench.serving.stream import ClosedLoop


def _sync(device: torch.device) -> Optional[Callable[[], None]]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def serve_once(model: SharedLlama, spec: ServingSpec, dtype: str, load: Load, rnd: int,
               prefill_chunk: Optional[int] = None) -> ServingRun:
    slots = spec.slots_for(model.cfg, model.plan, dtype)
    rt = SlotRuntime(model, slots, spec.max_len, prefill_chunk)
    predicted = spec.slot_bytes(model.cfg, model.plan, dtype) * slots
    if rt.cache.nbytes != predicted:  # the equal-memory claim rests on this figure
        raise RuntimeError(f"{model.plan.variant}: the cache holds {rt.cache.nbytes} bytes, the memory model "
                           f"says {predicted}")
    sync = _sync(rt.device)
    serve(ModelEngine(rt, seed=spec.seed + 7919), ClosedLoop(slots, slots, spec.prompt, spec.output, seed=rnd),
          WallClock(sync))
    records = serve(ModelEngine(rt, seed=spec.seed + rnd),
                    load.workload(spec.requests, spec.prompt, spec.output, seed=spec.seed + rnd), WallClock(sync))
    return ServingRun(model.plan.variant, rnd, slots, rt.cache.nbytes, load.rate, load.clients, tuple(records))


def _env(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": sys.version.split()[0]}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run_serving(suite, out: Path, log: Callable[[str], None] = print) -> ServingResults:
    """Measure `suite.serving`; writes OUT/serving.json and returns what it wrote."""
    from sabench.devices import resolve_device, resolve_execution, resolve_threads

    spec = suite.serving
    device = torch.device(resolve_device(suite.device))
    threads = resolve_threads(suite.threads, str(device))
    if threads:
        torch.set_num_threads(threads)
    execution = resolve_execution(suite.execution, str(device))
    dtype = parse_dtype(suite.dtype)
    models = {}
    for v in suite.variants:
        if suite.weights == "checkpoint":
            m = load_model(suite.model_config.source, v, dtype, device, weights="auto")
        else:
            m = load_model(suite.model_config, v, dtype, device, weights="random", seed=0)
        models[v] = m.set_execution(execution)
    order_rng = random.Random(spec.seed)
    runs = []
    for rnd in range(suite.rounds):
        for load in spec.loads:
            order = list(suite.variants)
            order_rng.shuffle(order)
            for v in order:
                run = serve_once(models[v], spec, suite.dtype, load, rnd, suite.prefill_chunk)
                runs.append(run)
                last = max(r.token_s[-1] for r in run.requests)
                log(f"round {rnd + 1}/{suite.rounds} {load} {v}: {run.slots} slots, "
                    f"{len(run.requests)} requests in {last:.2f} s")
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = ServingResults(SERVING_SCHEMA, created, _env(device), suite.to_dict(), tuple(runs))
    out.mkdir(parents=True, exist_ok=True)
    write_serving(out / "serving.json", results)
    return results

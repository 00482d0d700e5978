"""A rank group: a callable run on N tensor-parallel ranks with torchrun's machinery.

`run_ranks(fn, world, args)` launches `world` local processes with
`torch.distributed.launcher.api.elastic_launch` (what `torchrun --standalone
--nproc-per-node N` runs: c10d rendezvous on a free local port, the RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT environment per process), initialises a process
group in each (NCCL on CUDA, one device per rank by LOCAL_RANK; gloo on CPU), calls
`fn(rank, world, *args)` and returns every rank's return value, by rank.

`fn` and `args` cross a process boundary (spawn): `fn` must be a module-level function
and its arguments and return values picklable (tensors are: return CPU tensors).
A rank that raises makes `run_ranks` raise TPLaunchError with that rank's error.

harness.tp_point runs a point's phases this way; a failed rank's exit is classified as a point
process's is (harness.exits).

Signals: the launcher handles SIGTERM (and SIGHUP, SIGQUIT) by ending the ranks. SIGINT too,
unless this process ignores it (a `sabench run` point process: Ctrl-C is the runner's, which
ends it with SIGTERM); then it stays ignored here and in the ranks, which inherit that.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from typing import Any, Callable, Optional, Sequence

BACKENDS = ("gloo", "nccl")


class TPLaunchError(RuntimeError):
    """A rank failed (its exception, or its exit status). `failures`: [(rank, exit code, message)]."""

    def __init__(self, message: str, failures: Sequence = ()):
        super().__init__(message)
        self.failures = list(failures)


def default_backend(device: str) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def _rank_entry(fn: Callable, backend: str, args: tuple) -> Any:
    """What each launched process runs: join the group, run `fn`, leave the group."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    try:
        return fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world: int, args: Sequence = (), backend: Optional[str] = None,
              device: str = "cpu", run_id: Optional[str] = None, log_dir: Optional[str] = None) -> list:
    """[fn's return value on rank 0, ..., rank world-1]; see the module docstring."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an integer >= 1, got {world!r}")
    backend = backend or default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=world,
        run_id=run_id or f"sabench-tp-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone
        max_restarts=0, monitor_interval=0.1, start_method="spawn", logs_specs=_logs_specs(log_dir),
        **_signals(LaunchConfig),
    )
    try:
        results = elastic_launch(config, _rank_entry)(fn, backend, tuple(args))
    except ChildFailedError as e:
        failed = sorted((f.local_rank, f.exitcode, f.message or f"exit {f.exitcode}") for f in e.failures.values())
        failures = "; ".join(f"rank {r}: {msg}" for r, _, msg in failed)
        raise TPLaunchError(f"tensor-parallel run of {getattr(fn, '__name__', fn)} over {world} ranks failed: "
                            f"{failures}", failed) from None
    return [results[r] for r in range(world)]


def _signals(launch_config) -> dict:
    """LaunchConfig's signals to handle, without SIGINT when this process ignores it (torch that
    predates the option handles SIGINT regardless)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return {}
    if "signals_to_handle" not in {f.name for f in dataclasses.fields(launch_config)}:
        return {}
    return {"signals_to_handle": "SIGTERM,SIGHUP,SIGQUIT"}


def _logs_specs(log_dir: Optional[str]):
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    return DefaultLogsSpecs(log_dir=log_dir)

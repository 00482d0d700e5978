"""The `env` block of results.json: what ran, where, on which code.

A number without its environment cannot be compared later, so capture_env()
records versions, the exact code (git commit + dirty flag), the host and, on
CUDA, the device, driver, clocks and power limit. It must never fail a run:
every piece is gathered separately and a piece that cannot be had is None (or
absent, for the GPU-only keys), never an exception.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Optional

import torch

from sabench.constants import VERSION
from sabench.measure.nvml_readings import gpu_facts, why_unavailable
from sabench.measure.timing import DeviceLike, as_device, is_cuda

_GIT_TIMEOUT_S = 5.0


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def _package_version(name: str) -> Optional[str]:
    """Installed distribution version without importing the package (transformers is slow)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(path: Optional[Path] = None) -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the git checkout containing the sabench package.

    (None, None) when the package is not inside a work tree, or when it sits
    in an ignored directory of one (e.g. installed into a virtualenv kept in
    some repository: that repository's commit says nothing about this code).
    A checkout without commits yet gives (None, dirty).
    """
    if path is None:
        path = Path(__file__).resolve().parents[1]  # the sabench package
    r = _git(["rev-parse", "--is-inside-work-tree"], path)
    if r is None or r.returncode != 0 or r.stdout.strip() != "true":
        return None, None
    ignored = _git(["check-ignore", "-q", str(path)], path)
    if ignored is not None and ignored.returncode == 0:
        return None, None
    head = _git(["rev-parse", "HEAD"], path)
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    status = _git(["status", "--porcelain"], path)
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return commit or None, dirty


def cpu_model() -> Optional[str]:
    """'model name' from /proc/cpuinfo, else platform.processor(), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    name = _safe(platform.processor)
    return name or None


def usable_cpu_count() -> Optional[int]:
    """CPUs this process may run on (affinity / container cpuset), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _cuda_env(dev: torch.device) -> dict:
    out: dict = {}
    index = dev.index if dev.index is not None else 0
    props = _safe(lambda: torch.cuda.get_device_properties(index))
    if props is not None:
        out["device_name"] = _safe(lambda: str(props.name))
        out["memory_total_bytes"] = _safe(lambda: int(props.total_memory))
        out["compute_capability"] = _safe(lambda: f"{props.major}.{props.minor}")
    out["cuda"] = _safe(lambda: torch.version.cuda)
    # NVML's figures describe the physical board (total memory, clocks, power);
    # torch's name/memory are kept where NVML has nothing.
    try:
        out.update(gpu_facts(index).env_fields())
    except Exception as e:
        out["nvml_error"] = why_unavailable(e)
    return {k: v for k, v in out.items() if v is not None}


def capture_env(device: DeviceLike) -> dict:
    """The env dict of results.json (see sabench/records/types.py). Never raises.

    `device` is normalised ("cuda" -> "cuda:<current index>"). GPU keys are
    added only for CUDA devices, each only when it could be read.
    """
    try:
        cuda = is_cuda(device)
        dev = as_device(device) if cuda else torch.device(device)
        device_str = str(dev)
    except Exception:
        cuda, dev, device_str = False, None, str(device)
    commit, dirty = _safe(git_state, (None, None))
    env = {
        "sabench": VERSION,
        "torch": _safe(lambda: str(torch.__version__)),
        "transformers": _safe(lambda: _package_version("transformers")),
        "python": _safe(platform.python_version),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": _safe(socket.gethostname),
        "cpu": _safe(cpu_model),
        "cpu_count": _safe(usable_cpu_count),
        "platform": _safe(platform.platform),
        "device": device_str,
    }
    if cuda and dev is not None:
        env.update(_safe(lambda: _cuda_env(dev), {}) or {})
    return env

"""Memory high-water marks (host RSS, CUDA caching allocator) and OOM classification.

Host RSS matters on CPU runs (the model, KV cache and activations all live
there) and as a sanity check on GPU runs. getrusage's ru_maxrss is a
process-lifetime high-water mark; that is fine because every benchmark point
runs in its own process, and reset_peak_rss() can lower it where the kernel
allows (Linux >= 4.0, /proc/self/clear_refs).

On CUDA the caching allocator's peaks (max_memory_allocated: live tensors;
max_memory_reserved: what the allocator holds from the driver) are exact and
cheap; NVML (nvml.py) adds what the allocator cannot see.
"""
from __future__ import annotations

import os
import resource
import sys
from typing import Optional

import torch

from sabench.measure.timing import DeviceLike, as_device, is_cuda


def peak_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark to the current RSS; True if the kernel accepted it.

    Writing "5" to /proc/self/clear_refs resets the mm's hiwater RSS, which is
    what ru_maxrss and VmHWM report. Fails (False) off Linux, on old kernels,
    or where /proc is read-only.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> Optional[int]:
    """Current resident set size in bytes from /proc/self/statm; None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class AllocatorTracker:
    """Peak CUDA caching-allocator memory over a window; a no-op on CPU.

    start() resets the peak statistics (the new peak starts at what is live now,
    weights included); stop() returns {"peak_allocated", "peak_reserved"} in
    bytes (the results.json memory_bytes keys), or {} on CPU.
    """

    def __init__(self, device: DeviceLike):
        self.cuda = is_cuda(device)
        self.device = as_device(device) if self.cuda else torch.device(device)
        self.result: dict = {}

    def start(self) -> "AllocatorTracker":
        if self.cuda:
            torch.cuda.synchronize(self.device)  # frees of earlier work must be settled first
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def stop(self) -> dict:
        if not self.cuda:
            self.result = {}
            return {}
        torch.cuda.synchronize(self.device)
        self.result = {
            "peak_allocated": int(torch.cuda.max_memory_allocated(self.device)),
            "peak_reserved": int(torch.cuda.max_memory_reserved(self.device)),
        }
        return self.result

    def __enter__(self) -> "AllocatorTracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        except Exception:
            if exc_type is None:
                raise


_OOM_MESSAGES = (
    "out of memory",  # covers "CUDA out of memory" and "CUDA error: out of memory"
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "defaultcpuallocator: can't allocate memory",
    "not enough memory",
)

_OOM_TYPES: tuple = (MemoryError,)
for _name in ("OutOfMemoryError",):
    for _mod in (torch, getattr(torch, "cuda", None)):
        _t = getattr(_mod, _name, None) if _mod is not None else None
        if isinstance(_t, type) and issubclass(_t, BaseException) and _t not in _OOM_TYPES:
            _OOM_TYPES = _OOM_TYPES + (_t,)


def is_oom_error(exc: BaseException) -> bool:
    """True when `exc` means "ran out of memory" (device or host), False otherwise.

    Recognised: torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError),
    MemoryError, and RuntimeErrors whose message says so (cuBLAS/cuDNN
    allocation failures, the CPU allocator, "CUDA error: out of memory").
    An exception explicitly raised `from` an OOM counts too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _OOM_TYPES):
            return True
        if isinstance(exc, RuntimeError):
            msg = str(exc).lower()
            if any(m in msg for m in _OOM_MESSAGES):
                return True
        exc = exc.__cause__
    return False


def footprint(*, weights: int, kv_cache: int, process_peak: Optional[int] = None,
              device_peak_used: Optional[int] = None, pre_cuda_used: Optional[int] = None,
              allocated_peak: Optional[int] = None, rss_peak: Optional[int] = None,
              rss_start: Optional[int] = None) -> dict:
    """A phase's absolute footprint and its breakdown -> {"device_peak", "source", "breakdown", "notes"}.

    device_peak, best source first:
      "nvml-process": NVML's per-process used memory of this process (context included);
      "nvml-device":  the device's peak used memory minus `pre_cuda_used`, the level read before
                      this process touched CUDA (other processes' changes in between count too);
      "rss":          the process's peak resident memory (CPU runs: weights, cache and
                      activations live there).
    breakdown (adds up to device_peak): weights and kv_cache (the tensors' bytes); activations:
    on CUDA the allocator's peak live bytes (max_memory_allocated) minus weights and cache, on
    CPU the RSS rise over the phase (peak minus the level at its start); context: the rest (on
    CUDA the CUDA context, libraries' workspaces and the allocator's cached but unused blocks;
    on CPU the interpreter, torch and its libraries). A context below zero (a sampler that
    missed the peak, another process freeing memory) is clamped to 0 with a note: the parts
    then add up to more than device_peak.
    Returns device_peak None (and no breakdown) when no source gave a reading.
    """
    notes: list[str] = []
    peak = source = None
    if process_peak is not None:
        peak, source = int(process_peak), "nvml-process"
    elif device_peak_used is not None and pre_cuda_used is not None:
        peak, source = int(device_peak_used) - int(pre_cuda_used), "nvml-device"
        notes.append("device peak = the device's used memory minus the level before this process "
                     "initialised CUDA (NVML gave no per-process figure); other processes count too")
    elif rss_peak is not None:  # the caller passes RSS on CPU runs only
        peak, source = int(rss_peak), "rss"
    if peak is None:
        return {"device_peak": None, "source": None, "breakdown": None, "notes": notes}
    if source == "rss":
        rise = int(rss_peak) - int(rss_start) if rss_start is not None else None
        activations = max(0, rise) if rise is not None else None
    else:
        activations = (max(0, int(allocated_peak) - weights - kv_cache)
                       if allocated_peak is not None else None)
    if activations is None:
        notes.append("no activation figure (no allocator peak / RSS at the phase start): "
                     "activations are counted in context")
        activations = 0
    context = peak - weights - kv_cache - activations
    if context < 0:
        notes.append(f"the parts exceed the measured peak by {-context} B (the peak reading missed "
                     "part of the phase, or memory was not resident); context clamped to 0")
        context = 0
    return {"device_peak": peak, "source": source, "notes": notes,
            "breakdown": {"weights": int(weights), "kv_cache": int(kv_cache),
                          "activations": int(activations), "context": int(context)}}

"""Measurement primitives shared by every benchmark phase.

One place for timing (so prefill, decode and calibration are timed the same
way), memory high-water marks (allocator, NVML, RSS), environment capture and
roofline calibration. Submodules are small and import nothing heavy beyond
torch; NVML (pynvml) is imported only when a sampler or device query asks for it.
"""
from sabench.measure.timing import CudaGraphStep, sync, time_fn, time_steps
from sabench.measure.memory import (AllocatorTracker, current_rss_bytes, is_oom_error,
                                    peak_rss_bytes, reset_peak_rss)
from sabench.measure.nvml import NvmlSampler
from sabench.measure.nvml_readings import GpuFacts, NvmlUnavailable, gpu_facts
from sabench.measure.env import capture_env
from sabench.measure.calibrate import DATASHEET, calibrate, datasheet_for

__all__ = ["time_fn", "time_steps", "CudaGraphStep", "sync", "AllocatorTracker",
           "current_rss_bytes", "is_oom_error", "peak_rss_bytes", "reset_peak_rss", "NvmlSampler",
           "NvmlUnavailable", "GpuFacts", "gpu_facts", "capture_env", "calibrate", "datasheet_for",
           "DATASHEET"]

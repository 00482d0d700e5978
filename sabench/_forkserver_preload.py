"""Imported once by the runner's forkserver, before it forks any point process.

Importing torch and tracing one tiny model on meta tensors here moves ~1.5 s of
interpreter start and ~1.5 s of first-trace initialisation out of every point.
Meta tensors run no kernels, so no thread pool or CUDA context exists at fork time.
"""
import sabench.harness.point  # noqa: F401
from sabench import flops

flops.count_decode_step("tiny", "sa:2-3", 1, 8, "float32", compare_alone=False)

"""Imported once by the runner's forkserver, before it forks any point process.

SIGINT is ignored first: the server, and every point process it forks, leaves Ctrl-C to the
runner (harness.interrupts), which ends them. Importing torch and tracing one tiny model on
meta tensors here moves ~1.5 s of interpreter start and ~1.5 s of first-trace initialisation
out of every point. Meta tensors run no kernels, so no thread pool or CUDA context exists at
fork time.
"""
from sabench.harness.interrupts import ignore_in_this_process

ignore_in_this_process()

import sabench.harness.point  # noqa: E402,F401
from sabench import flops  # noqa: E402

flops.count_decode_step("tiny", "sa:2-3", 1, 8, "float32", compare_alone=False)

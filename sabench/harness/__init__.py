"""The harness: from a suite to results.json, one point process per point.

- sweep.py: run_suite; rounds of points, the results file, resume, retrying failures, OOM skips
- rounds.py: a round's shuffled order (cells shuffled, a cell's variants adjacent); merging typed rounds
- job.py: PointJob, one point's typed job (its PointSpec; the suite's SharingPlan of its variant)
- launch.py: one forkserver child per point (preload.py: what the forkserver imports once); its result
  parsed into PhaseRecords, its exit classified
- interrupts.py: Ctrl-C is the runner's alone; the processes it starts ignore SIGINT and are ended by it
- oom_evidence.py: the cgroup's OOM-kill counter, which tells the OOM killer from a `kill`
- lock.py: the output directory's exclusive lock for the length of a run
- preflight.py: the checks before the first point (output, disk, device, weights, cache)
- max_batch.py: `batch_size: max`, predicted then stepped down on OOM
- point.py: the child's main: the records before measurement, model build, phases, rates, result file
- phases.py: prefill and decode timing, graph capture, stability rounds (a record in, measured out)
- faults.py: SABENCH_FAULT_OOM, _SLOWDOWN, _KILL and _PAUSE, the fault-injection seams of the tests
- shard.py: `--shard i/N`, deterministic cost-balanced shards of the point grid
- merge.py: `sabench merge`, shard runs back into one run
- same_suite.py: the suite fields that must agree for runs to be one (merge, --resume)
- progress.py, environment.py: the progress line; the run's env, calibration and conditions

Trackers (memory, energy) live in sabench.measure.trackers. Importing this package imports
nothing heavy; `from sabench.harness.sweep import run_suite`.
"""

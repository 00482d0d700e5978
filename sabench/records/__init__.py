"""results.json, schema v2, as types: the one contract between the runner (writer) and every reader.

    RunRecord      schema, created, env, suite, overhead, records
      PhaseRecord  one point and phase: variant, batch_size, seq_len, phase, status, latency, ...
        Latency    median, p10, p90, p99, mean, std, min, max, samples (milliseconds)
        RoundSample  round, median_ms, n, samples[, status, error]: one per round (`rounds`)
    PointSpec      variant, batch_size, seq_len: `key` ("variant|batch|seq") and `label` ("cla:2 b=4 s=512")

`load_results(path)` reads a file (v2, or v1 upgraded on the way in), checks every field's type
and range and raises ResultsError naming the file, the record and the field; nothing that reaches
a reader can fail later on a missing key or a wrong type. `write_results(path, run)` writes one
atomically. Units are in field names where they are not obvious: `_ms`, `_bytes`, `_per_s`;
FLOPs are plain FLOPs (2 per multiply-add). Fields the types do not name are kept in `extra`
(per record, per memory reading) so a load -> write round trip loses nothing. The field-by-field
meaning is in the field comments of sabench/records/types.py.
"""
from sabench.records.checks import ResultsError
from sabench.records.rounds import RoundSample
from sabench.records.files import load_results, results_path, write_results
from sabench.records.types import (FAILED_STATUSES, MAX_REQUEST, PHASES, SCHEMA, SCHEMA_V1, STATUSES,
                                   Flops, Key, Latency, MaxAttempt, Memory, Overhead, PhaseRecord, PointSpec, RunRecord,
                                   Stability, key_label, point_key)

__all__ = ["FAILED_STATUSES", "MAX_REQUEST", "PHASES", "SCHEMA", "SCHEMA_V1", "STATUSES", "Flops",
           "Key", "Latency",
           "MaxAttempt", "Memory", "Overhead", "PhaseRecord", "PointSpec", "ResultsError", "RunRecord",
           "RoundSample", "Stability", "key_label", "load_results", "point_key", "results_path", "write_results"]

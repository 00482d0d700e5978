"""Reading and writing results.json files."""
from __future__ import annotations

import json
from pathlib import Path

from sabench.records.checks import ResultsError
from sabench.records.types import RunRecord


def run_file(path_or_dir, name: str) -> Path:
    """RUN_DIR -> RUN_DIR/name; a file path is returned as is."""
    p = Path(path_or_dir)
    return p / name if p.is_dir() else p


def results_path(path_or_dir) -> Path:
    """RUN_DIR -> RUN_DIR/results.json; a file path is returned as is."""
    return run_file(path_or_dir, "results.json")


def read_json(path_or_dir, name: str):
    """(the parsed JSON, its path) of `name` in a run directory, or of a file path; any problem
    reading or parsing it is a one-line ResultsError naming the file."""
    p = run_file(path_or_dir, name)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if Path(path_or_dir).is_dir():
            raise ResultsError(f"no {name} in {path_or_dir}") from None
        raise ResultsError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read {p}: {e.__class__.__name__}: {e}".splitlines()[0]) from None
    try:
        return json.loads(text), p
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ResultsError(f"{p} is nested too deeply to be a {name} file") from None


def load_results(path_or_dir) -> RunRecord:
    """Read, validate and (for v1 files) upgrade a results.json, or the one in a run directory."""
    data, p = read_json(path_or_dir, "results.json")
    return RunRecord.from_dict(data, str(p))


def write_results(path, run: RunRecord) -> Path:
    """Write `run` as results.json (schema v2) atomically (temp file, fsync, rename)."""
    from sabench.io import write_atomic

    return write_atomic(path, json.dumps(run.to_dict(), indent=1))

"""Writing a command's files beside the ones it replaces, then swapping them in.

A command that regenerates files in a run directory (report.md and its figures) draws them
into a hidden staging directory inside it (same filesystem: each swap is an atomic rename).
Only once everything is drawn and written are the new files renamed over the old ones; a
failure before that leaves every file of the run as it was, and the stage is removed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


@contextlib.contextmanager
def staging_dir(out_dir) -> Iterator[Path]:
    """A fresh hidden directory in `out_dir`, removed on the way out whatever happened."""
    stage = Path(tempfile.mkdtemp(prefix=".sabench-stage-", dir=out_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def swap_in(stage: Path, out_dir, names: Iterable[str]) -> None:
    """Each of `names` drawn in `stage` replaces its namesake in `out_dir`; a name the stage
    lacks is removed from `out_dir` (a stale figure of an earlier report of other data)."""
    out_dir = Path(out_dir)
    for name in names:
        src = stage / name
        if src.exists():
            os.replace(src, out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)

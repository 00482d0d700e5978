"""Checks before the first point: a fault that would break every point is reported in seconds.

`preflight(suite, device, out, n_points)` runs once, before the sweep measures anything:

- the output directory is writable (a temp file is created and removed there);
- there is free disk for the expected outputs (a few MB a point, and a floor);
- the requested device is present;
- the model loads: its config resolved when the suite was read; with checkpoint weights,
  every weight file is readable and starts with a sane safetensors header;
- the FLOP-count cache directory is usable. If it is not (read-only, a file, ...) this is
  not fatal: one warning, and the points count FLOPs without keeping them
  (`flops.point_counts` never fails a point over its cache).

A user's fault raises PreflightError (a UserError: one line, exit 2). Returns the warnings given.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from sabench.errors import UserError, one_line

BYTES_PER_POINT = 2 * 2**20  # generous: results.json grows ~5-50 kB a point (and is rewritten via a copy)
MIN_FREE_BYTES = 64 * 2**20


class PreflightError(UserError):
    """A fault found before the sweep that would break every point."""


def check_out_dir(out: Path) -> None:
    """`out` accepts a new file (created and removed again)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".sabench-preflight-", dir=out)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise PreflightError(f"the output directory {out} is not writable ({one_line(e.strerror or e)}), "
                             "before the first point; choose a writable --out") from None


def needed_bytes(n_points: int) -> int:
    return MIN_FREE_BYTES + BYTES_PER_POINT * max(0, n_points)


def check_free_disk(out: Path, n_points: int, free: Optional[int] = None) -> None:
    """Refuse when the disk under `out` is clearly too small for the run's outputs."""
    if free is None:
        try:
            free = shutil.disk_usage(out).free
        except OSError:
            return  # cannot tell: the atomic writer keeps results safe if the disk fills
    need = needed_bytes(n_points)
    if free < need:
        raise PreflightError(f"only {free / 2**20:.0f} MiB free under {out}, and {n_points} point(s) need about "
                             f"{need / 2**20:.0f} MiB, before the first point; free space or choose another --out")


def check_device(device: str) -> None:
    from sabench.devices import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        raise PreflightError(f"{one_line(e)}, before the first point") from None


def _safetensors_header_ok(path: Path) -> bool:
    """The file opens and starts like a safetensors file (8-byte length, then a JSON mapping)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            return False
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > min(100 * 2**20, max(0, os.fstat(fh.fileno()).st_size - 8)):
            return False
        try:
            return isinstance(json.loads(fh.read(n)), dict)
        except ValueError:
            return False


def check_model(suite) -> None:
    """With checkpoint weights, each weight file is readable and looks like safetensors."""
    if getattr(suite, "weights", "random") != "checkpoint":
        return
    from sabench.presets import weight_files

    source = suite.model_config.source
    files = weight_files(source)
    if not files:
        raise PreflightError(f"weights: checkpoint, but {source} holds no .safetensors file, before the first "
                             "point; add the weights or use weights: random")
    for f in files:
        try:
            ok = _safetensors_header_ok(f)
        except OSError as e:
            raise PreflightError(f"cannot read the weights {f} ({one_line(e.strerror or e)}), before the first "
                                 "point; check the file's permissions") from None
        if not ok:
            raise PreflightError(f"the weights {f} are not a valid safetensors file, before the first point; "
                                 "replace the file or use weights: random")


def cache_problem(cache_dir: Path) -> Optional[str]:
    """Why `cache_dir` cannot keep FLOP counts (None when it can)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".sabench-preflight-", dir=cache_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return one_line(e.strerror or e)
    return None


def preflight(suite, device: str, out, n_points: int, cache_dir: Optional[Path] = None) -> List[str]:
    """Run every check; raise PreflightError on a fatal one; return (and print once) the warnings."""
    out = Path(out)
    check_out_dir(out)
    check_free_disk(out, n_points)
    check_device(device)
    check_model(suite)
    if cache_dir is None:
        from sabench.paths import cache_root

        cache_dir = cache_root() / "flops"
    warnings = []
    why = cache_problem(Path(cache_dir))
    if why:
        warnings.append(f"sabench: warning: the FLOP-count cache {cache_dir} is not usable ({why}); running "
                        "without it (FLOPs are counted for every point); set SABENCH_CACHE_DIR to a writable "
                        "directory to keep them")
    for w in warnings:
        print(w, file=sys.stderr)
    return warnings

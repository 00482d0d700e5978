"""The one home for atomic file writes: a reader never sees a half-written file.

`write_atomic(path, data)` writes a temporary file in the same directory, flushes and fsyncs
it, then renames it over `path` (atomic on POSIX). A failure leaves `path` as it was and
removes the temporary file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Union


def write_atomic(path, data: Union[str, bytes], *, fsync: bool = True) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically; returns the path."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path, data, *, indent=1, fsync: bool = True) -> Path:
    """`data` as JSON, written atomically (see write_atomic)."""
    return write_atomic(path, json.dumps(data, indent=indent), fsync=fsync)

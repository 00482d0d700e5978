"""The one atomic JSON writer: a reader never sees a torn file, whatever kills the writer."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path, data, *, indent=1, fsync: bool = True) -> None:
    """Write `data` as JSON to `path` through a temporary file in the same directory and a
    rename (fsync'd first unless fsync=False): `path` holds the old or the new content, never
    a part of either."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

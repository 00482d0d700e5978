"""Where sabench finds suites and writes reports: one place for the convention.

Run from a checkout (a source tree or an editable install: the package sits beside
the repository's `pyproject.toml` and `suites/`), everything is anchored to that
checkout, whatever the working directory. Installed as a plain package (in
site-packages), the working directory plays the checkout's part: `./suites`,
`./reports`. Never site-packages.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "suites").is_dir():
        return root
    return Path.cwd()


def suites_dir() -> Path:
    return project_root() / "suites"


def reports_dir() -> Path:
    return project_root() / "reports"


def cache_root() -> Path:
    """sabench's per-user cache: SABENCH_CACHE_DIR, else ~/.cache/sabench (XDG_CACHE_HOME honoured)."""
    import os

    env = os.environ.get("SABENCH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sabench"


def inductor_cache_dir() -> Path:
    """Where compiled artefacts persist across the points, processes and runs of this user.

    TORCHINDUCTOR_CACHE_DIR when set, else cache_root()/inductor. Inductor's FX-graph and
    autotuning caches live there, so a point process compiling a graph another point (or
    an earlier run) already compiled loads it instead.
    """
    import os

    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(env) if env else cache_root() / "inductor"

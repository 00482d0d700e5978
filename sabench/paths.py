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

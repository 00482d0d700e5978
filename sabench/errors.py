"""The error policy every layer shares.

- A user's mistake (a bad argument, file, value or output path; a model that cannot
  exist) is a `UserError`. The CLI prints it as one line,
  ``sabench: error: <what>, <where>, <what to do>``, and exits 2, never a traceback.
- Anything else is a bug: the CLI lets it propagate (a traceback, exit 1).
- Ctrl-C exits 130 with one line saying what was kept (`RunInterrupted` carries it).

SuiteError, PlanError, ModelSourceError and ResultsError subclass UserError. UserError
subclasses ValueError so code that caught ValueError from those layers keeps working.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# Files a run directory holds that no other command may write over.
RUN_FILES = ("results.json", "report.md")


class UserError(ValueError):
    """A mistake the user can fix; str(e) is the one-line message (no 'sabench: error:' prefix)."""


class RunInterrupted(Exception):
    """Ctrl-C during `sabench run`: what was kept, and the command that goes on.

    started: results.json holds this run (`resume_cmd` then resumes it); before it is written
    nothing was measured, and `resume_cmd` starts the run again. measured, total: (point, round)
    pairs, None before they are counted."""

    def __init__(self, results: Path, measured: Optional[int], total: Optional[int], resume_cmd: str,
                 started: bool = True):
        self.results, self.measured, self.total, self.resume_cmd = Path(results), measured, total, resume_cmd
        if not started:
            msg = f"interrupted before the first point; nothing to resume, start again with: {resume_cmd}"
        elif total is None:
            msg = f"interrupted; {results} keeps the points measured before, resume with: {resume_cmd}"
        else:
            msg = (f"interrupted; {results} keeps the {measured} of {total} points measured so far, "
                   f"resume with: {resume_cmd}")
        super().__init__(msg)


def one_line(text: str) -> str:
    """Messages quoted from files, YAML or libraries may wrap; the CLI contract is one line."""
    return " ".join(str(text).split())


_OS_HINTS = {
    errno.EEXIST: "it exists already; choose another path",
    errno.EROFS: "the filesystem is read-only; choose a writable path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EACCES: "permission denied; choose a path you can write",
    errno.EPERM: "permission denied; choose a path you can write",
    errno.ENOTDIR: "a file stands where a directory belongs; choose another path",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOSPC: "the disk is full; free space or choose another path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ELOOP: "too many symbolic links; check the path",
}


def os_error(e: OSError, what: str = "cannot write") -> Optional[UserError]:
    """An OSError a user can fix (a path problem) as a UserError; None for anything else."""
    if e.errno is None and isinstance(e, FileNotFoundError):  # raised by sabench with its own message
        return UserError(one_line(f"{e}, check the path"))
    hint = _OS_HINTS.get(e.errno)
    if hint is None:
        return None
    where = e.filename if e.filename is not None else "the path given"
    return UserError(one_line(f"{what} {str(where)!r}: {e.strerror or e}, {hint}"))


def refuse_run_file(path, flag: str) -> None:
    """A command's output `path` must not be a run's results.json or report.md (nor hold them as a file).

    Refuses `B/results.json`, `B/report.md`, and any file path inside a directory whose
    results.json would be overwritten; `flag` names the option in the message.
    """
    p = Path(path)
    if (p.name in RUN_FILES and (p.exists() or (p.parent / "results.json").exists())) or _is_results_file(p):
        raise UserError(f"{flag} {str(path)!r} would overwrite a run's {p.name if p.name in RUN_FILES else 'results'}, "
                        f"give another file name (e.g. {str(p.with_name('check.md'))!r})")


def _is_results_file(p: Path) -> bool:
    """A sabench results file under any name (its first bytes hold the schema key)."""
    try:
        with open(p, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"schema"' in head


def refuse_run_dir(path, flag: str, writes=("report.md",)) -> None:
    """An output directory that holds a run (results.json) must not receive files the run owns."""
    p = Path(path)
    if (p / "results.json").is_file() and any(name in RUN_FILES for name in writes):
        raise UserError(f"{flag} {str(path)!r} is a run directory (it holds results.json) and the command "
                        f"would overwrite its {', '.join(w for w in writes if w in RUN_FILES)}, "
                        "choose a new directory")


def check_output_dir(path, flag: str) -> Path:
    """A directory a command will create or write into: refused early, with the flag named, if it cannot be."""
    p = Path(path)
    _check_names(p, path, flag)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {str(path)!r} exists and is not a directory, choose a directory path")
    _check_ancestor(p, path, flag)
    return p


def check_output_file(path, flag: str) -> Path:
    """A file a command will write: its directory must be creatable, and it must not be a run's own file."""
    p = Path(path)
    _check_names(p, path, flag)
    if p.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a directory, give a file path")
    refuse_run_file(p, flag)
    _check_ancestor(p.parent, path, flag)
    return p


def _check_names(p: Path, path, flag: str) -> None:
    for part in p.parts:  # ENAMETOOLONG before anything runs (Path.exists would raise it)
        if len(os.fsencode(part)) > 255:
            raise UserError(f"{flag} {str(path)[:80]!r}...: a name in the path is longer than 255 bytes, "
                            "choose a shorter path")


def _check_ancestor(p: Path, path, flag: str) -> None:
    """The nearest existing ancestor of `p` (or `p`) decides: it must be a writable directory."""
    probe = p if str(p) else Path(".")
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(probe)!r} is a file where a directory belongs, "
                        "choose another path")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(path)!r}: {str(probe)!r} is not writable "
                        "(read-only or no permission), choose a writable path")

"""`sabench continuous` end to end on two commits of a temporary repository.

The repository is built from this checkout's package and a one-point suite. Two pairs:
a head identical to its base (the verdict must be "no regression", exit 0), and a head
that adds a deliberate slowdown to the MLP (every `F.silu` call sleeps 2 ms, several
times the tiny model's whole decode step: exit 1). Both sides of each pair run in their
own cached worktree and environment, rounds interleaved.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sabench.continuous import EXIT_OK, EXIT_REGRESSION, MeasureError, resolve_ref, run_continuous

ROOT = Path(__file__).resolve().parent.parent

SUITE = """\
name: ct
model: tiny
dtype: float32
device: cpu
variants: [baseline]
sweep: {batch_size: [1], seq_len: [32]}
decode_tokens: 8
warmup: 1
repeats: 5
"""

SLOWDOWN = """
import time as _time
import torch.nn.functional as _F
_silu = _F.silu
def _slow_silu(*a, **k):  # a deliberate regression for the continuous test
    _time.sleep(0.002)
    return _silu(*a, **k)
_F.silu = _slow_silu
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ctrepo")
    shutil.copytree(ROOT / "sabench", repo / "sabench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "suites").mkdir()
    (repo / "suites" / "ct.yaml").write_text(SUITE)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "identical")
    _git(repo, "tag", "same")
    init = repo / "sabench" / "__init__.py"
    init.write_text(init.read_text() + SLOWDOWN)
    _git(repo, "commit", "-q", "-am", "slower")
    _git(repo, "tag", "slow")
    return repo


def test_unknown_ref_is_a_clear_error(repo):
    with pytest.raises(MeasureError, match="does not name a commit"):
        resolve_ref(repo, "no-such-branch")


def test_identical_commits_pass(repo, tmp_path):
    code = run_continuous("same~1", "same", "ct", rounds=4, out=tmp_path / "out", repo=repo,
                          cache=tmp_path / "cache")
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    assert code == EXIT_OK, verdict
    assert (tmp_path / "out" / "base" / "results.json").is_file()
    assert (tmp_path / "out" / "head" / "results.json").is_file()


def test_deliberate_slowdown_is_caught(repo, tmp_path):
    cache = tmp_path / "cache"
    # 6 rounds a side: with 4, Welch's degrees of freedom can fall near 1 on a loaded machine and
    # the Bonferroni interval then spans orders of magnitude, even around a 5x slowdown
    code = run_continuous("same", "slow", "ct", rounds=6, out=tmp_path / "out", repo=repo, cache=cache)
    verdict = (tmp_path / "out" / "verdict.md").read_text()
    assert code == EXIT_REGRESSION, verdict
    # the environments are cached by commit: a second call reuses them
    assert len(list((cache / "venvs").iterdir())) == 2

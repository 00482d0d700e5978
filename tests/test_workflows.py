"""The CI workflow files shipped as examples parse, and name only what exists.

Every `sabench ...` command a workflow runs must parse with the CLI's own parser (a renamed
flag or subcommand fails here, not on a user's pull request), every suite it names must be
in suites/, every `make` target in the Makefile, every script in the repository.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from sabench.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _steps(doc: dict):
    for name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield name, step


def _commands(script: str):
    """Shell words of each command line: `${{ }}` and `$(...)`/`$var` become placeholders."""
    script = re.sub(r"\$\{\{[^}]*\}\}", "X", script)
    script = re.sub(r"\$\([^)]*\)", "X", script)
    script = re.sub(r'"\$\{?\w+\}?"', "X", script)
    for line in script.splitlines():
        line = line.split(" #")[0].strip()
        for part in re.split(r"&&|;|\|\|", line):
            part = part.split(">")[0].split("|")[0].strip()
            if part:
                yield shlex.split(part)


def test_there_are_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"pr.yml", "gpu.yml", "nightly.yml"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_parses_and_names_only_what_exists(path):
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and doc.get("jobs"), f"{path.name}: no jobs"
    assert True in doc or "on" in doc, f"{path.name}: no trigger"  # YAML 1.1 reads `on` as True
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z_-]+):", makefile, re.M))
    suites = {p.stem for p in (ROOT / "suites").glob("*.yaml")}
    parser = build_parser()
    seen_sabench = 0
    for job, step in _steps(doc):
        for words in _commands(step.get("run", "")):
            exe = Path(words[0]).name
            if exe == "sabench":
                seen_sabench += 1
                args = parser.parse_args(words[1:])  # SystemExit on an unknown flag or command
                suite = getattr(args, "suite", None)
                if suite is not None and not suite.endswith((".yaml", ".yml")):
                    assert suite in suites, f"{path.name}:{job}: suite {suite!r} not in suites/"
            elif exe == "make":
                for t in words[1:]:
                    if "=" not in t and not t.startswith("-"):
                        assert t in targets, f"{path.name}:{job}: make target {t!r} not in the Makefile"
            elif exe == "bash" and len(words) > 1:
                assert (ROOT / words[1]).is_file(), f"{path.name}:{job}: {words[1]} missing"
    assert seen_sabench, f"{path.name}: runs no sabench command"


def test_pr_workflow_runs_the_tests_and_continuous():
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())
    runs = " ".join(step.get("run", "") for _, step in _steps(doc))
    assert "make test" in runs
    assert "sabench continuous" in runs


def test_gpu_workflow_is_skipped_without_a_gpu_runner():
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu.yml").read_text())
    for job in doc["jobs"].values():
        assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
        assert "vars.SABENCH_GPU_RUNNER" in job["if"]

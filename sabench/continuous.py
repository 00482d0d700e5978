"""`sabench continuous BASE HEAD SUITE`: a base and a head commit measured side by side.

A baseline recorded on another day, on another runner, says little about time. The
established way to track speed on noisy machines (asv's `continuous`, pyperf's
`compare_to`) is to measure both commits on the same machine in the same job and judge
the difference statistically. This module does that:

1. each ref gets its own environment, cached by commit: a detached git worktree and a
   virtual environment whose `.pth` puts that worktree's `sabench` first and this
   interpreter's packages (torch, transformers, ...) after it, so nothing is downloaded
   or rebuilt unless the ref asks for a dependency this environment lacks;
2. the suite (the head's definition, so both sides run the same points) is run for both
   refs with their rounds interleaved: base round 1, head round 1, base round 2, ...
   (`sabench run --rounds K --resume` adds round K to a run directory), so drift over
   the job lands on both sides alike and round k of each side forms a pair;
3. `sabench check` judges the pair with the statistics of sabench.stats; the markdown
   verdict goes to $GITHUB_STEP_SUMMARY when set, and always to OUT/verdict.md.

Exit status: 0 no regression, 1 regression, 2 could not measure (a ref that does not
resolve, an environment that cannot be built, a run that fails on either side).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional, Sequence

from sabench.errors import UserError

EXIT_OK, EXIT_REGRESSION, EXIT_UNMEASURED = 0, 1, 2


class MeasureError(UserError):
    """Something kept one side from being measured (exit 2)."""


@dataclasses.dataclass(frozen=True)
class RefEnv:
    ref: str              # as the user named it (HEAD~1, main, a sha)
    commit: str           # the full sha it resolved to
    worktree: Path        # a detached checkout of that commit
    python: Path          # the interpreter of its environment

    @property
    def short(self) -> str:
        return self.commit[:10]


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise MeasureError("git not found, continuous needs git on PATH") from None
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or e.stdout).strip().splitlines()
        raise MeasureError(f"git {' '.join(args)} failed in {repo}: {msg[-1] if msg else e.returncode}") from None
    return done.stdout.strip()


def resolve_ref(repo: Path, ref: str) -> str:
    """The full commit sha of `ref` in `repo`; a clear message when it does not name a commit."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except MeasureError:
        raise MeasureError(f"{ref!r} does not name a commit in {repo}, give a branch, tag or sha "
                           f"(in CI, fetch enough history: actions/checkout with fetch-depth: 0)") from None


def default_cache_dir() -> Path:
    from sabench.paths import cache_root

    return cache_root() / "continuous"


def _site_packages() -> List[str]:
    """This interpreter's package directories, for the ref environments to share."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return [p for p in sorted(paths) if Path(p).is_dir()]


def prepare_ref(repo: Path, ref: str, cache: Path) -> RefEnv:
    """Check out `ref` and give it an environment, reusing both when this commit was prepared before."""
    commit = resolve_ref(repo, ref)
    tree = cache / "worktrees" / commit[:16]
    if not (tree / "sabench" / "__init__.py").is_file():
        tree.parent.mkdir(parents=True, exist_ok=True)
        _git(repo, "worktree", "prune")
        _git(repo, "worktree", "add", "--force", "--detach", str(tree), commit)
    if not (tree / "sabench" / "__init__.py").is_file():
        raise MeasureError(f"{ref} ({commit[:10]}) has no sabench package, nothing to measure")
    venv = cache / "venvs" / commit[:16]
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        # the ref's own code first, then this environment's packages (their .pth files are not run,
        # so an editable install of another checkout cannot shadow the ref's sabench)
        Path(purelib, "sabench-continuous.pth").write_text("\n".join([str(tree)] + _site_packages()) + "\n")
    env = RefEnv(ref=ref, commit=commit, worktree=tree, python=python)
    _install_missing(env)
    return env


def _install_missing(env: RefEnv) -> None:
    """pip-install the ref's declared dependencies this environment does not satisfy (usually none)."""
    script = (
        "import sys, tomllib\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "from packaging.requirements import Requirement\n"
        "deps = tomllib.load(open(sys.argv[1], 'rb'))['project'].get('dependencies', [])\n"
        "for d in deps:\n"
        "    r = Requirement(d)\n"
        "    try:\n"
        "        ok = r.specifier.contains(version(r.name), prereleases=True)\n"
        "    except PackageNotFoundError:\n"
        "        ok = False\n"
        "    if not ok:\n"
        "        print(d)\n")
    pyproject = env.worktree / "pyproject.toml"
    if not pyproject.is_file():
        return
    done = subprocess.run([str(env.python), "-c", script, str(pyproject)], capture_output=True, text=True)
    if done.returncode != 0:
        raise MeasureError(f"cannot read the dependencies of {env.ref} ({env.short}): "
                           f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    missing = done.stdout.split()
    if missing:
        print(f"continuous: {env.ref} ({env.short}) needs {', '.join(missing)}; installing into its environment",
              file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(env.python), "install", "-q", *missing],
                       check=False)


def _supports_rounds(env: RefEnv) -> bool:
    done = subprocess.run([str(env.python), "-m", "sabench.cli", "run", "--help"], capture_output=True,
                          text=True, cwd=env.worktree)
    return done.returncode == 0 and "--rounds" in done.stdout


def _run(env: RefEnv, suite: Path, out: Path, rounds: Optional[int], extra: Sequence[str]) -> None:
    cmd = [str(env.python), "-m", "sabench.cli", "run", str(suite), "--out", str(out), "--no-report", *extra]
    if rounds is not None:
        cmd += ["--rounds", str(rounds)]
        if out.joinpath("results.json").exists():
            cmd.append("--resume")
    print(f"continuous: {env.ref} ({env.short}): {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=env.worktree)
    if done.returncode not in (0, 1):  # 1: some point errored, which check will judge
        raise MeasureError(f"sabench run for {env.ref} ({env.short}) exited {done.returncode}, see the lines above")


def find_suite_file(name_or_path: str, head: RefEnv) -> Path:
    """The head's definition of the suite: both sides run exactly the same points."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    for cand in (head.worktree / "suites" / f"{name_or_path}.yaml", head.worktree / name_or_path):
        if cand.is_file():
            return cand
    raise MeasureError(f"suite {name_or_path!r} not found in {head.ref} ({head.short}): give a name under "
                       f"suites/ or a path to a YAML file")


def run_continuous(base: str, head: str, suite: str, *, rounds: int = 5, threshold: str = "5%",
                   out: Optional[Path] = None, repo: Path = Path("."), cache: Optional[Path] = None,
                   run_args: Sequence[str] = ()) -> int:
    if rounds < 2 or rounds > 100:
        raise UserError(f"--rounds {rounds} is out of range, continuous needs 2 to 100 rounds to judge time")
    repo = Path(_git(Path(repo), "rev-parse", "--show-toplevel"))
    cache = Path(cache) if cache else default_cache_dir()
    envs = [prepare_ref(repo, ref, cache) for ref in (base, head)]
    suite_file = find_suite_file(suite, envs[1])
    tag = hashlib.sha1(f"{envs[0].commit}{envs[1].commit}{suite_file}".encode()).hexdigest()[:8]
    out = Path(out) if out else repo / "reports" / "continuous" / f"{envs[0].short}-{envs[1].short}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    dirs = [out / "base", out / "head"]
    interleave = all(_supports_rounds(e) for e in envs)
    if interleave:
        for k in range(1, rounds + 1):
            for env, d in zip(envs, dirs):
                _run(env, suite_file, d, k, run_args)
    else:  # an older ref without rounds: each side in one go (drift between them is not spread)
        print("continuous: a ref predates `run --rounds`; measuring each side in one go, not interleaved",
              file=sys.stderr)
        for env, d in zip(envs, dirs):
            _run(env, suite_file, d, None, run_args)
    return _verdict(envs, dirs, out, threshold, interleave)


def _verdict(envs: List[RefEnv], dirs: List[Path], out: Path, threshold: str, interleaved: bool) -> int:
    from sabench.report import write_report
    from sabench.report.check import check, parse_threshold

    for d in dirs:
        try:
            write_report(d)
        except Exception as e:  # the verdict does not depend on the report's pictures
            print(f"continuous: report for {d} not written ({type(e).__name__}: {e})", file=sys.stderr)
    res = check(dirs[0], dirs[1], threshold=parse_threshold(threshold), timings=True)
    header = [f"**sabench continuous**: base `{envs[0].ref}` ({envs[0].short}) vs head `{envs[1].ref}` "
              f"({envs[1].short}), " + ("rounds interleaved" if interleaved else "not interleaved"), ""]
    link = _artifacts_link()
    footer = ["", f"Full reports: {link}" if link else f"Full reports: `{dirs[0]}`, `{dirs[1]}`"]
    md = res.to_markdown().rstrip("\n").split("\n")
    md = md[:1] + [""] + header + md[1:] + footer  # the one-line verdict stays first
    text = "\n".join(md) + "\n"
    (out / "verdict.md").write_text(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(text)
    sys.stdout.write(res.to_text())
    print(f"verdict: {out / 'verdict.md'}", file=sys.stderr)
    if res.shared_points == 0:
        return EXIT_UNMEASURED
    return EXIT_REGRESSION if res.regressions else EXIT_OK


def _artifacts_link() -> Optional[str]:
    server, repo, run = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    return f"{server}/{repo}/actions/runs/{run} (artifacts)" if server and repo and run else None


def add_arguments(p) -> None:
    from sabench.argtypes import int_in

    p.add_argument("base", metavar="BASE_REF", help="the reference commit (branch, tag, sha, HEAD~1, ...)")
    p.add_argument("head", metavar="HEAD_REF", help="the commit under test")
    p.add_argument("suite", metavar="SUITE", help="suite name (the head's suites/NAME.yaml) or a YAML path")
    p.add_argument("--rounds", type=int_in(2, 100), default=5, help="rounds per side, interleaved (default 5; 2..100)")
    p.add_argument("--threshold", default="5%", help="smallest slowdown that counts (default 5%%)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where base/, head/ and verdict.md go (default reports/continuous/<base>-<head>-<id>)")
    p.add_argument("--repo", metavar="DIR", default=".", help="the git repository (default: the current one)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="worktrees and environments, reused across calls (default <sabench cache>/continuous)")
    p.add_argument("--threads", type=int_in(1, 4096), default=None, help="torch threads for both sides (CPU runs)")


def run(args) -> int:
    extra = ["--threads", str(args.threads)] if args.threads else []
    return run_continuous(args.base, args.head, args.suite, rounds=args.rounds, threshold=args.threshold,
                          out=args.out, repo=Path(args.repo), cache=args.cache, run_args=extra)

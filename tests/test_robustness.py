"""Bad input across every command: exit 2, one line naming the problem, no traceback, no run file touched.

Each case is a row of CASES: an id, a function building the argv from the shared run (and a
scratch directory), and fragments the message must contain. One small real run is made once
per module; after every case each of its files (and a copy's) must hash as before.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sabench.cli import main
from sabench.presets import PRESETS
from tests.helpers import tiny_suite

def _suite_text(variants=("baseline", "sa:2-3"), seq_lens=(16,)) -> str:
    return tiny_suite("robust", variants=variants, batch_sizes=(1,), seq_lens=seq_lens, decode_tokens=2, warmup=0,
                      repeats=3, execution="eager")


SUITE = _suite_text()
TINY = PRESETS["tiny"]
TYPED = None  # typed records validate every field on load


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One finished run (with report.md) and a byte-identical second copy."""
    tmp = tmp_path_factory.mktemp("robust")
    saved = {k: os.environ.get(k) for k in ("SABENCH_HISTORY", "SABENCH_CACHE_DIR")}
    os.environ["SABENCH_HISTORY"] = str(tmp / "history.sqlite")
    os.environ["SABENCH_CACHE_DIR"] = str(tmp / "cache")
    try:
        suite = tmp / "robust.yaml"
        suite.write_text(SUITE)
        run = tmp / "run"
        assert main(["run", str(suite), "--out", str(run)]) == 0
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert (run / "results.json").is_file() and (run / "report.md").is_file()
    copy = tmp / "copy"
    shutil.copytree(run, copy)
    return SimpleNamespace(run=run, copy=copy, suite=suite, results=run / "results.json")


def _hashes(*dirs) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- inputs the cases write
def _suite(tmp: Path, raw: str = "", **changes) -> str:
    """SUITE with top-level keys replaced (values as YAML data), plus `raw` YAML text appended."""
    data = {**yaml.safe_load(SUITE), **changes}
    p = tmp / "suite.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True) + raw, encoding="utf-8")
    return str(p)


def _model_dir(tmp: Path, drop=(), **changes) -> str:
    d = {k: v for k, v in TINY.to_hf_dict().items() if k not in drop}
    d.update(changes)
    p = tmp / "model"
    p.mkdir(exist_ok=True)
    (p / "config.json").write_text(json.dumps(d))
    return str(p)


def _token_ids(tmp: Path, ids=None) -> str:
    p = tmp / "ids.txt"
    p.write_text(" ".join(str(i) for i in (ids if ids is not None else [i % 500 for i in range(300)])))
    return str(p)


def _damaged(w, tmp: Path, edit) -> str:
    """A copy of the run whose results.json `edit` changed (the shared run stays intact)."""
    d = tmp / "damaged"
    shutil.copytree(w.run, d)
    data = json.loads((d / "results.json").read_text())
    edit(data)
    (d / "results.json").write_text(json.dumps(data))
    return str(d)


def _file(tmp: Path, name="a-file", text="x") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _set(path, value):
    def edit(data):
        *head, last = path
        node = data
        for k in head:
            node = node[k]
        node[last] = value
    return edit


LONG = "n" * 300
QUALITY = ["quality", "--model", "tiny", "--device", "cpu", "--max-windows", "1", "--seq-len", "32"]


def Q(tmp, *extra):
    return QUALITY + ["--token-ids", _token_ids(tmp)] + list(extra)


def case(id, build, *fragments, xfail=None):
    marks = [pytest.mark.xfail(reason=xfail, strict=False)] if xfail else []
    return pytest.param(build, fragments, id=id, marks=marks)


CASES = [
    # ------------------------------------------------------------ run: arguments and suites
    case("run-unknown-flag", lambda w, t: ["run", str(w.suite), "--frobnicate"], "unrecognized arguments",
         "--frobnicate", "sabench run --help"),
    case("run-unknown-suite", lambda w, t: ["run", "no-such-suite"], "unknown suite"),
    case("run-missing-suite-file", lambda w, t: ["run", str(t / "missing.yaml")], "no such suite file"),
    case("run-bad-execution", lambda w, t: ["run", str(w.suite), "--execution", "fast"], "--execution"),
    case("run-repeats-1e20", lambda w, t: ["run", _suite(t, repeats=10 ** 20)], "repeats", "1..10000"),
    case("run-repeats-float", lambda w, t: ["run", _suite(t, repeats=1e20)], "repeats"),
    case("run-warmup-negative", lambda w, t: ["run", _suite(t, warmup=-1)], "warmup"),
    case("run-warmup-huge", lambda w, t: ["run", _suite(t, warmup=10 ** 9)], "warmup"),
    case("run-decode-tokens-zero", lambda w, t: ["run", _suite(t, decode_tokens=0)], "decode_tokens"),
    case("run-seq-len-zero", lambda w, t: ["run", _suite(t, sweep={"batch_size": 1, "seq_len": 0})], "seq_len"),
    case("run-batch-huge", lambda w, t: ["run", _suite(t, sweep={"batch_size": 99999999999, "seq_len": 8})],
         "batch_size"),
    case("run-seq-beyond-positions",
         lambda w, t: ["run", _suite(t, sweep={"batch_size": 1, "seq_len": TINY.max_position_embeddings})],
         "positions", "allow_long_context"),
    case("run-fullwidth-variant", lambda w, t: ["run", _suite(t, variants=["sa:２-３"])], "variants[0]",
         "sa:２-３"),
    case("run-cli-fullwidth-variant", lambda w, t: ["run", str(w.suite), "--variant", "sa:２-３"], "--variant"),
    case("run-fullwidth-device", lambda w, t: ["run", _suite(t, device="cuda:２")], "device"),
    case("run-deep-yaml", lambda w, t: ["run", _suite(t, raw="extra: " + "[" * 3000 + "]" * 3000 + "\n")],
         "nested too deeply"),
    case("run-not-utf8", lambda w, t: ["run", _bytes_suite(t)], "UTF-8"),
    case("run-top-level-list", lambda w, t: ["run", str(_file(t, "list.yaml", "- a\n- b\n"))], "top level"),
    case("run-model-heads-zero", lambda w, t: ["run", _suite(t, model=_model_dir(t, num_attention_heads=0))],
         "num_attention_heads"),
    case("run-model-rope-list", lambda w, t: ["run", _suite(t, model=_model_dir(t, rope_scaling=[1, 2]))],
         "rope_scaling"),
    case("run-out-is-a-file", lambda w, t: ["run", str(w.suite), "--out", str(_file(t))], "--out",
         "not a directory"),
    case("run-out-under-a-file", lambda w, t: ["run", str(w.suite), "--out", str(_file(t) / "sub")], "--out",
         "directory belongs"),
    case("run-out-name-too-long", lambda w, t: ["run", str(w.suite), "--out", str(t / LONG)], "--out",
         "255 bytes"),
    case("run-over-existing-run", lambda w, t: ["run", str(w.suite), "--out", str(w.run)], "already exists",
         "--resume"),
    case("run-resume-without-out", lambda w, t: ["run", str(w.suite), "--resume"], "--resume needs --out"),
    case("run-resume-changed-suite", lambda w, t: ["run", _suite(t, repeats=4), "--out", str(w.run), "--resume"],
         "suite changed", "repeats"),
    case("run-resume-nothing", lambda w, t: ["run", str(w.suite), "--out", str(t / "new"), "--resume"],
         "nothing to resume"),
    # another suite's run is not completed by this one: its points would not be the suite's it names
    case("run-resume-another-suite",
         lambda w, t: ["run", _suite(t, name="other", variants=["baseline", "cla:2"]), "--out", str(w.run),
                       "--resume"],
         "was written by suite 'robust' (variants baseline, sa:2-3), this is 'other' (variants baseline, cla:2); "
         "differs in: name, variants; use another --out"),
    case("run-resume-another-name", lambda w, t: ["run", _suite(t, name="other"), "--out", str(w.run), "--resume"],
         "differs in: name;"),
    case("run-resume-other-variants", lambda w, t: ["run", _suite(t, variants=["baseline"]), "--out", str(w.run),
                                                    "--resume"],
         "(variants baseline, sa:2-3), this is 'robust' (variants baseline)", "differs in: variants;", "--variant"),
    case("run-resume-another-sweep",
         lambda w, t: ["run", _suite(t, sweep={"batch_size": 1, "seq_len": [16, 32]}), "--out", str(w.run),
                       "--resume"],
         "seq_lens [16]", "seq_lens [16, 32]", "differs in: sweep;"),
    case("run-resume-another-model",
         lambda w, t: ["run", _suite(t, model=_model_dir(t, intermediate_size=256)), "--out", str(w.run), "--resume"],
         "model tiny", "differs in: model;"),
    case("run-resume-other-threads", lambda w, t: ["run", str(w.suite), "--out", str(w.run), "--resume",
                                                   "--threads", "2"],
         "suite changed", "threads"),
    # ------------------------------------------------------------ inspect: arguments and model configs
    case("inspect-seq-len-zero", lambda w, t: ["inspect", "--model", "tiny", "--seq-len", "0"], "--seq-len"),
    case("inspect-batch-negative", lambda w, t: ["inspect", "--model", "tiny", "--batch", "-1"], "--batch"),
    case("inspect-batch-fullwidth", lambda w, t: ["inspect", "--model", "tiny", "--batch", "２"], "--batch"),
    case("inspect-batch-huge", lambda w, t: ["inspect", "--model", "tiny", "--batch", "10" + "0" * 30], "--batch"),
    case("inspect-prefill-chunk-zero", lambda w, t: ["inspect", "--model", "tiny", "--prefill-chunk", "0"],
         "--prefill-chunk"),
    case("inspect-seq-beyond-positions", lambda w, t: ["inspect", "--model", "tiny", "--seq-len", "999999"],
         "positions"),
    case("inspect-memory-zero", lambda w, t: ["inspect", "--model", "tiny", "--memory", "0"], "memory size"),
    case("inspect-memory-huge", lambda w, t: ["inspect", "--model", "tiny", "--memory", "9" * 400 + "TiB"],
         "memory size"),
    case("inspect-fullwidth-variant", lambda w, t: ["inspect", "--model", "tiny", "--variant", "sa:２-３"],
         "sa:２-３"),
    case("inspect-variant-huge-number", lambda w, t: ["inspect", "--model", "tiny", "--variant", "cla:" + "9" * 5000],
         "CLA"),
    case("inspect-dtype", lambda w, t: ["inspect", "--model", "tiny", "--dtype", "int8"], "dtype"),
    case("inspect-heads-zero", lambda w, t: ["inspect", "--model", _model_dir(t, num_attention_heads=0)],
         "num_attention_heads"),
    case("inspect-kv-heads-zero", lambda w, t: ["inspect", "--model", _model_dir(t, num_key_value_heads=0)],
         "num_key_value_heads"),
    case("inspect-kv-heads-not-dividing", lambda w, t: ["inspect", "--model", _model_dir(t, num_key_value_heads=3)],
         "num_key_value_heads"),
    case("inspect-head-dim-zero", lambda w, t: ["inspect", "--model", _model_dir(t, head_dim=0)], "head_dim"),
    case("inspect-hidden-not-divisible",
         lambda w, t: ["inspect", "--model", _model_dir(t, drop=("head_dim",), hidden_size=66)],
         "hidden_size", "not divisible"),
    case("inspect-rope-scaling-string", lambda w, t: ["inspect", "--model", _model_dir(t, rope_scaling="yes")],
         "rope_scaling", "mapping"),
    case("inspect-rope-scaling-incomplete",
         lambda w, t: ["inspect", "--model", _model_dir(t, rope_scaling={"rope_type": "llama3", "factor": 8})],
         "rope_scaling", "low_freq_factor"),
    case("inspect-rope-factor-negative",
         lambda w, t: ["inspect", "--model", _model_dir(t, rope_scaling={
             "rope_type": "llama3", "factor": -8, "low_freq_factor": 1, "high_freq_factor": 4,
             "original_max_position_embeddings": 64})], "rope_scaling.factor"),
    case("inspect-vocab-string", lambda w, t: ["inspect", "--model", _model_dir(t, vocab_size="512")],
         "vocab_size"),
    case("inspect-layers-zero", lambda w, t: ["inspect", "--model", _model_dir(t, num_hidden_layers=0)],
         "num_hidden_layers"),
    case("inspect-intermediate-negative", lambda w, t: ["inspect", "--model", _model_dir(t, intermediate_size=-5)],
         "intermediate_size"),
    case("inspect-positions-fraction",
         lambda w, t: ["inspect", "--model", _model_dir(t, max_position_embeddings=4096.5)],
         "max_position_embeddings"),
    case("inspect-rope-theta-zero", lambda w, t: ["inspect", "--model", _model_dir(t, rope_theta=0)], "rope_theta"),
    # inspect reads a foreign architecture's attention shape (it says it cannot run it); quality refuses it
    case("quality-model-type", lambda w, t: ["quality", "--model", _model_dir(t, model_type="gpt2"),
                                             "--token-ids", _token_ids(t)], "model_type 'gpt2'"),
    case("inspect-config-not-json", lambda w, t: ["inspect", "--model", str(_file(t, "config.json", "{oops"))],
         "cannot read"),
    case("inspect-config-a-list", lambda w, t: ["inspect", "--model", str(_file(t, "config.json", "[1]"))],
         "JSON object"),
    case("inspect-missing-model", lambda w, t: ["inspect", "--model", str(t / "nowhere")], "unknown model"),
    # ------------------------------------------------------------ report
    case("report-missing-dir", lambda w, t: ["report", str(t / "nowhere")], "nowhere"),
    case("report-dir-without-results", lambda w, t: ["report", str(t)], "results.json", "no such file"),
    case("report-not-json", lambda w, t: ["report", str(_file(t, "results.json", "{oops"))], "not valid JSON"),
    case("report-records-not-a-list", lambda w, t: ["report", _damaged(w, t, _set(["records"], {"a": 1}))],
         "records"),
    case("report-batch-a-string", lambda w, t: ["report", _damaged(w, t, _set(["records", 0, "batch_size"], "one"))],
         "batch_size", xfail=TYPED),
    case("report-suite-a-list", lambda w, t: ["report", _damaged(w, t, _set(["suite", "sweep"], [1, 2]))],
         "sweep", xfail=TYPED),
    # ------------------------------------------------------------ compare
    case("compare-one-run", lambda w, t: ["compare", str(w.run)], "at least two"),
    case("compare-missing-run", lambda w, t: ["compare", str(w.run), str(t / "nowhere")], "nowhere"),
    case("compare-out-is-a-file", lambda w, t: ["compare", str(w.run), str(w.copy), "--out", str(_file(t))],
         "--out", "not a directory"),
    case("compare-out-too-long", lambda w, t: ["compare", str(w.run), str(w.copy), "--out", str(t / LONG)],
         "--out", "255 bytes"),
    case("compare-wrong-types", lambda w, t: ["compare", str(w.run),
                                              _damaged(w, t, _set(["records", 0, "latency_ms"], "fast"))],
         "latency_ms", xfail=TYPED),
    # ------------------------------------------------------------ check
    case("check-markdown-over-results", lambda w, t: ["check", str(w.run), str(w.copy), "--markdown",
                                                      str(w.copy / "results.json")], "--markdown", "overwrite"),
    case("check-markdown-over-report", lambda w, t: ["check", str(w.run), str(w.copy), "--markdown",
                                                     str(w.copy / "report.md")], "--markdown", "overwrite"),
    case("check-markdown-over-renamed-results", lambda w, t: [
        "check", str(w.run), str(w.copy), "--markdown", str(_file(t, "old.json", w.results.read_text()))],
        "--markdown", "overwrite"),
    case("check-markdown-a-dir", lambda w, t: ["check", str(w.run), str(w.copy), "--markdown", str(t)],
         "--markdown", "directory"),
    case("check-markdown-under-a-file", lambda w, t: ["check", str(w.run), str(w.copy), "--markdown",
                                                      str(_file(t) / "x.md")], "--markdown", "directory belongs"),
    case("check-bad-threshold", lambda w, t: ["check", str(w.run), str(w.copy), "--threshold", "abc"], "threshold"),
    case("check-alpha-two", lambda w, t: ["check", str(w.run), str(w.copy), "--alpha", "2"], "alpha"),
    case("check-alpha-nan", lambda w, t: ["check", str(w.run), str(w.copy), "--alpha", "nan"], "alpha"),
    case("check-missing-current", lambda w, t: ["check", str(w.run), str(t / "nowhere")], "nowhere"),
    case("check-wrong-types", lambda w, t: ["check", str(w.run),
                                            _damaged(w, t, _set(["records", 0, "seq_len"], [16]))],
         "seq_len", xfail=TYPED),
    # ------------------------------------------------------------ history
    case("history-no-db", lambda w, t: ["history", "--db", str(t / "none.sqlite")], "no history database"),
    case("history-db-is-results", lambda w, t: ["history", "--db", str(w.copy / "results.json")], "history database"),
    case("history-last-negative", lambda w, t: ["history", "--last", "-1"], "--last"),
    case("history-batch-zero", lambda w, t: ["history", "--batch", "0"], "--batch"),
    case("history-seq-len-fullwidth", lambda w, t: ["history", "--seq-len", "１６"], "--seq-len"),
    case("history-bad-metric", lambda w, t: ["history", "--metric", "speed"], "--metric"),
    case("history-plot-over-report", lambda w, t: ["history", "--plot", str(w.copy / "report.md")], "--plot",
         "overwrite"),
    case("history-import-missing", lambda w, t: ["history", "--db", str(t / "h.sqlite"), "--import",
                                                 str(t / "nowhere")], "nowhere"),
    case("history-import-wrong-types", lambda w, t: [
        "history", "--db", str(t / "h.sqlite"), "--import",
        _damaged(w, t, _set(["records", 0, "batch_size"], {"b": 1}))], "batch_size", xfail=TYPED),
    # ------------------------------------------------------------ quality
    case("quality-out-is-a-run", lambda w, t: Q(t, "--out", str(w.copy)), "--out", "run directory"),
    case("quality-out-is-a-file", lambda w, t: Q(t, "--out", str(_file(t))), "--out", "not a directory"),
    case("quality-seq-len-zero", lambda w, t: QUALITY[:-2] + ["--seq-len", "0", "--token-ids", _token_ids(t)],
         "--seq-len"),
    case("quality-max-windows-zero", lambda w, t: Q(t, "--max-windows", "0"), "--max-windows"),
    case("quality-recommended-without-advice", lambda w, t: Q(t, "--variant", "recommended", "--candidates", "0"),
         "--candidates 0"),
    case("quality-no-source", lambda w, t: QUALITY, "--token-ids"),
    case("quality-missing-ids", lambda w, t: QUALITY + ["--token-ids", str(t / "nowhere.txt")], "nowhere.txt"),
    case("quality-ids-not-integers", lambda w, t: QUALITY + ["--token-ids", str(_file(t, "ids", "1 2 three"))],
         "not an integer id"),
    case("quality-ids-outside-vocab", lambda w, t: QUALITY + ["--token-ids", _token_ids(t, [1, 2, 10 ** 6] * 40)],
         "vocabulary"),
    case("quality-fullwidth-variant", lambda w, t: Q(t, "--variant", "sa:２-３"), "sa:２-３"),
    case("quality-dtype", lambda w, t: Q(t, "--dtype", "int8"), "dtype"),
    case("quality-heads-zero", lambda w, t: ["quality", "--model", _model_dir(t, num_attention_heads=0),
                                             "--token-ids", _token_ids(t)], "num_attention_heads"),
    case("quality-corrupt-checkpoint", lambda w, t: ["quality", "--model", _corrupt_checkpoint(t), "--device", "cpu",
                                                     "--seq-len", "32", "--max-windows", "1",
                                                     "--token-ids", _token_ids(t)], "model.safetensors",
         "safetensors"),
]


def _bytes_suite(tmp: Path) -> str:
    p = tmp / "latin1.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    return str(p)


def _corrupt_checkpoint(tmp: Path) -> str:
    d = _model_dir(tmp)
    (Path(d) / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return d


@pytest.mark.parametrize("build, fragments", CASES)
def test_bad_input_exits_2_with_one_line_and_touches_no_run(world, tmp_path, capsys, build, fragments):
    argv = build(world, tmp_path)
    before = _hashes(world.run, world.copy)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sabench: error: "), err
    assert not lines[0].startswith("sabench: error: sabench"), err  # no doubled prefix
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert _hashes(world.run, world.copy) == before


def test_at_least_sixty_cases_cover_every_command():
    assert len(CASES) >= 60
    assert {p.id.split("-")[0] for p in CASES} == {"run", "inspect", "report", "compare", "check", "history",
                                                    "quality"}


def _every_command_runs(monkeypatch, handler) -> None:
    """Every command of the CLI's table runs `handler` (a stand-in that fails on purpose)."""
    import dataclasses

    import sabench.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", tuple(dataclasses.replace(c, run=handler) for c in cli.COMMANDS))


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors are turned into one line: an internal failure propagates (exit 1 with a traceback)."""
    import sabench.cli as cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    _every_command_runs(monkeypatch, broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["inspect", "--model", "tiny"])


def test_a_bug_exits_1_with_the_traceback_from_the_console(tmp_path):
    code = ("import dataclasses, sys, sabench.cli as c; "
            "c.COMMANDS = tuple(dataclasses.replace(x, run=lambda a: 1 / 0) for x in c.COMMANDS); "
            "sys.argv = ['sabench', 'inspect', '--model', 'tiny']; c.entry()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


SLOW_SUITE = _suite_text(seq_lens=(16, 24, 32, 40, 48, 56, 64, 72))


def _alive_in_group(pgid: int) -> dict:
    """{pid: (parent pid, command line)} of the live processes of process group `pgid` (zombies are not)."""
    alive = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        state, ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in "ZX":
            alive[int(d.name)] = (int(ppid), cmd)
    return alive


def _point_processes(pgid: int, depth: int = 1) -> list:
    """Processes forked by the group's fork server (point processes), or (depth 2) their children
    (a tensor-parallel point's ranks)."""
    group = _alive_in_group(pgid)
    parents = {pid for pid, (_, cmd) in group.items() if "forkserver" in cmd}
    for _ in range(depth):
        parents = {pid for pid, (ppid, _) in group.items() if ppid in parents}
    return sorted(parents)


def _until(cond, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def short_tmp():
    """A TMPDIR short enough for the fork server's AF_UNIX socket path (about 100 bytes at most):
    pytest's tmp_path under parallel workers is longer than that."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sbi-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("stage", ["setup", "server", "point", "ranks", "report"])
def test_ctrl_c_at_any_stage_is_one_line_exit_130_and_leaves_nothing_behind(tmp_path, short_tmp, stage):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, while the run sets up
    (out directory made: lock, calibration), while the fork server starts (importing torch), while
    a point process runs (just forked or measuring), while a tensor-parallel point's ranks run, or
    while the report is written (held there by SABENCH_FAULT_PAUSE): exit 130, no traceback from
    any process, exactly one line naming the command that goes on, no process of the group left,
    no work directory left."""
    suite = tmp_path / "slow.yaml"
    suite.write_text(_suite_text(variants=("baseline",)) if stage == "report"
                     else SLOW_SUITE + "parallel:\n  tensor: 2\n" if stage == "ranks" else SLOW_SUITE)
    out, tmp, reached = tmp_path / "run", short_tmp, tmp_path / "report-reached"
    env = dict(_env(), TMPDIR=str(tmp), SABENCH_HISTORY=str(tmp_path / "history.sqlite"),
               SABENCH_CACHE_DIR=str(tmp_path / "cache"), SABENCH_FAULT_PAUSE=f"report:{reached}")
    proc = subprocess.Popen([sys.executable, "-m", "sabench.cli", "run", str(suite), "--out", str(out)]
                            + ([] if stage == "report" else ["--no-report"]),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    at_stage = {"setup": out.exists,
                "server": lambda: any("forkserver" in cmd for _, cmd in _alive_in_group(proc.pid).values()),
                "point": lambda: bool(_point_processes(proc.pid)),
                "ranks": lambda: len(_point_processes(proc.pid, depth=2)) == 2,
                "report": reached.exists}[stage]
    try:
        assert _until(lambda: at_stage() or proc.poll() is not None), f"never reached {stage}"
        assert proc.poll() is None, f"the run ended before {stage}: " + "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(60)
    text = "".join(lines)
    assert proc.returncode == 130, text
    for word in ("Traceback", "KeyboardInterrupt", "Error"):
        assert word not in text, text
    said = [line for line in text.splitlines() if "resume" in line]
    assert len(said) == 1 and said[0] == text.strip().splitlines()[-1], text
    assert said[0].startswith("sabench: interrupted") and f"--out {out}" in said[0]
    results = out / "results.json"
    if "--resume" in said[0]:  # what was kept is valid and complete per point
        assert str(results) in said[0]
        kept = json.loads(results.read_text())["records"]
        assert len(kept) % 2 == 0 and all(r["status"] == "ok" for r in kept)
    else:
        assert "nothing to resume" in said[0] and not results.exists()
    assert _until(lambda: not _alive_in_group(proc.pid), 60), _alive_in_group(proc.pid)
    left = [p.name for p in tmp.iterdir() if p.name.startswith(("sabench-", "pymp-"))]
    assert not left  # the work directories of the run, its point processes and multiprocessing


def test_an_interrupt_caught_inside_execd_code_still_exits_130_under_python_m(tmp_path):
    """CPython turns the exit of `python -m` into death by SIGINT when a KeyboardInterrupt was raised
    in code run by exec() of a string, even one caught (as Ctrl-C in a dataclass being defined is):
    sabench's entry clears that, so the status is 130 as documented, never -SIGINT."""
    (tmp_path / "interrupted_entry.py").write_text(
        "import sabench.cli as cli\n"
        "def main(argv=None):\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    except KeyboardInterrupt:\n"
        "        return cli.EXIT_INTERRUPTED\n"
        "cli.main = main\n"
        "cli.entry()\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_entry"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr


def test_nan_free_float_parse_is_strict():
    from sabench.argtypes import float_in

    parse = float_in(0.0, 1.0)
    assert parse("0.5") == 0.5 and parse("1") == 1.0
    for bad in ("0", "nan", "inf", "-0.1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"expected a number in \(0, 1\], got '{bad}'"):
            parse(bad)
    assert math.isfinite(parse("1e-9"))


def test_an_unwritable_out_is_refused_before_anything_runs(world, tmp_path, capsys, monkeypatch):
    """A read-only filesystem or directory (simulated: tests may run as root, who may write anywhere)."""
    import sabench.errors

    monkeypatch.setattr(sabench.errors.os, "access", lambda path, mode: False)
    assert main(["run", str(world.suite), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sabench: error: --out") and "not writable" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("code, hint", [(30, "read-only"), (17, "exists already"), (36, "too long"),
                                        (13, "permission denied"), (20, "directory belongs")])
def test_os_errors_on_a_users_path_are_one_line(monkeypatch, capsys, code, hint):
    """EROFS, EEXIST, ENAMETOOLONG, EACCES, ENOTDIR raised anywhere below a command: exit 2, the path named."""
    import errno as errno_mod

    import sabench.cli as cli

    assert errno_mod.errorcode[code]  # the codes above are Linux's

    def fails(args):
        raise OSError(code, os.strerror(code), "/some/out/path")

    _every_command_runs(monkeypatch, fails)
    assert cli.main(["inspect", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "/some/out/path" in err and hint in err and len(err.splitlines()) == 1


def test_other_os_errors_are_not_hidden(monkeypatch):
    import errno as errno_mod

    import sabench.cli as cli

    def fails(args):
        raise OSError(errno_mod.EIO, "Input/output error")

    _every_command_runs(monkeypatch, fails)
    with pytest.raises(OSError):
        cli.main(["inspect", "--model", "tiny"])

"""The CLI: inspect output, and one-line errors with exit code 2 for every kind of bad input."""
import json
import subprocess
import sys

import pytest

from sabench.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_json_fields(capsys):
    rc, out, _ = _run(capsys, "inspect", "--model", "llama-2-7b", "--variant", "sa:23-30", "--json",
                      "--batch", "2", "--seq-len", "1024")
    d = json.loads(out)
    assert rc == 0
    assert d["kv_cache_bytes_per_token"] == 458752
    assert d["params"] < 6_738_415_616
    assert set(d["flops"]) >= {"prefill", "decode_step"}
    assert d["flops"]["prefill"] == sum(v for k, v in d["flops"]["prefill_breakdown"].items() if k != "total")


def test_inspect_table_puts_variants_side_by_side(capsys):
    rc, out, _ = _run(capsys, "inspect", "--model", "cla-1b-mqa", "--variant", "baseline", "--variant", "cla:2",
                      "--variant", "cla:3", "--dtype", "bf16", "--seq-len", "512")
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("|") and "cla:3" in line)
    assert "baseline" in header and "cla:2" in header
    assert "10 KiB" in out and "5 KiB" in out and "3.5 KiB" in out  # CLA paper Table 1


def test_inspect_count_shows_what_fvcore_alone_misses(capsys):
    rc, out, _ = _run(capsys, "inspect", "--model", "tiny", "--variant", "sa:2-3", "--json", "--count",
                      "--seq-len", "64", "--dtype", "fp32")
    d = json.loads(out)
    assert d["flops_counted"]["prefill"] == d["flops"]["prefill"]
    assert d["flops_counted"]["prefill_fvcore_alone"] < d["flops"]["prefill"]


@pytest.mark.parametrize("argv, fragment", [
    (["inspect", "--model", "tiny", "--variant", "sa:0-2"], "starts at layer 0"),
    (["inspect", "--model", "tiny", "--variant", "cla:0"], "factor must be >= 1"),
    (["inspect", "--model", "tiny", "--variant", "bogus"], "unknown variant kind"),
    (["inspect", "--model", "/no/such/model"], "no such file or directory"),
    (["inspect", "--model", "tiny", "--dtype", "int8"], "unsupported dtype 'int8'"),
    (["inspect", "--model", "tiny", "--seq-len", "100000"], "positions"),
    (["inspect", "--model", "tiny", "--batch", "0"], "--batch: expected an integer in 1.."),
    (["inspect", "--model", "tiny", "--batch", "two"], "--batch: expected an integer"),
    (["inspect"], "--model"),
    (["frobnicate"], "invalid choice"),
    (["run", "no-such-suite"], "no-such-suite"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert fragment in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, fragment", [
    (None, "has no config.json"),
    ("{not json", "cannot read"),
    ('{"model_type": "gpt2"}', "model_type 'gpt2'"),
    ('{"model_type": "llama", "hidden_size": 64}', "config has no"),
    ('[1, 2]', "not a JSON object"),
])
def test_bad_model_directories(tmp_path, capsys, content, fragment):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    rc, _, err = _run(capsys, "inspect", "--model", str(tmp_path))
    assert rc == 2 and fragment in err and "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "sabench.cli", "inspect", "--model", "tiny", "--variant", "sa:5-9"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sabench: error:") and "Traceback" not in proc.stderr


def test_python_api_bad_inputs_raise_clear_errors():
    import torch

    import sabench

    with pytest.raises(sabench.PlanError, match="reversed SA span"):
        sabench.load_model("tiny", "sa:3-2", device="cpu")
    with pytest.raises(sabench.ModelSourceError, match="unknown model"):
        sabench.load_model("nope", device="cpu")
    if not torch.cuda.is_available():  # asked for explicitly; the default (device=None) picks the CPU here
        with pytest.raises(ValueError, match="CUDA is not available"):
            sabench.load_model("tiny", device="cuda")


@pytest.mark.parametrize("command", ["run", "quality"])
def test_a_bug_during_a_command_is_a_traceback_not_a_user_error(tmp_path, monkeypatch, command):
    """A plain ValueError raised while a command runs is a bug: it propagates (traceback, exit 1),
    it is never turned into the one-line exit 2 reserved for the user's mistakes."""
    from sabench import quality
    from sabench.harness import sweep

    def boom(*a, **k):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(sweep, "run_suite", boom)
    monkeypatch.setattr(quality, "evaluate", boom)
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3")
    argv = (["run", "smoke", "--out", str(tmp_path / "r")] if command == "run"
            else ["quality", "--model", "tiny", "--token-ids", str(ids)])
    with pytest.raises(ValueError, match="internal invariant"):
        main(argv)


def test_every_command_comes_from_the_one_table(capsys):
    """`sabench --help` lists the commands of cli.COMMANDS, in its order, each with its help, and a
    command parses to the handler its table row names."""
    from sabench.cli import COMMANDS, build_parser

    names = [c.name for c in COMMANDS]
    assert len(set(names)) == len(names) == 11
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(names) + "}" in out
    assert all(" ".join(c.help.split()[:4]) in " ".join(out.split()) for c in COMMANDS)
    parser = build_parser()
    args = parser.parse_args(["check", "a", "b"])
    assert args.func is next(c.run for c in COMMANDS if c.name == "check")


def test_a_command_builds_its_own_arguments_and_no_other_commands(monkeypatch):
    """`sabench run ...` builds run's arguments only: another command's feature code never runs
    (the whole parser, `build_parser()`, still has them all, and `--help` lists every command)."""
    import dataclasses

    import sabench.cli as cli

    built = []
    table = tuple(dataclasses.replace(c, add_arguments=(lambda add, name: lambda p: (built.append(name), add(p)))(
        c.add_arguments, c.name)) for c in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", table)
    assert cli.main(["check", "missing-a.json", "missing-b.json"]) == 2  # bad input, after parsing
    assert built == ["check"]
    built.clear()
    cli.build_parser()
    assert built == [c.name for c in table]  # the whole parser has every command's arguments

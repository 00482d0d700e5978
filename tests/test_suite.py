"""Suite files: every malformed suite is refused up front with a one-line, keyed message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sabench.devices import resolve_device
from sabench.paths import suites_dir
from sabench.presets import PRESETS
from sabench.records import PointSpec
from sabench.suite import (
    Suite,
    SuiteError,
    available_suites,
    find_suite,
    load_suite,
    parse_suite,
)

REMOVE = object()
TINY_POSITIONS = PRESETS["tiny"].max_position_embeddings  # read, not assumed: presets evolve

BASE = {
    "name": "unit",
    "model": "tiny",
    "dtype": "float32",
    "variants": ["baseline", "cla:2", "sa:2-3"],
    "sweep": {"batch_size": [1, 4], "seq_len": [32, 128]},
    "decode_tokens": 16,
}


def suite_text(**changes) -> str:
    """BASE with top-level keys replaced (or dropped with REMOVE), as YAML."""
    data = {k: v for k, v in {**BASE, **changes}.items() if v is not REMOVE}
    return yaml.safe_dump(data, sort_keys=False)


def sweep_text(**changes) -> str:
    sweep = {k: v for k, v in {**BASE["sweep"], **changes}.items() if v is not REMOVE}
    return suite_text(sweep=sweep)


def write(tmp_path: Path, text: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# (id, YAML text, substring the message must contain: the key path and what is wrong)
MALFORMED = [
    ("unknown-top-key", suite_text(bogus=1), "bogus: unknown key; allowed keys: name,"),
    ("typo-repeat", suite_text(repeat=3), "repeat: unknown key"),
    ("unknown-sweep-key", sweep_text(batch=[2]), "sweep.batch: unknown key; allowed keys: batch_size, seq_len"),
    ("missing-name", suite_text(name=REMOVE), "name: required key missing"),
    ("missing-model", suite_text(model=REMOVE), "model: required key missing"),
    ("missing-variants", suite_text(variants=REMOVE), "variants: required key missing"),
    ("missing-sweep", suite_text(sweep=REMOVE), "sweep: required key missing"),
    ("missing-seq-len", sweep_text(seq_len=REMOVE), "sweep.seq_len: required key missing"),
    ("sweep-not-mapping", suite_text(sweep=[1, 2]), "sweep: expected a mapping"),
    ("bad-slug", suite_text(name="my suite!"), "name: expected a slug"),
    ("name-not-string", suite_text(name=12), "name: expected a slug"),
    ("bad-dtype", suite_text(dtype="float64"), "dtype: unsupported dtype 'float64'"),
    ("bad-device", suite_text(device="gpu"), "device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("empty-variants", suite_text(variants=[]), "variants: expected a non-empty list"),
    ("variants-not-list", suite_text(variants="cla:2"), "variants: expected a non-empty list"),
    ("duplicate-variant", suite_text(variants=["baseline", "cla:2", " cla:2"]),
     "variants[2]: ' cla:2' duplicates variants[1]"),
    ("unknown-variant-kind", suite_text(variants=["baseline", "foo"]), "variants[1]: unknown variant kind 'foo'"),
    ("variant-combines-baseline", suite_text(variants=["baseline+cla:2"]),
     "variants[0]: variant 'baseline+cla:2' combines"),
    ("cla-zero", suite_text(variants=["baseline", "cla:0"]), "variants[1]: bad CLA factor 0"),
    ("sa-starts-at-0", suite_text(variants=["sa:0-2"]), "variants[0]: SA span '0-2'"),
    ("sa-beyond-layers", suite_text(variants=["sa:2-4"]),
     "variants[0]: SA span '2-4' in variant 'sa:2-4' is outside the model's layers 0..3"),
    ("sa-reversed", suite_text(variants=["sa:3-2"]), "variants[0]: reversed SA span"),
    ("sa-overlapping", suite_text(variants=["sa:1-2,2-3"]), "variants[0]: overlapping SA spans"),
    ("variant-as-mapping", "name: unit\nmodel: tiny\nvariants:\n  - baseline\n  - sa: 2-3\n"
                           "sweep: {batch_size: 1, seq_len: 32}\n", "variants[1]: expected a variant string"),
    ("batch-size-zero", sweep_text(batch_size=[1, 0]), "sweep.batch_size[1]: expected an integer in 1..16777216 or 'max', got 0"),
    ("batch-size-float", sweep_text(batch_size=1.5), "sweep.batch_size: expected a positive integer or a list"),
    ("batch-size-repeated", sweep_text(batch_size=[4, 1, 4]), "sweep.batch_size[2]: 4 is listed twice"),
    ("empty-batch-list", sweep_text(batch_size=[]), "sweep.batch_size: expected a non-empty list"),
    ("negative-seq-len", sweep_text(seq_len=[-8]), "sweep.seq_len[0]: expected an integer in 1..16777216, got -8"),
    ("seq-len-string", sweep_text(seq_len=["32"]), "sweep.seq_len[0]: expected an integer in 1..16777216, got '32'"),
    ("seq-len-bool", sweep_text(seq_len=[32, True]), "sweep.seq_len[1]: expected an integer in 1..16777216, got true"),
    ("warmup-bool", suite_text(warmup=True), "warmup: expected an integer in 0..1000, got true"),
    ("warmup-word", suite_text(warmup="two"), "warmup: expected an integer in 0..1000, got 'two'"),
    ("warmup-negative", suite_text(warmup=-1), "warmup: expected an integer in 0..1000, got -1"),
    ("seq-beyond-positions", sweep_text(seq_len=[32, TINY_POSITIONS - 8]),
     f"sweep.seq_len[1]: {TINY_POSITIONS - 8} + decode_tokens 16 exceeds the model's {TINY_POSITIONS} positions; "
     f"seq_len may be at most {TINY_POSITIONS - 16}"),
    ("single-seq-beyond-positions", sweep_text(seq_len=TINY_POSITIONS),
     f"sweep.seq_len: {TINY_POSITIONS} + decode_tokens 16 exceeds"),
    ("decode-tokens-zero", suite_text(decode_tokens=0), "decode_tokens: expected an integer in 1..1048576, got 0"),
    ("repeats-zero", suite_text(repeats=0), "repeats: expected an integer in 1..10000, got 0"),
    ("prefill-chunk-zero", suite_text(prefill_chunk=0), "prefill_chunk: expected null or an integer in 1..16777216"),
    ("repeats-huge", suite_text(repeats=10 ** 20), "repeats: expected an integer in 1..10000, got 100000000000000000000"),
    ("warmup-huge", suite_text(warmup=5000), "warmup: expected an integer in 0..1000, got 5000"),
    ("allow-long-context-word", suite_text(allow_long_context="yes please"), "allow_long_context: expected true or false"),
    ("bad-execution", suite_text(execution="fast"), "execution: expected one of auto, eager, compiled, got 'fast'"),
    ("sa-bad-strategy", suite_text(variants=["sa:2-3/fused"]), "variants[0]: bad SA strategy '/fused'"),
    ("unknown-model", suite_text(model="llama-99b"), "model: unknown model 'llama-99b'"),
    ("model-dir-without-config", suite_text(model="empty-model"), "model: model directory"),
    ("duplicate-yaml-key", suite_text() + "decode_tokens: 8\n", "decode_tokens: duplicate key (lines"),
    ("yaml-syntax-error", "name: unit\nmodel: tiny\nvariants: [baseline\nsweep: {}\n", "line 4, column"),
    ("empty-file", "# nothing here\n", "empty suite file"),
    ("top-level-list", "- name: unit\n- model: tiny\n", "top level is a list"),
    ("custom-tag", suite_text().replace("model: tiny", "model: !shell tiny"), "model: tag '!shell'"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_suite_is_rejected_with_keyed_one_line_message(tmp_path, text, expected):
    (tmp_path / "empty-model").mkdir()
    path = write(tmp_path, text, "bad-suite.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(path) + ": ")
    assert "\n" not in message


def test_python_tag_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = suite_text() + f'description: !!python/object/apply:os.system ["touch {marker}"]\n'
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert "description: tag '!!python/object/apply:os.system'" in message
    assert "not allowed" in message and "\n" not in message
    assert not marker.exists()


def test_missing_file_is_a_suite_error(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}: cannot read suite file")


def test_parse_suite_without_a_file_labels_messages():
    with pytest.raises(SuiteError, match=r"^<suite>: warmup: "):
        parse_suite({**BASE, "warmup": -3})


def test_defaults_are_applied(tmp_path):
    text = "name: minimal\nmodel: tiny\nvariants: [baseline]\nsweep: {batch_size: 2, seq_len: 64}\n"
    suite = load_suite(write(tmp_path, text))
    assert (suite.description, suite.dtype, suite.device) == ("", "bfloat16", "auto")
    assert (suite.decode_tokens, suite.warmup, suite.repeats, suite.prefill_chunk) == (32, 2, 5, None)
    assert suite.execution == "auto" and suite.to_dict()["execution"] == "auto"
    assert (suite.batch_sizes, suite.seq_lens) == ((2,), (64,))
    assert suite.model_config is PRESETS["tiny"]
    assert suite.path == str(tmp_path / "case.yaml")


@pytest.mark.parametrize("given,canonical", [("fp32", "float32"), ("BF16", "bfloat16"), ("fp16", "float16"),
                                             ("float16", "float16")])
def test_dtype_short_forms_are_canonicalised(tmp_path, given, canonical):
    assert load_suite(write(tmp_path, suite_text(dtype=given))).dtype == canonical


def test_variants_and_device_are_canonicalised(tmp_path):
    suite = load_suite(write(tmp_path, suite_text(variants=["Baseline", " SA: 2-3 ", "cla:2 + sa:2-3"],
                                                  device="CUDA:1")))
    assert suite.variants == ("baseline", "sa:2-3", "cla:2+sa:2-3")
    assert suite.device == "cuda:1"  # validated as written, not against this machine


def test_points_run_variant_then_batch_then_seq_ascending(tmp_path):
    text = sweep_text(batch_size=[4, 1], seq_len=[128, 32])
    suite = load_suite(write(tmp_path, text))
    assert (suite.batch_sizes, suite.seq_lens) == ((1, 4), (32, 128))
    points = suite.points()
    assert points[:4] == [PointSpec("baseline", 1, 32), PointSpec("baseline", 1, 128),
                          PointSpec("baseline", 4, 32), PointSpec("baseline", 4, 128)]
    assert [p.variant for p in points] == ["baseline"] * 4 + ["cla:2"] * 4 + ["sa:2-3"] * 4
    assert points[-1].key == "sa:2-3|4|128"


def test_to_dict_is_json_and_carries_the_resolved_model(tmp_path):
    suite = load_suite(write(tmp_path, suite_text(prefill_chunk=64)))
    d = json.loads(json.dumps(suite.to_dict()))
    assert d["model"] == "tiny" and d["model_config"]["num_layers"] == 4
    assert d["sweep"] == {"batch_size": [1, 4], "seq_len": [32, 128]}
    assert d["variants"] == ["baseline", "cla:2", "sa:2-3"]
    assert (d["dtype"], d["prefill_chunk"], d["decode_tokens"]) == ("float32", 64, 16)


def test_with_variants_restricts_and_validates(tmp_path):
    suite = load_suite(write(tmp_path, suite_text()))
    only = suite.with_variants(["sa:2-3", "CLA:4"])
    assert isinstance(only, Suite) and only.variants == ("sa:2-3", "cla:4")
    assert {v: p.variant for v, p in only.plans.items()} == {"sa:2-3": "sa:2-3", "cla:4": "cla:4"}  # one plan each
    assert only.plans["sa:2-3"] is suite.plans["sa:2-3"]  # a variant the suite lists is not parsed again
    assert suite.variants == ("baseline", "cla:2", "sa:2-3")  # the original is untouched
    assert [p.variant for p in only.points()][:1] == ["sa:2-3"]
    for bad in (["sa:0-1"], ["cla:2", " cla:2"], []):
        with pytest.raises(SuiteError) as info:
            suite.with_variants(bad)
        assert f"{suite.path}: --variant: " in str(info.value)


def test_find_suite_by_name_and_by_path(tmp_path):
    assert find_suite("smoke") == suites_dir() / "smoke.yaml"
    assert find_suite("llama-3.1-8b") == suites_dir() / "llama-3.1-8b.yaml"  # dots in a bare name
    path = write(tmp_path, suite_text())
    assert find_suite(str(path)) == path
    with pytest.raises(SuiteError, match=r"unknown suite; available suites: .*smoke"):
        find_suite("smoek")
    with pytest.raises(SuiteError, match="no such suite file"):
        find_suite(str(tmp_path / "missing.yaml"))


def _tiny_model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(PRESETS["tiny"].to_hf_dict()))
    return root


def test_relative_model_path_resolves_beside_the_suite(tmp_path, monkeypatch):
    _tiny_model_dir(tmp_path / "models" / "mini")
    (tmp_path / "suites").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for model in ("../models/mini", "../models/mini/config.json"):
        suite = load_suite(write(tmp_path / "suites", suite_text(model=model)))
        assert suite.model == model
        assert suite.model_config.num_layers == 4 and suite.model_config.source.endswith("config.json")


def test_relative_model_path_falls_back_to_cwd(tmp_path, monkeypatch):
    _tiny_model_dir(tmp_path / "work" / "mini")
    (tmp_path / "suites").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    suite = load_suite(write(tmp_path / "suites", suite_text(model="mini")))
    assert suite.model_config.name == "mini"


@pytest.mark.parametrize("name", available_suites())
def test_every_shipped_suite_validates(name):
    suite = load_suite(find_suite(name))
    assert suite.points() or suite.serving  # a serving suite has a scenario instead of a sweep
    cfg = suite.model_config
    assert max(suite.seq_lens, default=0) + suite.decode_tokens <= cfg.max_position_embeddings
    json.dumps(suite.to_dict())


def test_shipped_suites_include_the_planned_ones():
    assert {"smoke", "llama-3.2-1b", "llama-3.1-8b", "sa-paper", "sa-paper-llama3", "cla-paper",
            "cla-paper-mha", "cla-paper-3b"} <= set(available_suites())


def test_smoke_suite_stays_small():
    suite = load_suite(find_suite("smoke"))
    assert suite.model == "tiny" and suite.dtype == "float32"
    # Four variants (baseline, CLA, SA with stored P, SA recomputed) x 2 batches x 2 lengths: the
    # smallest grid that runs every code path the report compares; `make bench` on CPU stays ~1 min.
    assert len(suite.points()) <= 16 and max(suite.seq_lens) <= 128 and max(suite.batch_sizes) <= 4


def test_resolve_execution():
    from sabench.devices import resolve_execution

    assert resolve_execution("auto", "cuda:0") == "compiled" and resolve_execution("auto", "cpu") == "eager"
    assert resolve_execution("eager", "cuda") == "eager" and resolve_execution("compiled", "cpu") == "compiled"
    with pytest.raises(ValueError, match="unsupported execution"):
        resolve_execution("fast", "cpu")


def test_resolve_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:1")


def test_cli_rejects_malformed_suite_with_exit_2(tmp_path, capsys):
    cli = pytest.importorskip("sabench.cli")
    pytest.importorskip("sabench.harness.sweep")  # `sabench run` hands the suite to harness.sweep.run_suite
    path = write(tmp_path, sweep_text(seq_len=[32, TINY_POSITIONS]), "bad-suite.yaml")
    out = tmp_path / "o"
    rc = cli.main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "sweep.seq_len[1]" in err and "bad-suite.yaml" in err
    assert "sabench: error: " in err and "Traceback" not in err
    assert not list(tmp_path.rglob("results.json"))


def test_paths_anchor_to_the_checkout_else_the_working_directory(tmp_path, monkeypatch):
    from sabench import paths

    assert paths.project_root() == Path(__file__).resolve().parent.parent
    installed = tmp_path / "site-packages" / "sabench"  # a plain install: no pyproject.toml beside it
    installed.mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE_DIR", installed)
    monkeypatch.chdir(tmp_path)
    assert paths.suites_dir() == tmp_path / "suites" and paths.reports_dir() == tmp_path / "reports"


def test_allow_long_context_runs_past_the_models_positions(tmp_path):
    """Asked for explicitly, a sequence beyond the trained positions is accepted and the model is sized for it."""
    seq = TINY_POSITIONS + 100
    suite = load_suite(write(tmp_path, suite_text(sweep={"batch_size": 1, "seq_len": seq}, allow_long_context=True)))
    assert suite.model_config.max_position_embeddings == seq + BASE["decode_tokens"]
    assert suite.to_dict()["allow_long_context"] is True
    plain = load_suite(write(tmp_path, suite_text(), "plain.yaml"))
    assert "allow_long_context" not in plain.to_dict()  # older results stay comparable on --resume
    assert plain.model_config.max_position_embeddings == TINY_POSITIONS


def test_defaults_rounds_enough_to_judge_and_one_cpu_thread():
    from sabench.stats import MIN_ROUNDS
    from sabench.devices import resolve_threads
    from sabench.suite import DEFAULT_ROUNDS

    assert DEFAULT_ROUNDS == MIN_ROUNDS == 3
    assert resolve_threads(None, "cpu") == 1
    assert resolve_threads(None, "cuda:0") is None and resolve_threads(None, "cuda") is None
    assert resolve_threads(4, "cpu") == 4 and resolve_threads(2, "cuda:1") == 2

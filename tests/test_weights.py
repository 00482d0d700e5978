"""Suites say which weights run: `weights: random | checkpoint`, and with checkpoint weights a
`quality:` key puts each variant's perplexity beside its timings."""
import json
import math

import pytest
import torch

from sabench import quality
from sabench.cli import main
from sabench.suite import SuiteError, parse_suite
from tests.helpers import hf_model, small_config

SEQ = 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = small_config("gqa", layers=4)
    hf = hf_model(cfg, seed=7)
    d = tmp_path_factory.mktemp("wckpt")
    hf.save_pretrained(d / "model")
    ids = torch.randint(0, cfg.vocab_size, (3 * SEQ + 5,), generator=torch.Generator().manual_seed(4))
    (d / "ids.txt").write_text(" ".join(map(str, ids.tolist())))
    return d


def _suite(d, extra, name="w.yaml"):
    text = f"""\
name: w
model: model
dtype: float32
device: cpu
variants: [baseline, "sa:2-3"]
sweep:
  batch_size: [1]
  seq_len: [16, 24]
decode_tokens: 2
rounds: 1
warmup: 0
repeats: 2
{extra}"""
    p = d / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def checkpoint_run(ckpt):
    suite = _suite(ckpt, "weights: checkpoint\nquality: {token_ids: ids.txt, seq_len: 32, windows: 2}\n")
    out = ckpt / "run"
    rc = main(["run", str(suite), "--out", str(out)])
    return rc, json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def test_checkpoint_suite_runs_and_scores_each_variant_once(ckpt, checkpoint_run):
    rc, results, _ = checkpoint_run
    assert rc == 0
    recs = results["records"]
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs)
    assert results["suite"]["weights"] == "checkpoint" and all(r["weights"] == "checkpoint" for r in recs)
    scored = [r for r in recs if "perplexity" in r]
    assert {(r["variant"], r["seq_len"]) for r in scored} == {("baseline", 16), ("sa:2-3", 16)}  # first points
    ref = quality.evaluate(str(ckpt / "model"), variants=["baseline", "sa:2-3"], token_ids=ckpt / "ids.txt",
                           seq_len=SEQ, max_windows=2, progress=False, candidates=0)
    for r in scored:
        want = next(x for x in ref["variants"] if x["variant"] == r["variant"])["perplexity"]
        assert r["perplexity"] == pytest.approx(want, rel=1e-5)
        assert r["perplexity_windows"] == 2 and r["perplexity_predictions"] == 2 * (SEQ - 1)


def test_the_perplexity_is_the_checkpoints(ckpt, checkpoint_run):
    from transformers import LlamaForCausalLM

    _, results, _ = checkpoint_run
    hf = LlamaForCausalLM.from_pretrained(ckpt / "model", dtype=torch.float32).eval()
    ids = torch.tensor([int(x) for x in (ckpt / "ids.txt").read_text().split()])[: 2 * SEQ].view(2, SEQ)
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits[:, :-1].double(), dim=-1)
    ref = math.exp(-logp.gather(-1, ids[:, 1:, None]).mean().item())
    got = next(r["perplexity"] for r in results["records"] if r["variant"] == "baseline" and "perplexity" in r)
    assert got == pytest.approx(ref, rel=1e-5)


def test_report_says_checkpoint_and_shows_perplexity_beside_latency(checkpoint_run):
    _, results, report = checkpoint_run
    assert "**Weights: checkpoint**" in report
    section = report.split("## Weights and quality")[1].split("\n## ")[0]
    base = next(r for r in results["records"] if r["variant"] == "baseline" and "perplexity" in r)
    header = next(line for line in section.splitlines() if line.startswith("| variant"))
    assert "perplexity" in header and "b=1 s=16: prefill / decode ms" in header
    row = next(line for line in section.splitlines() if line.startswith("| `baseline`"))
    assert f"{base['perplexity']:.5g}" in row
    assert "non-overlapping windows" in section


def test_random_is_the_default_and_the_report_says_so(ckpt):
    out = ckpt / "random-run"
    assert main(["run", str(_suite(ckpt, "", "r.yaml")), "--out", str(out), "--variant", "baseline"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"]["weights"] == "random"
    assert all(r["weights"] == "random" and "perplexity" not in r for r in results["records"])
    assert "**Weights: random**" in (out / "report.md").read_text()


def _parse(ckpt, extra):
    import yaml

    p = _suite(ckpt, extra, "p.yaml")
    return parse_suite(yaml.safe_load(p.read_text()), str(p))


@pytest.mark.parametrize("extra, key, fragment", [
    ("weights: trained\n", "weights", "random or checkpoint"),
    ("quality: {token_ids: ids.txt}\n", "quality", "weights: checkpoint"),
    ("weights: checkpoint\nquality: {token_ids: nope.txt}\n", "quality.token_ids", "no such file"),
    ("weights: checkpoint\nquality: {token_ids: ids.txt, text: ids.txt}\n", "quality", "exactly one"),
    ("weights: checkpoint\nquality: {token_ids: ids.txt, windowz: 2}\n", "quality.windowz", "unknown key"),
    ("weights: checkpoint\nquality: {token_ids: ids.txt, seq_len: 9999}\n", "quality.seq_len", "integer"),
    ("weights: checkpoint\nquality: {token_ids: ids.txt, seq_len: 16, stride: 17}\n", "quality.stride", "1..16"),
    ("weights: checkpoint\nquality: {text: ids.txt}\n", "quality.text", "tokenizer"),
])
def test_bad_weights_and_quality_keys_are_named(ckpt, extra, key, fragment):
    with pytest.raises(SuiteError) as e:
        _parse(ckpt, extra)
    assert e.value.key == key and fragment in str(e.value)


def test_checkpoint_weights_need_a_checkpoint(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nmodel: tiny\nvariants: [baseline]\nsweep: {batch_size: [1], seq_len: [8]}\n"
                 "weights: checkpoint\n")
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "weights" in err and "no checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("recs, phase, text", [
    ([{"execution": "eager", "decode_mode": "eager"}], "decode", "Execution: eager."),
    ([{"execution": "compiled", "decode_mode": "graph"}], "decode", "Execution: compiled, graph mode."),
    ([{"execution": "eager", "prefill_mode": "eager"}, {"execution": "eager"}], "prefill", "Execution: eager."),
])
def test_execution_note_says_nothing_twice(recs, phase, text):
    from types import SimpleNamespace

    from sabench.report.report import _execution_note

    recs = [SimpleNamespace(**{"prefill_mode": None, "decode_mode": None, **r}) for r in recs]
    assert _execution_note(recs, phase) == text


def test_pareto_plot_numbers_points_and_lists_them_in_a_legend(tmp_path, monkeypatch):
    from sabench.report import plots, quality_report

    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, out, name: figs.append(fig))
    rows = [{"variant": v, "perplexity": p, "delta_vs_baseline": p - 10, "kv_cache_bytes_per_token": kv}
            for v, p, kv in [("baseline", 10.0, 100), ("sa:2-3", 10.0001, 80), ("sa:2-3/recompute", 10.0001, 80),
                             ("cla:2", 12.0, 50)]]
    quality_report.pareto_plot({"variants": rows, "weights": "checkpoint"}, tmp_path / "p.png")
    ax = figs[0].axes[0]
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["1", "2,3", "4"]  # the two points at one spot share one label
    spots = {(r["kv_cache_bytes_per_token"], r["perplexity"]) for r in rows}
    assert all(tuple(t.xy) in spots for t in ax.texts)  # each label sits at its point, not a rounded one
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [x for x in legend if x[0].isdigit()] == ["1  baseline", "2  sa:2-3", "3  sa:2-3/recompute", "4  cla:2"]

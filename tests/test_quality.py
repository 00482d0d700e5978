"""`sabench quality`: perplexity against transformers and sabench's own forwards, attention similarity
against transformers' eager attention weights, the one recommendation (the advice's measured plan),
which runs only when asked for, and every bad input."""
import json
import math

import pytest
import torch

from sabench import quality
from sabench.cli import main
from sabench.model import load_model
from sabench.plan import parse_variant
from sabench.windows import non_overlapping
from tests.helpers import hf_model, small_config

SEQ = 48
N_TOKENS = 5 * SEQ + 17  # five windows and a trailing partial one, dropped


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 4-layer GQA Llama saved by transformers. Layers 0 and 1 have sharp attention (Q/K scaled
    up), layers 2 and 3 the near-uniform attention of a fresh init, so the similarities differ."""
    cfg = small_config("gqa", layers=4)
    hf = hf_model(cfg, seed=3)
    with torch.no_grad():
        for layer in hf.model.layers[:2]:
            layer.self_attn.q_proj.weight.mul_(10.0)
            layer.self_attn.k_proj.weight.mul_(10.0)
    d = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(d)
    ids = torch.randint(0, cfg.vocab_size, (N_TOKENS,), generator=torch.Generator().manual_seed(5))
    (d / "ids.txt").write_text(" ".join(map(str, ids.tolist())))
    return d


@pytest.fixture(scope="module")
def result(ckpt):
    return quality.evaluate(str(ckpt), variants=["baseline", "sa:2-3", "cla:2", "recommended"],
                            token_ids=ckpt / "ids.txt", seq_len=SEQ, progress=False)


def _windows(ckpt, n=None):
    ids = torch.tensor([int(x) for x in (ckpt / "ids.txt").read_text().split()])
    return non_overlapping(ids, SEQ, n).inputs


def _ppl(logits, windows):
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    return math.exp(-logp.gather(-1, windows[:, 1:, None]).mean().item())


def _row(result, variant):
    return next(r for r in result["variants"] if r["variant"] == variant)


# ---------------------------------------------------------------- perplexity
def test_baseline_perplexity_equals_transformers(ckpt, result):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    w = _windows(ckpt)
    with torch.no_grad():
        ref = _ppl(hf(w).logits, w)
    got = _row(result, "baseline")["perplexity"]
    assert result["windows"] == 5 and result["tokens"] == 5 * SEQ and result["input_tokens"] == N_TOKENS
    assert result["weights"] == "checkpoint"
    assert abs(got - ref) / ref < 1e-4


@pytest.mark.parametrize("variant", ["sa:2-3", "cla:2"])
def test_variant_perplexity_equals_sabench_forward_of_that_variant(ckpt, result, variant):
    m = load_model(str(ckpt), variant, torch.float32, "cpu")  # loaded on its own from the checkpoint
    w = _windows(ckpt)
    ref = _ppl(m(w), w)
    row = _row(result, variant)
    assert abs(row["perplexity"] - ref) / ref < 1e-4
    base = _row(result, "baseline")
    assert row["delta_vs_baseline"] == pytest.approx(row["perplexity"] - base["perplexity"])
    assert row["perplexity"] != pytest.approx(base["perplexity"], rel=1e-6)  # the variant really differs


def test_kv_bytes_per_token_are_the_closed_forms(result):
    per_tensor = 2 * 16 * 4  # kv_heads x head_dim x float32
    assert _row(result, "baseline")["kv_cache_bytes_per_token"] == 8 * per_tensor
    assert _row(result, "sa:2-3")["kv_cache_bytes_per_token"] == 6 * per_tensor  # no K in layers 2, 3
    assert _row(result, "cla:2")["kv_cache_bytes_per_token"] == 4 * per_tensor


def test_max_windows_limits_the_windows(ckpt):
    r = quality.evaluate(str(ckpt), variants=["baseline"], token_ids=ckpt / "ids.txt", seq_len=SEQ,
                         max_windows=2, progress=False)
    m = load_model(str(ckpt), "baseline", torch.float32, "cpu")
    w = _windows(ckpt, 2)
    assert r["windows"] == 2 and r["tokens"] == 2 * SEQ
    assert abs(r["variants"][0]["perplexity"] - _ppl(m(w), w)) / r["variants"][0]["perplexity"] < 1e-4


# ---------------------------------------------------------------- attention similarity
def test_similarity_equals_transformers_eager_attention(ckpt, result):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    w = _windows(ckpt)
    with torch.no_grad():
        att = hf(w, output_attentions=True).attentions  # L x [W, H, T, T]
    flat = torch.stack(att).flatten(3).double()
    unit = flat / flat.norm(dim=-1, keepdim=True)
    ref = torch.einsum("awhx,bwhx->ab", unit, unit) / (unit.shape[1] * unit.shape[2])
    got = torch.tensor(result["attention_similarity"], dtype=torch.float64)
    assert got.shape == (4, 4)
    assert (got - ref).abs().max().item() < 1e-4
    assert torch.allclose(got.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-6)
    assert got[2, 3] > 0.9 > got[0, 1]  # the fixture's sharp and flat layers are told apart


def test_similarity_does_not_depend_on_the_query_block():
    g = torch.Generator().manual_seed(0)
    q = [torch.randn(2, 4, 21, 8, generator=g) for _ in range(3)]
    k = [torch.randn(2, 2, 21, 8, generator=g) for _ in range(3)]
    whole = quality.similarity_sums(q, k, 0.5, block_rows=21)
    for rows in (1, 5, 8):
        assert torch.allclose(quality.similarity_sums(q, k, 0.5, block_rows=rows), whole, atol=1e-9)


# ---------------------------------------------------------------- the recommendation: the advice's plan
@pytest.fixture
def forwards(monkeypatch):
    """The variants `quality.score` is run on, in order (one forward pass over the windows each)."""
    seen, real = [], quality.score

    def counting(model, windows, **kw):
        seen.append(model.plan.variant)
        return real(model, windows, **kw)

    monkeypatch.setattr(quality, "score", counting)
    return seen


def _default_run(ckpt, **kw):
    return quality.evaluate(str(ckpt), token_ids=ckpt / "ids.txt", seq_len=SEQ, progress=False, **kw)


def test_default_run_scores_the_advice_pick_with_the_advice_measurement(ckpt, forwards, capsys):
    r = _default_run(ckpt)
    adv = r["advice"]
    assert adv["pick"] is not None
    assert [(v["variant"], v["advice_role"]) for v in r["variants"]] == [("baseline", None), (adv["pick"], "pick")]
    measured = next(m for m in adv["measured"] if m["variant"] == adv["pick"])
    assert r["variants"][1]["perplexity"] == measured["perplexity"]  # the same number, not a second forward
    m = load_model(str(ckpt), adv["pick"], torch.float32, "cpu")  # and it is that plan's perplexity
    w = _windows(ckpt)
    assert abs(measured["perplexity"] - _ppl(m(w), w)) / measured["perplexity"] < 1e-4
    assert len(forwards) == 1 + len(adv["measured"])  # the baseline, then each measured plan once
    assert main(["inspect", "--model", str(ckpt), "--variant", adv["pick"]]) == 0  # a plan to paste
    capsys.readouterr()


def test_recommended_joins_named_variants_and_a_named_pick_is_scored_once(ckpt, forwards):
    pick = _default_run(ckpt)["advice"]["pick"]
    forwards.clear()
    r = _default_run(ckpt, variants=["cla:2", pick, "recommended"])
    assert [(v["variant"], v["advice_role"]) for v in r["variants"]] == [
        ("baseline", None), ("cla:2", None), (pick, "pick")]
    assert len(forwards) == 1 + len(r["advice"]["measured"]) + 1  # + cla:2; the pick is not scored twice


@pytest.mark.parametrize("variants", [["baseline"], ["baseline", "sa:2-3"], ["cla:2"]])
def test_named_variants_alone_do_not_run_the_advice(ckpt, forwards, variants):
    r = _default_run(ckpt, variants=variants)
    assert r["advice"] is None
    asked = [parse_variant(v, 4).variant for v in dict.fromkeys(["baseline"] + variants)]
    assert forwards == asked  # exactly the asked plans, each once
    assert all(v["advice_role"] is None for v in r["variants"])


def test_over_budget_the_least_costly_measured_plan_is_shown_and_labelled(ckpt, monkeypatch, tmp_path):
    """Every shared layer costs 10% (and a little more per layer): nothing fits the 5% budget."""
    from sabench.report.quality_report import format_table, write_report

    real = quality.score

    def costly(model, windows, **kw):
        ppl, sim = real(model, windows, **kw)
        shared = sum(not lp.computes_attention for lp in model.plan.layers)
        return (ppl * (1.10 + 0.01 * shared) if shared else ppl), sim

    monkeypatch.setattr(quality, "score", costly)
    r = _default_run(ckpt)
    adv = r["advice"]
    assert adv["pick"] is None and len(adv["measured"]) >= 2
    least = min(adv["measured"], key=lambda m: m["increase"])
    assert least["shared_layers"] == 1 and least["increase"] > 0.10
    row = r["variants"][1]
    assert len(r["variants"]) == 2 and row["variant"] == least["variant"]
    assert row["advice_role"] == "least costly measured, over budget"
    assert row["perplexity"] == least["perplexity"]
    table = format_table(r)
    assert "least costly measured, over the 5% budget" in table
    assert "advice pick" not in table
    assert f'the least costly, "{least["variant"]}" (shown beside the baseline)' in table
    report = write_report(r, tmp_path / "q").read_text()
    assert "least costly measured, over the 5% budget" in report and "least costly, over budget" in report


# ---------------------------------------------------------------- the command
def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_keys(ckpt, capsys):
    rc, out, _ = _run(capsys, "quality", "--model", ckpt, "--token-ids", ckpt / "ids.txt", "--seq-len", SEQ,
                      "--max-windows", 2, "--json", "--device", "cpu")
    d = json.loads(out)
    assert rc == 0
    assert {"model", "tokens", "windows", "seq_len", "variants", "attention_similarity", "advice",
            "weights"} <= set(d)
    assert _pick_fields(d) == ["advice.pick"]  # one recommendation, named once
    assert "recommended_sa" not in d and "similarity_threshold" not in d
    assert d["variants"][0]["variant"] == "baseline"  # default: baseline, then the advice's pick
    assert [(r["variant"], r["advice_role"]) for r in d["variants"][1:]] == [(d["advice"]["pick"], "pick")]
    for r in d["variants"]:
        assert set(r) == {"variant", "perplexity", "delta_vs_baseline", "kv_cache_bytes_per_token", "advice_role"}


def _pick_fields(x, path=""):
    """Every key path in a JSON value whose last key mentions a pick or a recommendation."""
    if isinstance(x, list):
        return [p for v in x for p in _pick_fields(v, path)]
    if not isinstance(x, dict):
        return []
    out = []
    for k, v in x.items():
        here = f"{path}.{k}" if path else k
        out += ([here] if "pick" in k or "recommend" in k else []) + _pick_fields(v, here)
    return sorted(set(out))


def test_out_writes_report_and_figures(ckpt, tmp_path, capsys):
    out = tmp_path / "q"
    rc, stdout, _ = _run(capsys, "quality", "--model", ckpt, "--token-ids", ckpt / "ids.txt", "--seq-len", SEQ,
                         "--variant", "cla:2", "--variant", "sa:2-3", "--out", out)
    assert rc == 0
    assert "| variant" in stdout and "cla:2" in stdout
    assert "advice" not in stdout  # named variants only: no advice was asked for
    report = (out / "report.md").read_text()
    assert "cla:2" in report and "sa:2-3" in report and "Attention similarity" in report
    assert "## Advice" not in report
    for png in ("attention_similarity.png", "perplexity_vs_kv_bytes.png"):
        assert (out / png).stat().st_size > 1000
        assert f"({png})" in report


def test_random_weights_are_said(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i % 512) for i in range(40)))
    rc, out, _ = _run(capsys, "quality", "--model", "tiny", "--token-ids", ids, "--seq-len", 32, "--json")
    assert rc == 0 and json.loads(out)["weights"] == "random"
    rc, out, _ = _run(capsys, "quality", "--model", "tiny", "--token-ids", ids, "--seq-len", 32,
                      "--out", tmp_path / "r")
    assert rc == 0 and "random weights" in out
    assert "Random weights" in (tmp_path / "r" / "report.md").read_text()


def test_text_uses_the_directory_tokenizer(ckpt, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path / "with-tok"
    d.mkdir()
    for f in ckpt.iterdir():
        if f.name != "ids.txt":
            (d / f.name).write_bytes(f.read_bytes())
    words = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(200)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(d)
    ids = [(7 * i) % 201 for i in range(3 * SEQ + 5)]
    text = tmp_path / "t.txt"
    text.write_text(" ".join("[UNK]" if i == 0 else f"w{i - 1}" for i in ids))
    rc, out, _ = _run(capsys, "quality", "--model", d, "--text", text, "--seq-len", SEQ, "--json")
    by_text = json.loads(out)
    assert rc == 0 and by_text["windows"] == 3 and by_text["input_tokens"] == len(ids)
    id_file = tmp_path / "ids.txt"
    id_file.write_text(" ".join(map(str, ids)))
    rc, out, _ = _run(capsys, "quality", "--model", d, "--token-ids", id_file, "--seq-len", SEQ, "--json")
    assert json.loads(out)["variants"] == by_text["variants"]


def _bad_inputs(ckpt, tmp):
    (tmp / "ids.txt").write_text("1 2 3 " * 40)
    (tmp / "big.txt").write_text("1 2 256 3 " * 30)
    (tmp / "words.txt").write_text("1 2 x3 4 " * 30)
    (tmp / "short.txt").write_text("1 2 3")
    (tmp / "a-file").write_text("")
    (tmp / "config-only").mkdir()
    (tmp / "config-only" / "config.json").write_text((ckpt / "config.json").read_text())
    ids = ["--token-ids", tmp / "ids.txt"]
    m = ["--model", ckpt]
    cases = [
        (m + ["--token-ids", tmp / "nope.txt"], "no such file"),
        (m + ["--token-ids", tmp / "big.txt"], "outside the model's vocabulary"),
        (m + ["--token-ids", tmp / "words.txt"], "not an integer"),
        (m + ["--token-ids", tmp / "short.txt"], "fewer than one window"),
        (m + ids + ["--variant", "bogus"], "unknown variant kind"),
        (m + ids + ["--variant", "sa:0-1"], "starts at layer 0"),
        (m + ["--text", tmp / "ids.txt"], "has none"),  # no tokenizer in the directory
        (["--model", "tiny", "--text", tmp / "ids.txt"], "preset"),
        (["--model", tmp / "config-only", "--text", tmp / "ids.txt"], "has none"),
        (m + ids + ["--seq-len", 513], "positions"),
        (m + ids + ["--seq-len", 1], "--seq-len"),
        (m + ids + ["--max-windows", 0], "--max-windows"),
        (m + ids + ["--similarity", 0.9], "unrecognized arguments: --similarity"),  # the threshold rule is gone
        (m + ids + ["--variant", "recommended", "--candidates", 0], "--candidates 0"),
        (m + ids + ["--dtype", "int8"], "unsupported dtype"),
        (m + ids + ["--device", "tpu"], "device"),
        (m + ids + ["--text", tmp / "ids.txt"], "not allowed with"),
        (m, "one of the arguments"),
        (["--model", tmp / "no-model"] + ids, "no such file or directory"),
        (m + ids + ["--out", tmp / "a-file"], "not a directory"),
    ]
    if not torch.cuda.is_available():
        cases.append((m + ids + ["--device", "cuda"], "CUDA is not available"))
    return cases


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(ckpt, tmp_path, capsys):
    for argv, fragment in _bad_inputs(ckpt, tmp_path):
        out = tmp_path / "out"
        has_out = "--out" in argv
        rc, stdout, err = _run(capsys, "quality", *argv, *([] if has_out else ["--out", out]))
        assert rc == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and fragment in err, (argv, err)
        assert stdout == ""
        assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_agrees_with_cpu_float32(ckpt, result):
    r = quality.evaluate(str(ckpt), variants=["baseline", "sa:2-3", "cla:2"], token_ids=ckpt / "ids.txt",
                         seq_len=SEQ, device="cuda", progress=False)
    assert r["dtype"] == "bfloat16" and r["device"].startswith("cuda")
    for got, ref in zip(r["variants"], result["variants"]):
        assert got["variant"] == ref["variant"]
        assert abs(got["perplexity"] - ref["perplexity"]) / ref["perplexity"] < 0.02
    sim = torch.tensor(r["attention_similarity"])
    assert (sim - torch.tensor(result["attention_similarity"])).abs().max().item() < 0.02


def test_pareto_frontier_and_strict_json():
    from sabench.report.quality_report import pareto, to_json

    rows = [{"variant": v, "perplexity": p, "delta_vs_baseline": p - 10.0, "kv_cache_bytes_per_token": kv}
            for v, p, kv in [("baseline", 10.0, 100), ("a", 12.0, 80), ("b", 13.0, 90), ("c", 11.0, 80),
                             ("d", 30.0, 50), ("e", float("inf"), 40)]]
    assert [r["variant"] for r in pareto(rows)] == ["d", "c", "baseline"]  # b: c beats it on both axes
    d = json.loads(to_json({"variants": rows}))
    assert d["variants"][5]["perplexity"] is None and d["variants"][0]["perplexity"] == 10.0


# ---------------------------------------------------------------- several batches of windows
def _hf_ppl(ckpt, windows):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        return _ppl(hf(windows).logits, windows)


@pytest.mark.parametrize("per_batch, batches", [(5, 1), (3, 2), (2, 3)])
def test_several_batches_match_transformers_and_one_batch(ckpt, result, monkeypatch, per_batch, batches):
    """The Q/K hooks keep filling the capture's lists after each batch is cleared (the lists were
    once rebound, and the second batch crashed)."""
    monkeypatch.setattr(quality, "windows_per_batch", lambda *a, **k: per_batch)
    r = quality.evaluate(str(ckpt), variants=["baseline", "sa:2-3"], token_ids=ckpt / "ids.txt", seq_len=SEQ,
                         progress=False, candidates=0)
    assert -(-r["windows"] // per_batch) == batches
    ref = _hf_ppl(ckpt, _windows(ckpt))
    assert abs(r["variants"][0]["perplexity"] - ref) / ref < 1e-5
    assert r["variants"][1]["perplexity"] == pytest.approx(_row(result, "sa:2-3")["perplexity"], rel=1e-5)
    got = torch.tensor(r["attention_similarity"])
    assert (got - torch.tensor(result["attention_similarity"])).abs().max().item() < 1e-5


def test_default_settings_with_several_batches_run_from_the_command_line(ckpt, tmp_path, monkeypatch, capsys):
    """No --seq-len (default: min(2048, positions) = 512 here), a budget that fits 2 windows a batch."""
    ids = torch.randint(0, 256, (3 * 512 + 7,), generator=torch.Generator().manual_seed(9))
    f = tmp_path / "long.txt"
    f.write_text(" ".join(map(str, ids.tolist())))
    per_window = quality.windows_per_batch(load_model(str(ckpt), "baseline", torch.float32, "cpu"), 512, True)
    monkeypatch.setattr(quality, "BATCH_BUDGET_BYTES", 2 * quality.BATCH_BUDGET_BYTES // per_window)
    rc, out, err = _run(capsys, "quality", "--model", ckpt, "--token-ids", f, "--json", "--candidates", 0)
    assert rc == 0, err
    d = json.loads(out)
    assert d["windows"] == 3 and d["seq_len"] == 512
    w = ids[: 3 * 512].view(3, 512)
    ref = _hf_ppl(ckpt, w)
    assert abs(d["variants"][0]["perplexity"] - ref) / ref < 1e-5


# ---------------------------------------------------------------- rolling windows (lm-eval-harness)
def _lm_eval_rolling(token_list, prefix_token, max_seq_len, context_len):
    """lm-eval-harness 0.4.13, lm_eval/utils.py: get_rolling_token_windows (MIT), as written there."""
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (token_list[window_end - max_seq_len - 1: window_end - 1],
               token_list[window_end - window_pred_len: window_end])
        predicted += window_pred_len


def _lm_eval_nll(hf, tokens, max_len, stride):
    """lm-eval's loglikelihood_rolling with transformers: windows made disjoint
    (make_disjoint_window), input = (context + continuation)[-(max_len + 1):][:-1], the last
    len(continuation) logits scored. Returns (sum of NLL, count)."""
    total, count = 0.0, 0
    for ctx, cont in _lm_eval_rolling(tokens[1:], tokens[0], max_len, max_len - stride + 1):
        ctx = ctx[: len(ctx) - (len(cont) - 1)]
        inp = (ctx + cont)[-(max_len + 1):][:-1]
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([inp])).logits[0].double(), dim=-1)
        scored = logp[-len(cont):]
        total -= scored.gather(-1, torch.tensor(cont)[:, None]).sum().item()
        count += len(cont)
    return total, count


@pytest.mark.parametrize("n, length, stride", [(23, 8, 3), (23, 8, 8), (24, 8, 1), (6, 8, 2), (17, 5, 4)])
def test_rolling_windows_are_lm_evals(n, length, stride):
    from sabench.windows import IGNORE, rolling

    tokens = list(range(100, 100 + n))
    w = rolling(torch.tensor(tokens), length, stride)
    pairs = list(_lm_eval_rolling(tokens[1:], tokens[0], length, length - stride + 1))
    assert w.count == len(pairs)
    scored = []
    for i, (ctx, cont) in enumerate(pairs):
        ctx = ctx[: len(ctx) - (len(cont) - 1)]
        assert w.inputs[i].tolist() == (ctx + cont)[-(length + 1):][:-1]
        t = w.targets[i]
        assert t[t != IGNORE].tolist() == cont and (t[: len(t) - len(cont)] == IGNORE).all()
        scored += cont
    assert scored == tokens[1:]  # every token after the first, exactly once
    assert w.predictions == n - 1


@pytest.mark.parametrize("stride", [SEQ // 4, SEQ])
def test_rolling_perplexity_equals_lm_eval_convention_with_transformers(ckpt, stride):
    from transformers import LlamaForCausalLM

    r = quality.evaluate(str(ckpt), variants=["baseline"], token_ids=ckpt / "ids.txt", seq_len=SEQ,
                         stride=stride, progress=False, candidates=0)
    hf = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tokens = [int(x) for x in (ckpt / "ids.txt").read_text().split()]
    nll, count = _lm_eval_nll(hf, tokens, SEQ, stride)
    ref = math.exp(nll / count)
    assert r["predictions"] == count == N_TOKENS - 1 and r["stride"] == stride
    assert abs(r["variants"][0]["perplexity"] - ref) / ref < 1e-5
    assert "lm-eval-harness rolling windows" in r["perplexity_convention"]


def test_rolling_convention_is_stated_in_the_report(ckpt, tmp_path, capsys):
    out = tmp_path / "roll"
    rc, stdout, _ = _run(capsys, "quality", "--model", ckpt, "--token-ids", ckpt / "ids.txt", "--seq-len", SEQ,
                         "--stride", 16, "--candidates", 0, "--out", out)
    assert rc == 0 and "rolling (stride 16)" in stdout
    report = (out / "report.md").read_text()
    assert "lm-eval-harness rolling windows" in report and "stride 16" in report


def test_one_window_is_said_in_the_singular(ckpt, capsys):
    rc, out, _ = _run(capsys, "quality", "--model", ckpt, "--token-ids", ckpt / "ids.txt", "--seq-len", SEQ,
                      "--max-windows", 1, "--candidates", 0)
    assert rc == 0 and "1 non-overlapping window of" in out and "1 windows" not in out


# ---------------------------------------------------------------- broken checkpoints
def test_non_finite_logits_stop_with_exit_2(ckpt, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "nan"
    d.mkdir()
    (d / "config.json").write_text((ckpt / "config.json").read_text())
    for f in ckpt.glob("*.safetensors"):
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(f).items()}, d / f.name,
                  metadata={"format": "pt"})
    rc, out, err = _run(capsys, "quality", "--model", d, "--token-ids", ckpt / "ids.txt", "--seq-len", SEQ,
                        "--out", tmp_path / "o")
    assert rc == 2 and out == "" and not (tmp_path / "o").exists()
    assert len(err.strip().splitlines()) == 1 and "not finite" in err and "advice" not in err


def test_load_model_picks_the_device(ckpt):
    m = load_model(str(ckpt), "baseline", torch.float32)
    assert m.lm_weight.device.type == ("cuda" if torch.cuda.is_available() else "cpu")

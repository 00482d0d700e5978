"""SA span advice: nested candidate plans ranked by predicted cost per unit of saving, measured,
a Pareto set, and the pick within a budget; on a model built with one exactly shareable span."""
import json
import random

import pytest
import torch

from sabench import advice, quality
from sabench.cli import main
from sabench.plan import parse_variant
from sabench.presets import resolve_config
from tests.helpers import hf_model, small_config

SEQ = 32
SPAN = (3, 4)  # layers 3 and 4 attend exactly as layer 2 does


@pytest.fixture(scope="module")
def exact_span(tmp_path_factory):
    """A 6-layer random Llama with sharp, layer-specific attention (Q/K scaled up), where layers 3
    and 4 have layer 2's Q/K projections and layers 2 and 3 add nothing to the residual stream
    (o_proj and down_proj zero): layers 2, 3 and 4 read the same hidden states with the same Q/K,
    so their attention probabilities are equal and `sa:3-4` is exact. Layer 4 still writes its
    output, so its attention matters."""
    cfg = small_config("mha", layers=6)
    hf = hf_model(cfg, seed=11)
    src = hf.model.layers[SPAN[0] - 1]
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
        for i in range(SPAN[0], SPAN[1] + 1):
            hf.model.layers[i].self_attn.q_proj.weight.copy_(src.self_attn.q_proj.weight)
            hf.model.layers[i].self_attn.k_proj.weight.copy_(src.self_attn.k_proj.weight)
        for i in range(SPAN[0] - 1, SPAN[1]):
            hf.model.layers[i].self_attn.o_proj.weight.zero_()
            hf.model.layers[i].mlp.down_proj.weight.zero_()
    d = tmp_path_factory.mktemp("exact")
    hf.save_pretrained(d)
    # text the model itself writes (sampled at temperature 0.5): the baseline predicts it well, so
    # sharing a layer whose attention matters raises perplexity, as it does on a trained model
    torch.manual_seed(2)
    start = torch.randint(0, cfg.vocab_size, (6, 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ids = hf.generate(start, max_new_tokens=SEQ - 1, min_new_tokens=SEQ - 1, do_sample=True,
                          temperature=0.5, top_k=0, pad_token_id=0)
    (d / "ids.txt").write_text(" ".join(map(str, ids.flatten().tolist())))
    return d


@pytest.fixture(scope="module")
def exact_result(exact_span):
    return quality.evaluate(str(exact_span), token_ids=exact_span / "ids.txt", seq_len=SEQ, progress=False)


def _measured(result, variant):
    return next(m for m in result["advice"]["measured"] if m["variant"] == variant)


def test_advice_finds_the_exact_span_and_measures_no_increase(exact_span, exact_result):
    sim = exact_result["attention_similarity"]
    assert sim[2][3] == pytest.approx(1.0, abs=1e-5) and sim[2][4] == pytest.approx(1.0, abs=1e-5)
    others = [sim[a - 1][a] for a in range(1, 6) if a not in (3, 4)]
    assert max(others) < 0.99  # the span is the only exact one
    measured = [m["variant"] for m in exact_result["advice"]["measured"]]
    assert measured[:2] == ["sa:3-3", "sa:3-4"]  # the cheapest moves come first, and grow one span
    m = _measured(exact_result, "sa:3-4")
    assert abs(m["increase"]) < 1e-6 and m["predicted_cost"] == pytest.approx(0.0, abs=1e-5)
    assert m["pareto"] and m["shared_layers"] == 2
    # measuring is real: the plans that share a layer whose attention matters change perplexity
    assert max(x["increase"] for x in exact_result["advice"]["measured"]) > 1e-4  # 100x the bound above
    # and the measured figure is the variant's perplexity, as scored on its own
    r = quality.evaluate(str(exact_span), variants=["sa:3-4"], token_ids=exact_span / "ids.txt", seq_len=SEQ,
                         progress=False, candidates=0)
    assert r["variants"][1]["perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)


def test_budget_prints_the_plan_to_paste(exact_span, capsys):
    rc = main(["quality", "--model", str(exact_span), "--token-ids", str(exact_span / "ids.txt"), "--seq-len",
               str(SEQ), "--budget", "0.0001%", "--candidates", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'advice (budget 0.0001%): "sa:3-4"' in out
    parse_variant("sa:3-4", 6)


def test_advice_json(exact_span, capsys):
    rc = main(["quality", "--model", str(exact_span), "--token-ids", str(exact_span / "ids.txt"), "--seq-len",
               str(SEQ), "--json", "--candidates", "3", "--budget", "1e9"])
    d = json.loads(capsys.readouterr().out)["advice"]
    assert rc == 0 and len(d["measured"]) == 3 and d["budget"] == pytest.approx(1e7)
    assert d["pick"] == max(d["measured"], key=lambda m: m["saving"])["variant"]  # all within a huge budget


def test_the_default_variants_score_the_pick(exact_span, exact_result):
    """With the 5% budget the pick is a measured plan; the variant table holds it beside the baseline,
    with the perplexity the advice measured."""
    pick = exact_result["advice"]["pick"]
    assert pick is not None
    row = exact_result["variants"][1]
    assert (row["variant"], row["advice_role"]) == (pick, advice.PICK) and len(exact_result["variants"]) == 2
    assert row["perplexity"] == _measured(exact_result, pick)["perplexity"]


# ---------------------------------------------------------------- candidates, without a model
def _sim(n, pairs, low=0.5):
    m = [[1.0 if a == b else low for b in range(n)] for a in range(n)]
    for (a, b), v in pairs.items():
        m[a][b] = m[b][a] = v
    return m


def _plans(sim, cfg_name="llama-3.2-1b", seq_len=512):
    cfg = resolve_config(cfg_name)
    n = len(sim)
    from dataclasses import replace

    cfg = replace(cfg, num_layers=n)
    sav = advice.Savings(cfg, seq_len, "bfloat16")
    return advice.greedy_plans(sim, lambda v: sav.of(v)["saving"]), sav


def test_candidates_grow_by_the_cheapest_move_and_are_nested_and_valid():
    sim = _sim(8, {(4, 5): 0.98, (4, 6): 0.97, (4, 7): 0.6, (0, 1): 0.9, (2, 3): 0.8})
    plans, sav = _plans(sim)
    assert [p["variant"] for p in plans[:3]] == ["sa:5-5", "sa:5-6", "sa:1-1,5-6"]
    prev = set()
    for p in plans:
        plan = parse_variant(p["variant"], 8)
        shared = {lp.index for lp in plan.layers if not lp.computes_attention}
        assert prev < shared and len(shared) == len(prev) + 1  # one layer more each time
        prev = shared
        assert p["saving"] == pytest.approx(sav.of(p["variant"])["saving"])
    costs = [p["predicted_cost"] for p in plans]
    assert costs == sorted(costs)
    assert costs[1] == pytest.approx(0.02 + 0.03)  # (1 - 0.98) + (1 - 0.97): layer 6 still uses layer 4


def test_candidates_of_random_matrices_are_valid():
    rng = random.Random(1)
    for _ in range(30):
        n = rng.randint(2, 9)
        sim = [[1.0 if a == b else rng.uniform(0.3, 1.0) for b in range(n)] for a in range(n)]
        plans, _ = _plans(sim)
        for p in plans:
            plan = parse_variant(p["variant"], n)
            for lp in plan.layers:
                if not lp.computes_attention:
                    a = next(a for a, b in p["spans"] if a <= lp.index <= b)
                    assert lp.attn_source == a - 1
        assert plans  # one layer can always share


def test_savings_are_the_accounting_fractions():
    from sabench import accounting

    cfg = resolve_config("llama-3.2-1b")
    sav = advice.Savings(cfg, 1024, "bfloat16").of("sa:3-5")
    dec = 1 - accounting.decode_step_bytes(cfg, "sa:3-5", 1, 1024, "bfloat16") / accounting.decode_step_bytes(
        cfg, "baseline", 1, 1024, "bfloat16")
    fl = 1 - accounting.prefill_flops(cfg, "sa:3-5", 1, 1024).total / accounting.prefill_flops(
        cfg, "baseline", 1, 1024).total
    assert sav["decode_bytes"] == pytest.approx(dec) and sav["prefill_flops"] == pytest.approx(fl)
    assert sav["saving"] == pytest.approx((dec + fl) / 2) and sav["kv_bytes"] == pytest.approx(3 / 32)


@pytest.mark.parametrize("count, limit, allowance", [(20, 7, 6), (20, -1, 6), (20, 19, 6), (5, 2, 8), (31, 12, 5)])
def test_bisection_finds_the_largest_plan_within_the_budget(count, limit, allowance):
    calls = []

    def within(i):
        calls.append(i)
        return i <= limit

    idx = advice.to_measure(count, within, allowance)
    assert len(idx) <= max(allowance, 1) and len(set(calls)) == len(calls) == len(idx)
    assert (limit in idx) if limit >= 0 else (0 in idx)
    if limit + 1 < count:
        assert limit + 1 in idx  # the first plan beyond the budget was measured too: the pick is the largest


def test_pick_is_the_largest_saving_within_budget_and_pareto():
    sim = _sim(6, {(0, 1): 0.95, (0, 2): 0.9, (2, 3): 0.7})
    cfg = resolve_config("tiny")
    from dataclasses import replace

    cfg = replace(cfg, num_layers=6)
    increases = {}

    def measure(v):
        increases[v] = 0.01 * len(increases) ** 2  # each larger plan costs more
        return 10.0 * (1 + increases[v])

    adv = advice.advise(cfg, sim, measure, 10.0, seq_len=64, dtype="float32", budget=0.05, candidates=8)
    ok = [m for m in adv["measured"] if m["increase"] <= 0.05 + 1e-12]
    assert adv["pick"] == max(ok, key=lambda m: m["saving"])["variant"]
    front = [m["variant"] for m in adv["measured"] if m["pareto"]]
    assert front == [m["variant"] for m in adv["measured"]]  # increasing saving and increase: all Pareto
    assert advice.pick_line(adv).startswith(f'advice (budget 5%): "{adv["pick"]}"')


def _advice_over_budget(increases, budget=0.05):
    """advise() on a 6-layer model whose nested plans measure `increases`, in order."""
    from dataclasses import replace

    cfg = replace(resolve_config("tiny"), num_layers=6)
    sim = _sim(6, {(0, 1): 0.95, (0, 2): 0.9, (2, 3): 0.7, (3, 4): 0.8})
    it = iter(increases)
    return advice.advise(cfg, sim, lambda v: 10.0 * (1 + next(it)), 10.0, seq_len=64, dtype="float32",
                         budget=budget, candidates=8)


def test_over_budget_the_least_costly_measured_plan_is_shown_and_labelled():
    adv = _advice_over_budget([0.09, 0.07, 0.12, 0.2, 0.3])  # the second plan costs least, none within 5%
    assert adv["pick"] is None
    least = adv["measured"][1]
    assert least["increase"] == pytest.approx(0.07)
    assert advice.least_costly(adv) is least
    assert advice.shown_plan(adv) == (least["variant"], advice.OVER_BUDGET)
    line = advice.pick_line(adv)
    assert "no measured plan stays within the budget" in line and f'"{least["variant"]}"' in line
    assert "+7.00%" in line and "raise --budget" in line


def test_within_budget_the_pick_is_shown():
    adv = _advice_over_budget([0.01, 0.04, 0.06, 0.2, 0.3])
    assert adv["pick"] == adv["measured"][1]["variant"]
    assert advice.shown_plan(adv) == (adv["pick"], advice.PICK)


def test_no_advice_or_nothing_measured_shows_nothing():
    assert advice.shown_plan(None) is None
    empty = {"budget": 0.05, "candidates": 0, "measured": [], "pick": None}
    assert advice.shown_plan(empty) is None
    assert advice.pick_line(empty) == "advice: none (the model has no layer that can share)"


def test_pareto_drops_dominated_plans():
    M = advice.Measured
    rows = [M("a", 1, 0, 0.1, 0, 0, 0, 10, 0.01), M("b", 2, 0, 0.2, 0, 0, 0, 10, 0.005),
            M("c", 3, 0, 0.3, 0, 0, 0, 10, 0.2), M("d", 2, 0, 0.2, 0, 0, 0, 10, float("nan"))]
    assert [r.variant for r in advice.pareto(rows)] == ["b", "c"]


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.5%", 0.005), ("5", 0.05), ("0%", 0.0)])
def test_budget_parsing(text, value):
    assert advice.parse_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1%", "five", "nan%", "inf"])
def test_bad_budgets_are_one_line_exit_2(exact_span, capsys, text):
    rc = main(["quality", "--model", str(exact_span), "--token-ids", str(exact_span / "ids.txt"),
               "--budget", text])
    err = capsys.readouterr().err
    assert rc == 2 and "--budget" in err and len(err.strip().splitlines()) == 1


def test_a_span_can_move_its_source_earlier():
    sim = _sim(4, {(2, 3): 0.995, (1, 2): 0.99, (1, 3): 0.99, (0, 1): 0.5})
    plans, _ = _plans(sim)
    assert [p["variant"] for p in plans] == ["sa:3-3", "sa:2-3", "sa:1-3"]  # 2-3 takes layer 1 as its source
    assert plans[1]["predicted_cost"] == pytest.approx(0.02)  # both layers now measured against layer 1
    assert advice.predicted_cost(sim, [(2, 3)]) == pytest.approx(0.02)

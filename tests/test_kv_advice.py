"""K/V-sharing advice: the nested maps of each strategy on a hand-made similarity, the pick within
the budget (or the smallest increase), and `quality --kv-advice` end to end on the CPU."""
import json

import pytest
import torch
import torch.nn.functional as F

from sabench import kv_advice
from sabench.cli import main
from sabench.model import load_model
from sabench.plan import parse_variant
from tests.helpers import small_config

# 4 layers: 0~1 and 2~3 alike, 0 and 3 most unlike, the rest in between
SIM = [[1.0, 0.9, 0.5, 0.1],
       [0.9, 1.0, 0.5, 0.5],
       [0.5, 0.5, 1.0, 0.8],
       [0.1, 0.5, 0.8, 1.0]]


def test_similar_pairs_grow_into_cla_and_dissimilar_pairs_into_non_adjacent_maps():
    similar = kv_advice.greedy_maps(SIM, "similar")
    # 1 takes 0's K/V (0.9), then 3 takes 2's (0.8); then every owner is read by someone: no chains
    assert [p["variant"] for p in similar] == ["kv:1<-0", "cla:2"]
    assert [p["predicted_cost"] for p in similar] == [pytest.approx(0.1), pytest.approx(0.3)]
    dissimilar = kv_advice.greedy_maps(SIM, "dissimilar")
    # 3 takes 0's (0.1); then 2 takes 1's or 0's (0.5 both): the nearer target wins the tie
    assert [p["variant"] for p in dissimilar] == ["kv:3<-0", "kv:2<-1,3<-0"]
    for p in similar + dissimilar:
        assert [lp.kv_source for lp in parse_variant(p["variant"], 4).layers] == p["sources"]


def _advice(increases, budget=0.05, candidates=8):
    cfg = small_config("gqa", layers=4)
    return kv_advice.advise_kv(cfg, SIM, lambda v: 10.0 * (1 + increases[v]), 10.0, seq_len=32, dtype="float32",
                               budget=budget, candidates=candidates)


def test_the_measurements_decide_which_strategy_costs_less():
    adv = _advice({"kv:1<-0": 0.04, "cla:2": 0.09, "kv:3<-0": 0.01, "kv:2<-1,3<-0": 0.03})
    assert adv["head_to_head"] == [{"shared_layers": 1, "similar": pytest.approx(0.04), "dissimilar": pytest.approx(0.01)},
                                   {"shared_layers": 2, "similar": pytest.approx(0.09), "dissimilar": pytest.approx(0.03)}]
    assert adv["cheaper_strategy"] == "dissimilar"
    assert (adv["pick"], adv["pick_strategy"]) == ("kv:2<-1,3<-0", "dissimilar")
    pareto = {(m["strategy"], m["variant"]) for m in adv["measured"] if m["pareto"]}
    assert pareto == {("dissimilar", "kv:3<-0"), ("dissimilar", "kv:2<-1,3<-0")}
    assert "kv:2<-1,3<-0" in kv_advice.pick_line(adv) and "cheaper here: dissimilar" in kv_advice.pick_line(adv)


def test_no_map_within_the_budget_reports_the_smallest_increase():
    adv = _advice({"kv:1<-0": 0.2, "cla:2": 0.3, "kv:3<-0": 0.15, "kv:2<-1,3<-0": 0.4}, budget=0.1)
    assert adv["pick"] is None
    assert adv["smallest_increase"] == {"variant": "kv:3<-0", "strategy": "dissimilar",
                                        "increase": pytest.approx(0.15)}
    assert "no measured map stays within the budget (smallest increase +15.00%" in kv_advice.pick_line(adv)


def test_similarity_is_the_mean_cosine_of_the_cached_k_and_v():
    m = load_model(small_config("gqa", layers=3), "baseline", torch.float32, "cpu", seed=1)
    ids = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(2))
    sim = kv_advice.kv_similarity(m, ids)
    cache = m.new_cache(2, 10)  # the first SIMILARITY_WINDOWS windows
    m.prefill(ids[:2], cache)
    want = 0.5 * (F.cosine_similarity(cache.k[0], cache.k[2], dim=-1).mean()
                  + F.cosine_similarity(cache.v[0], cache.v[2], dim=-1).mean())
    assert sim[0][2] == pytest.approx(want.item(), abs=1e-6) and sim[2][0] == sim[0][2] and sim[1][1] == 1.0


def test_quality_kv_advice_end_to_end(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str((7 * i) % 512) for i in range(100)))
    rc = main(["quality", "--model", "tiny", "--token-ids", str(ids), "--seq-len", "32", "--max-windows", "2",
               "--kv-advice", "--candidates", "4", "--device", "cpu", "--json"])
    assert rc == 0
    adv = json.loads(capsys.readouterr().out)["kv_advice"]
    assert {m["strategy"] for m in adv["measured"]} == {"similar", "dissimilar"}
    assert len(adv["similarity"]) == 4 and adv["head_to_head"]
    within = [m for m in adv["measured"] if m["increase"] <= adv["budget"]]
    if within:
        assert adv["pick"] == max(within, key=lambda m: m["saving"])["variant"]
    else:
        assert adv["pick"] is None and adv["smallest_increase"]["increase"] == min(m["increase"] for m in adv["measured"])

"""Variant strings -> plans: the semantics each paper states, and one-line errors for the rest."""
import pytest

from sabench.plan import PlanError, cla_groups, parse_variant, plan_from_sources


def test_baseline_every_layer_owns_everything():
    p = parse_variant("baseline", 4)
    assert p.is_baseline and all(lp.has_q and lp.has_k and lp.has_v for lp in p.layers)


def test_cla_remainder_group_goes_first_as_in_the_paper():
    # CLA paper, 10 layers with CLA3: 0 | 1,2,3 | 4,5,6 | 7,8,9
    assert cla_groups(10, 3) == [[0], [1, 2, 3], [4, 5, 6], [7, 8, 9]]
    p = parse_variant("cla:3", 10)
    assert [lp.kv_source for lp in p.layers] == [0, 1, 1, 1, 4, 4, 4, 7, 7, 7]
    owners = [lp.index for lp in p.layers if lp.owns_kv]
    assert owners == [0, 1, 4, 7]
    for lp in p.layers:
        assert lp.has_q and lp.computes_attention
        assert lp.has_k == lp.has_v == lp.owns_kv


def test_sa_span_reuses_the_layer_before_it():
    p = parse_variant("sa:23-30", 32)
    for lp in p.layers:
        if 23 <= lp.index <= 30:
            assert lp.attn_source == 22 and not lp.has_q and not lp.has_k and lp.has_v
        else:
            assert lp.computes_attention and lp.has_k
    assert p.sources_of_attention() == {22}


def test_several_spans_and_whitespace_and_case():
    p = parse_variant(" SA:15-18, 23-30 ", 32)
    assert p.variant == "sa:15-18,23-30"
    assert p.sources_of_attention() == {14, 22}


def test_cla_plus_sa_consistent_combination():
    p = parse_variant("cla:2+sa:2-3", 4)
    l2, l3 = p.layers[2], p.layers[3]
    assert l2.owns_kv and l2.has_v and not l2.has_k and l2.attn_source == 1
    assert l3.kv_source == 2 and not l3.has_v and l3.attn_source == 1


def test_cla_one_is_baseline():
    p = parse_variant("cla:1", 6)
    assert p.is_baseline and p == parse_variant("baseline", 6) and p.variant == "baseline"


BAD_VARIANTS = [
    ("foo:2", "unknown variant kind 'foo:2'"),
    ("cla:0", "factor must be >= 1"),
    ("cla:-1", "factor must be >= 1"),
    ("cla:x", "bad CLA part 'cla:x'"),
    ("cla:9", "only 8 layers"),
    ("sa:0-3", "starts at layer 0"),
    ("sa:3-8", "outside the model's layers 0..7"),
    ("sa:5-3", "reversed SA span '5-3'"),
    ("sa:2-5,4-6", "overlapping SA spans"),
    ("sa:2-3,4-5", "write one span 2-5"),
    ("sa:", "empty SA part"),
    ("sa:2", "bad SA span '2'"),
    ("", "empty variant"),
    ("cla:2+cla:4", "names 'cla' twice"),
    ("baseline+cla:2", "combines 'baseline'"),
    ("cla:2+sa:2-2", "align the SA span with the CLA groups"),
    ("sa:2-3/", "bad SA strategy '/'"),
    ("sa:2-3/fused", "bad SA strategy '/fused'"),
    ("sa:2-3/recompute/probs", "bad SA strategy"),
    ("cla:2/recompute", "belongs to the sa part"),
    ("sa:/recompute", "empty SA part"),
]
# K/V maps: the offending layer is named
BAD_KV_MAPS = [
    ("kv:", "empty KV part"),
    ("kv:3", "bad KV entry '3'"),
    ("kv:3<-", "bad KV entry '3<-'"),
    ("kv:a<-0", "bad KV entry 'a<-0'"),
    ("kv:5-3<-0", "reversed KV range '5-3<-0'"),
    ("kv:3<-5", "layer 3 takes its K/V from layer 5, not an earlier layer"),
    ("kv:3<-3", "layer 3 takes its K/V from layer 3, not an earlier layer"),
    ("kv:9<-0", "names layer 9, outside the model's layers 0..7"),
    ("kv:3<-9", "names layer 9"),
    ("kv:2-4<-1,4<-0", "gives layer 4 two K/V sources (1 and 0)"),
    ("kv:2<-1,3<-2", "layer 3 takes its K/V from layer 2, which takes its own from layer 1 (no chains)"),
    ("kv:2<-1,3<-2", "point layer 3 at layer 1"),
    ("cla:2+kv:3<-0", "both cla: and kv:"),
    ("kv:1<-0+kv:3<-2", "names 'kv' twice"),
    ("kv:3<-0/recompute", "belongs to the sa part"),
    ("kv:3<-1+sa:1-1", "layer 3 computes attention over the K/V of layer 1, an attention-sharing layer"),
    ("native", "only a model config gives"),
    ("native+sa:2-3", "combines 'native'"),
]


@pytest.mark.parametrize("text, fragment", BAD_VARIANTS + BAD_KV_MAPS)
def test_bad_variants_name_the_problem_and_the_text_in_one_line(text, fragment):
    with pytest.raises(PlanError) as e:
        parse_variant(text, 8)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg
    assert repr(text) in msg or not text  # the text as given (an empty one is named "empty variant")


def test_sa_strategy_suffix_bare_and_probs_are_one_plan():
    bare, probs, rec = (parse_variant(v, 8) for v in ("sa:2-3", "sa:2-3/probs", "SA:2-3 / Recompute"))
    assert bare == probs and bare.variant == "sa:2-3" and bare.sa_strategy == "probs"
    assert rec.variant == "sa:2-3/recompute" and rec.sa_strategy == "recompute"
    assert rec.layers == bare.layers
    both = parse_variant("cla:2+sa:2-3,6-7/recompute", 8)
    assert both.variant == "cla:2+sa:2-3,6-7/recompute" and both.sa_strategy == "recompute"
    assert parse_variant("cla:2+sa:2-3/probs", 8).variant == "cla:2+sa:2-3"
    assert parse_variant(rec.variant, 8) == rec  # the canonical string parses back to the same plan


# ---------------------------------------------------------------- per-layer K/V source maps
def _sources(text, n):
    return [lp.kv_source for lp in parse_variant(text, n).layers]


def test_kv_map_gemma_style_tail_and_non_adjacent_targets():
    # a Gemma-3n-style tail: layers 20..34 attend over layer 19's K/V
    assert _sources("kv:20-34<-19", 35) == list(range(20)) + [19] * 15
    # uneven, non-adjacent groups in any order; whitespace and case do not matter
    p = parse_variant(" KV: 5-7<-4 , 2<-0, 3<-1 ", 8)
    assert [lp.kv_source for lp in p.layers] == [0, 1, 0, 1, 4, 4, 4, 4]
    assert p.variant == "kv:2<-0,3<-1,5-7<-4"
    assert [lp.index for lp in p.layers if lp.owns_kv] == [0, 1, 4]
    for lp in p.layers:
        assert lp.has_q and lp.has_k == lp.has_v == lp.owns_kv


def test_cla_is_shorthand_for_its_kv_map_one_plan_one_name():
    assert parse_variant("kv:1<-0,3<-2", 4) == parse_variant("cla:2", 4)
    # CLA paper, 10 layers with CLA3: 0 | 1,2,3 | 4,5,6 | 7,8,9
    assert parse_variant("kv:2-3<-1,5-6<-4,8-9<-7", 10) == parse_variant("cla:3", 10)
    assert parse_variant("kv:1<-0,3<-2+sa:2-3", 4).variant == "cla:2+sa:2-3"
    assert parse_variant("kv:1-3<-0", 4) == parse_variant("cla:4", 4)
    # the same groups with the remainder last are not cla:3: they keep their map as the name
    assert parse_variant("kv:1-2<-0,4-5<-3,7-8<-6", 10).variant == "kv:1-2<-0,4-5<-3,7-8<-6"
    assert plan_from_sources([0, 0, 2, 2]) == parse_variant("cla:2", 4)
    assert plan_from_sources([0, 1, 2, 2, 2]).variant == "kv:3-4<-2"


ROUND_TRIP = ["baseline", "cla:2", "cla:3", "kv:20-34<-19", "kv:1<-0,3<-2", "kv:2<-0,3<-1,5-7<-4", "kv:7<-0",
              "kv:3<-1+sa:2-3", "kv:2<-0,3<-1+sa:3-3/recompute", "sa:5-6,2-3", "cla:2+sa:2-3,6-7/recompute",
              "kv:5-7<-4+sa:2-3/probs", "KV:9<-3,20-34<-19"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_every_form_round_trips_through_its_canonical_name(text):
    n = 35 if "19" in text else 8
    p = parse_variant(text, n)
    again = parse_variant(p.variant, n)
    assert again == p and again.variant == p.variant


def test_native_is_the_layout_the_model_declares():
    assert parse_variant("native", 8, native="kv:5-7<-4") == parse_variant("kv:5-7<-4", 8)
    assert parse_variant("native", 8, native="baseline").is_baseline

"""Variant strings -> plans: the semantics each paper states, and one-line errors for the rest."""
import pytest

from sabench.plan import PlanError, cla_groups, parse_variant


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
    assert parse_variant("cla:1", 6).is_baseline


@pytest.mark.parametrize("text, fragment", [
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
])
def test_bad_variants_name_the_problem_and_the_text(text, fragment):
    with pytest.raises(PlanError) as e:
        parse_variant(text, 8)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg
    if text:
        assert repr(text) in msg or text.strip().lower() in msg


def test_sa_strategy_suffix_bare_and_probs_are_one_plan():
    bare, probs, rec = (parse_variant(v, 8) for v in ("sa:2-3", "sa:2-3/probs", "SA:2-3 / Recompute"))
    assert bare == probs and bare.variant == "sa:2-3" and bare.sa_strategy == "probs"
    assert rec.variant == "sa:2-3/recompute" and rec.sa_strategy == "recompute"
    assert rec.layers == bare.layers
    both = parse_variant("cla:2+sa:2-3,6-7/recompute", 8)
    assert both.variant == "cla:2+sa:2-3,6-7/recompute" and both.sa_strategy == "recompute"
    assert parse_variant("cla:2+sa:2-3/probs", 8).variant == "cla:2+sa:2-3"
    assert parse_variant(rec.variant, 8) == rec  # the canonical string parses back to the same plan

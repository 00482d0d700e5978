"""Per-rank and total figures of tensor-parallel points, pinned by closed forms computed here.

The Llama-3.1-70B TP-8 suite is the reference: its inspect figures are derived below from the
architecture's numbers alone (80 layers, hidden 8192, 64 heads and 8 KV heads of 128, MLP 28672,
vocabulary 128256, untied embeddings), not from sabench's own functions.
"""
import json

import pytest

from sabench import accounting
from sabench.cli import main
from sabench.suite import SuiteError, find_suite, load_suite, parse_suite

L, HID, H, HKV, D, I, V = 80, 8192, 64, 8, 128, 28672, 128256
E = 2  # bfloat16
H100 = {"peak_flops_per_s": 989e12, "peak_bandwidth_bytes_per_s": 3.35e12}
NVLINK = 450e9


def _rank_params(tp):
    layer = 2 * HID + 3 * HID * (I // tp) + 2 * HID * (H // tp) * D + 2 * HID * (HKV // tp) * D
    return 2 * V * HID + HID + L * layer


def test_llama_3_1_70b_params():
    assert _rank_params(1) == 70_553_706_496
    assert accounting.params("llama-3.1-70b") == 70_553_706_496


def _inspect_json(capsys, *extra, suite="llama-3.1-70b-tp8"):
    rc = main(["inspect", "--suite", suite, "--gpu", "H100 SXM", "--json", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = json.loads(out)
    return {r["variant"]: r for r in (rows if isinstance(rows, list) else [rows])}


def test_70b_tp8_suite_validates():
    s = load_suite(find_suite("llama-3.1-70b-tp8"))
    assert s.tensor_parallel == 8 and s.link_bandwidth is None
    assert s.model_config.num_layers == L and s.model_config.rope_scaling["factor"] == 8.0
    assert s.to_dict()["parallel"] == {"tensor": 8, "link_bandwidth": None}


@pytest.mark.parametrize("b, t", [(1, 2048), (8, 8192)])
def test_70b_tp8_inspect_per_rank_figures(capsys, b, t):
    rows = _inspect_json(capsys, "--batch", str(b), "--seq-len", str(t))
    tp = rows["baseline"]["tensor_parallel"]
    rank, total = tp["per_rank"], tp["total"]
    assert tp["tensor"] == 8 and tp["link_bandwidth_bytes_per_s"] == NVLINK
    assert tp["link_bandwidth_source"].startswith("datasheet")
    # weights: 1/8 of every layer's matrices, embeddings and lm_head whole on every rank
    assert rank["params"] == _rank_params(8) == 10_659_045_376
    assert rank["weight_bytes"] == 21_318_090_752 and total["weight_bytes"] == 8 * 21_318_090_752
    # cache: one KV head per rank, K and V in every layer
    kv_token = 2 * L * 1 * D * E
    assert rank["kv_cache_bytes_per_token"] == kv_token == 40_960
    assert rank["kv_cache_bytes"] == b * t * kv_token and total["kv_cache_bytes"] == 8 * b * t * kv_token
    assert total["kv_cache_bytes"] == rows["baseline"]["kv_cache_bytes"]  # the cache is split, not copied
    # all-reduce: 2 per layer of B x tokens x hidden, a ring sends 2(N-1)/N of it per rank
    assert rank["link_bytes"]["prefill"] == 2 * L * b * t * HID * E * 14 // 8
    assert rank["link_bytes"]["decode_step"] == 2 * L * b * HID * E * 14 // 8
    # decode step: weights (the embedding table only as the B gathered rows), K and V over T+1
    # positions read, the new token's K and V written
    dec_bytes = (_rank_params(8) - V * HID + b * HID) * E + 2 * L * b * (t + 1) * D * E + 2 * L * b * D * E
    assert rank["bytes_moved"]["decode_step"] == dec_bytes
    dec_flops = (2 * b * HID * (2 * (H // 8) * D + 2 * (HKV // 8) * D) * L + 2 * b * 3 * HID * (I // 8) * L
                 + 2 * (H // 8) * b * (t + 1) * D * 2 * L + 2 * b * HID * V)
    assert rank["flops"]["decode_step"] == dec_flops
    floor = max(dec_flops / H100["peak_flops_per_s"], dec_bytes / H100["peak_bandwidth_bytes_per_s"]) \
        + rank["link_bytes"]["decode_step"] / NVLINK
    assert tp["floors_ms"]["decode_step"]["floor_ms"] == pytest.approx(floor * 1e3, rel=1e-12)
    pre_flops = (2 * b * t * HID * (2 * (H // 8) * D + 2 * (HKV // 8) * D) * L + 2 * b * t * 3 * HID * (I // 8) * L
                 + 2 * (H // 8) * b * (t * (t + 1) // 2) * D * 2 * L + 2 * b * HID * V)
    assert rank["flops"]["prefill"] == pre_flops
    pre = tp["floors_ms"]["prefill"]
    assert pre["compute_ms"] == pytest.approx(pre_flops / H100["peak_flops_per_s"] * 1e3, rel=1e-12)
    assert pre["link_ms"] == pytest.approx(2 * L * b * t * HID * E * 14 / 8 / NVLINK * 1e3, rel=1e-12)


def test_70b_tp8_sharing_plans_shard_per_head(capsys):
    rows = _inspect_json(capsys, "--batch", "1", "--seq-len", "2048")
    base = rows["baseline"]["tensor_parallel"]["per_rank"]
    cla = rows["cla:2"]["tensor_parallel"]["per_rank"]
    sa = rows["sa:60-75"]["tensor_parallel"]["per_rank"]
    assert cla["kv_cache_bytes"] * 2 == base["kv_cache_bytes"]  # CLA2 halves each rank's cache
    # sa:60-75: 16 layers keep V only, and have no Q/K projections
    assert sa["kv_cache_bytes_per_token"] == (2 * L - 16) * D * E
    assert base["params"] - sa["params"] == 16 * HID * (H // 8 + HKV // 8) * D
    for v, r in rows.items():  # every rank's share of what the plan's P and cache move is 1/8
        full = r["bytes_moved"]["decode_step_breakdown"]
        per = r["tensor_parallel"]["per_rank"]
        assert per["kv_cache_bytes"] * 8 == r["kv_cache_bytes"], v
        assert per["link_bytes"] == base["link_bytes"], v  # the all-reduces do not depend on the plan
    dec = accounting.decode_step_breakdown(accounting.resolve_config("llama-3.1-70b"), "sa:60-75", 1, 2049,
                                           "bfloat16")
    from sabench.tp_shapes import rank_config
    rdec = accounting.decode_step_breakdown(rank_config(accounting.resolve_config("llama-3.1-70b"), 8),
                                            "sa:60-75", 1, 2049, "bfloat16")
    assert rdec.attention_sharing * 8 == dec.attention_sharing and rdec.kv_read * 8 == dec.kv_read


def test_link_bandwidth_from_the_suite_or_the_option(capsys, tmp_path):
    rows = _inspect_json(capsys, "--link-bandwidth", "900GB/s", "--variant", "baseline")
    tp = rows["baseline"]["tensor_parallel"]
    assert tp["link_bandwidth_bytes_per_s"] == 900e9 and tp["link_bandwidth_source"] == "--link-bandwidth"
    text = find_suite("llama-3.1-70b-tp8").read_text().replace("# link_bandwidth: 450GB/s", "link_bandwidth: 300GB/s")
    (tmp_path / "s.yaml").write_text(text)
    tp = _inspect_json(capsys, "--variant", "baseline", suite=str(tmp_path / "s.yaml"))["baseline"]["tensor_parallel"]
    assert tp["link_bandwidth_bytes_per_s"] == 300e9
    assert tp["link_bandwidth_source"] == "the suite's parallel.link_bandwidth"
    link_ms = tp["per_rank"]["link_bytes"]["decode_step"] / 300e9 * 1e3
    assert tp["floors_ms"]["decode_step"]["link_ms"] == pytest.approx(link_ms, rel=1e-12)


def test_tp1_figures_are_the_single_device_ones():
    cfg = accounting.resolve_config("llama-3.1-8b")
    s = accounting.summary(cfg, "cla:2", 4, 1024, "bfloat16")
    tp = accounting.tp_summary(cfg, "cla:2", 4, 1024, "bfloat16", 1, peaks=H100)
    assert tp["per_rank"]["params"] == tp["total"]["params"] == s["params"]
    assert tp["per_rank"]["kv_cache_bytes"] == s["kv_cache_bytes"]
    assert tp["per_rank"]["bytes_moved"]["decode_step"] == s["bytes_moved"]["decode_step"]
    assert tp["per_rank"]["link_bytes"] == {"prefill": 0, "decode_step": 0}
    assert tp["floors_ms"]["decode_step"]["link_ms"] == 0


def _suite(**extra):
    return {"name": "s", "model": "tiny", "variants": ["baseline"], "sweep": {"batch_size": 1, "seq_len": 8},
            **extra}


def test_suite_parallel_parses_and_refuses_impossible_plans():
    s = parse_suite(_suite(parallel={"tensor": 2, "link_bandwidth": "4.5e11"}))
    assert (s.tensor_parallel, s.link_bandwidth) == (2, 4.5e11)
    assert parse_suite(_suite(parallel={"tensor": 2, "link_bandwidth": "100 GB/s"})).link_bandwidth == 100e9
    assert "parallel" not in parse_suite(_suite()).to_dict()  # single-device results keep their form
    cases = [({"tensor": 4}, "parallel.tensor: model 'tiny' cannot be split over 4 tensor-parallel ranks: "
                             "its 2 KV heads is not divisible by 4"),
             ({"tensor": 0}, "parallel.tensor: expected an integer in 1.."),
             ({"tensors": 2}, "parallel.tensors: unknown key"),
             ({}, "parallel.tensor: required key missing"),
             (8, "parallel: expected a mapping"),
             ({"tensor": 2, "link_bandwidth": "fast"}, "parallel.link_bandwidth: bad bandwidth 'fast'"),
             ({"tensor": 2, "link_bandwidth": -1}, "parallel.link_bandwidth: bad bandwidth -1")]
    for value, message in cases:
        with pytest.raises(SuiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_suite(_suite(parallel=value))


def test_inspect_tp_errors_are_one_line(capsys):
    assert main(["inspect", "--model", "tiny", "--tp", "3"]) == 2
    assert "--tp 3: model 'tiny' cannot be split over 3" in capsys.readouterr().err
    assert main(["inspect", "--model", "tiny", "--tp", "0"]) == 2
    assert "argument --tp: expected an integer in 1..1024" in capsys.readouterr().err
    assert main(["inspect", "--model", "tiny", "--suite", "smoke"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["inspect", "--model", "tiny", "--gpu", "B200X"]) == 2
    assert "H100 SXM" in capsys.readouterr().err


def test_inspect_table_shows_per_rank_rows(capsys):
    assert main(["inspect", "--suite", "llama-3.1-70b-tp8", "--variant", "baseline", "--gpu", "H100 SXM"]) == 0
    out = capsys.readouterr().out
    assert "| weights per rank (TP-8)" in out and "19.9 GiB" in out
    assert "all-reduce link: 450 GB/s (datasheet: NVLink 4" in out


def test_run_refuses_a_tensor_parallel_suite_with_fewer_gpus_than_ranks(capsys, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert main(["run", "llama-3.1-70b-tp8", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parallel.tensor 8: 8 ranks need 8 GPUs, 4 visible here" in err[0]
    assert not (tmp_path / "out").exists()

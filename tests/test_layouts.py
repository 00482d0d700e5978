"""Layouts read from config.json fields, each pinned against the convention of the model's own code;
`native`, inspect, run and quality with per-layer K/V maps end to end on the CPU."""
import json

import pytest
import torch

from sabench.cli import main
from sabench.layouts import native_variant
from sabench.model import load_model
from sabench.plan import PlanError, parse_variant
from sabench.presets import PRESETS, ModelSourceError, resolve_config
from tests.helpers import hf_model, small_config, tiny_suite, write_suite


def _config_dir(tmp_path, d: dict, name="model"):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(d))
    return path


def _llama(layers=8, **fields) -> dict:
    """A Llama-family config.json (tests.helpers.small_config's gqa shape) with extra fields."""
    return small_config("gqa", layers=layers, scaling=False).to_hf_dict() | fields


def _sources(cfg):
    return [lp.kv_source for lp in parse_variant("native", cfg.num_layers, native=cfg.native_variant).layers]


def _foreign(model_type, layers, **fields) -> dict:
    """An architecture sabench does not run, with a Llama-shaped attention to read."""
    return {"model_type": model_type, "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512} | fields


S, F = "sliding_attention", "full_attention"
CASES = {
    # Gemma 3n / 4 (transformers' Gemma3nTextAttention): the last num_kv_shared_layers layers take
    # the K/V of the last non-shared layer of their own layer_types entry. 10 layers, every 5th full,
    # 4 shared: layers 6-8 (sliding) take layer 5's, layer 9 (full) takes layer 4's.
    "gemma3n": ({"model_type": "gemma3n", "text_config": _foreign(
        "gemma3n_text", 10, num_kv_shared_layers=4, layer_types=[S, S, S, S, F] * 2,
        intermediate_size=[128] * 10)}, [0, 1, 2, 3, 4, 5, 5, 5, 5, 4]),
    # Hunyuan (HunYuanModel.forward): layers with index % cla_share_factor == 0 keep K/V for the next
    # ones: groups start at 0, the short group last (5 layers, factor 2: 0,1 | 2,3 | 4).
    "hunyuan": (_foreign("hunyuan", 5, use_cla=True, cla_share_factor=2, num_experts=16),
                [0, 0, 2, 2, 4]),
    # Hymba (HymbaModel): each kv_reuse_group is [producer, consumers...]; global layers 0 and 6
    # are in no group.
    "hymba": (_foreign("hymba", 7, kv_reuse_group=[[1, 2], [3, 4, 5]], global_attn_idx=[0, 6]),
              [0, 1, 1, 3, 3, 3, 6]),
    # MLKV (its GPTNeoXModel): key_value_layers = [0] + [int((i + 1) * L / m) for i < m - 1]; the
    # others take the last one before them. 12 layers, m = 5: owners 0, 2, 4, 7, 9.
    "mlkv": (_foreign("gpt_neox", 12, num_key_value_layers=5), [0, 0, 2, 2, 4, 4, 4, 7, 7, 9, 9, 9]),
}


@pytest.mark.parametrize("name", CASES)
def test_foreign_layouts_map_to_their_models_convention_and_are_inspect_only(tmp_path, name):
    d, want = CASES[name]
    path = _config_dir(tmp_path, d)
    cfg = resolve_config(path, closed_forms_only=True)
    assert _sources(cfg) == want
    assert cfg.cannot_run and repr(d["model_type"]) in cfg.cannot_run
    with pytest.raises(ModelSourceError, match="is not a Llama-family decoder sabench runs.*sabench inspect"):
        resolve_config(path)
    with pytest.raises(ModelSourceError, match="cannot run"):
        load_model(cfg, "native", "float32", "cpu")


LLAMA_CASES = {
    # a Llama-family model has one attention type: the tail takes the last non-shared layer's K/V
    "num_kv_shared_layers": (_llama(8, num_kv_shared_layers=3), [0, 1, 2, 3, 4, 4, 4, 4], "kv:5-7<-4"),
    # Hunyuan's rule on a Llama: groups of 3 from layer 0, not cla:3's remainder-first groups
    "cla_share_factor": (_llama(8, use_cla=True, cla_share_factor=3), [0, 0, 0, 3, 3, 3, 6, 6],
                         "kv:1-2<-0,4-5<-3,7<-6"),
    # LCKV (LCKVLlamaConfig): "the i-th integer means the layer will use the key-value pair in the
    # i-th layer"; 0_0_2_2_4_4 is CLA2 and is named so, 0_1_2_3_3_3 a YOCO-style tail
    "lckv-cla": (_llama(6, model_type="lckv-llama", layer_types="0_0_2_2_4_4"), [0, 0, 2, 2, 4, 4], "cla:2"),
    "lckv-tail": (_llama(6, model_type="lckv-llama", layer_types="0_1_2_3_3_3"), [0, 1, 2, 3, 3, 3],
                  "kv:4-5<-3"),
    "none": (_llama(4), [0, 1, 2, 3], "baseline"),
}


@pytest.mark.parametrize("name", LLAMA_CASES)
def test_llama_family_layouts(tmp_path, name):
    d, want, variant = LLAMA_CASES[name]
    cfg = resolve_config(_config_dir(tmp_path, d))
    assert cfg.cannot_run is None and _sources(cfg) == want and cfg.native_variant == variant


@pytest.mark.parametrize("fields, fragment", [
    ({"model_type": "lckv-llama", "layer_types": "5_1_2_3_4_5"}, "layer 0 attends over the K/V of a later layer"),
    ({"model_type": "lckv-llama", "layer_types": "0_0_2s_2_4_4"}, "sliding-window layers"),
    ({"model_type": "lckv-llama", "layer_types": "0_0_2_2"}, "gives 4 layers, the model has 6"),
    ({"model_type": "lckv-llama", "layer_types": "0_0_1_2_4_4"}, "layer 2 takes its K/V from layer 1, which takes"),
    ({"num_kv_shared_layers": 6}, "num_kv_shared_layers must be an integer in 0..5"),
    ({"num_kv_shared_layers": 2, "use_cla": True, "cla_share_factor": 2}, "keep one field"),
    ({"kv_reuse_group": [[1, 2], [3, 2]]}, "layer 2 is in two groups"),
    ({"use_cla": True, "cla_share_factor": 0}, "cla_share_factor must be an integer in 1..6"),
])
def test_impossible_layouts_are_refused_naming_the_field(tmp_path, fields, fragment):
    with pytest.raises(PlanError) as e:
        resolve_config(_config_dir(tmp_path, _llama(6, **fields)))
    assert fragment in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)


def test_layer_types_list_is_not_an_lckv_layout():
    # transformers writes layer_types as a list of attention types for many models (Qwen2 among them)
    assert native_variant({"layer_types": [F] * 4}, 4, "c") == "baseline"


def test_a_llama_checkpoint_runs_with_its_native_layout(tmp_path, capsys):
    cfg = small_config("gqa", layers=6, scaling=False)
    path = tmp_path / "ckpt"
    hf_model(cfg, seed=2).save_pretrained(path)
    d = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(d | {"num_kv_shared_layers": 2}))
    native = load_model(str(path), "native", torch.float32, "cpu")
    assert native.plan == parse_variant("kv:4-5<-3", 6)
    assert not hasattr(native.model.layers[4].self_attn, "k_proj")
    written = load_model(str(path), "kv:4-5<-3", torch.float32, "cpu")
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(native(ids), written(ids))
    # quality scores it on the checkpoint's own weights
    id_file = tmp_path / "ids.txt"
    id_file.write_text(" ".join(str((7 * i) % 256) for i in range(80)))
    assert main(["quality", "--model", str(path), "--token-ids", str(id_file), "--seq-len", "32",
                 "--variant", "native", "--variant", "kv:2<-0", "--json", "--device", "cpu"]) == 0
    scored = {v["variant"]: v["perplexity"] for v in json.loads(capsys.readouterr().out)["variants"]}
    assert set(scored) == {"baseline", "kv:4-5<-3", "kv:2<-0"} and all(p > 1 for p in scored.values())


# ---------------------------------------------------------------- inspect
def _inspect(capsys, *argv):
    rc = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_inspect_a_config_with_a_tail_prints_the_layout_and_its_costs(tmp_path, capsys):
    path = _config_dir(tmp_path, _llama(8, num_kv_shared_layers=3))
    out = _inspect(capsys, "--model", path, "--variant", "native", "--variant", "cla:2", "--seq-len", 64)
    assert "native layout (its config): kv:5-7<-4" in out and "cannot run" not in out
    assert "5:Q(KV<-4) 6:Q(KV<-4) 7:Q(KV<-4)" in out
    rows = json.loads(_inspect(capsys, "--model", path, "--variant", "native", "--seq-len", 64, "--json"))
    # 5 owners x K and V x 2 KV heads of 16 x 2 bytes (bf16)
    assert rows["variant"] == "kv:5-7<-4" and rows["kv_cache_bytes_per_token"] == 5 * 2 * 2 * 16 * 2


def test_inspect_an_architecture_it_cannot_run_says_so_in_one_line(tmp_path, capsys):
    d, _ = CASES["hunyuan"]
    path = _config_dir(tmp_path, d)
    out = _inspect(capsys, "--model", path, "--variant", "baseline", "--variant", "native", "--seq-len", 64)
    said = [line for line in out.splitlines() if "cannot run" in line]
    assert len(said) == 1 and "'hunyuan'" in said[0] and "MoE" in said[0]
    assert "native layout (its config): kv:1<-0,3<-2" in out and "KV bytes / token" in out
    rows = json.loads(_inspect(capsys, "--model", path, "--variant", "native", "--seq-len", 64, "--json"))
    assert rows["cannot_run"] == resolve_config(path, closed_forms_only=True).cannot_run


@pytest.mark.parametrize("variant", ["kv:20-34<-19", "kv:1<-0,3<-2", "kv:2<-0,3<-1,5-7<-4+sa:9-9", "native"])
def test_every_form_round_trips_through_inspect(capsys, variant):
    cfg = PRESETS["gemma-3n-e4b"]
    row = json.loads(_inspect(capsys, "--model", "gemma-3n-e4b", "--variant", variant, "--seq-len", 128, "--json"))
    plan = parse_variant(variant, cfg.num_layers, native=cfg.native_variant)
    assert row["variant"] == plan.variant and parse_variant(row["variant"], cfg.num_layers) == plan
    assert row["plan"] == plan.describe()


def test_gemma_3n_presets_carry_their_tails_and_compare_beside_cla2_on_80gib(capsys):
    # E4B: 35 layers, the last 15 shared; full attention at every 5th layer (4, 9, 14, 19, ...):
    # sliding layers take layer 18's K/V, full layers layer 19's
    e4b = PRESETS["gemma-3n-e4b"]
    assert e4b.native_variant == "kv:20-23<-18,24<-19,25-28<-18,29<-19,30-33<-18,34<-19"
    # E2B: 30 layers, the last 10 shared: sliding from 18, full from 19
    assert PRESETS["gemma-3n-e2b"].native_variant == "kv:20-23<-18,24<-19,25-28<-18,29<-19"
    rows = json.loads(_inspect(capsys, "--model", "gemma-3n-e4b", "--variant", "native", "--variant", "cla:2",
                               "--memory", "80GiB", "--seq-len", 32767, "--json"))
    tail, cla2 = rows
    # 20 owners (tail) or 18 (cla:2, remainder-first: 0 | 1,2 | ...) x K and V x 2 heads x 256 x 2 bytes
    assert tail["kv_cache_bytes_per_token"] == 20 * 2 * 2 * 256 * 2
    assert cla2["kv_cache_bytes_per_token"] == 18 * 2 * 2 * 256 * 2
    assert tail["capacity"]["max_batch"] >= 1 and cla2["capacity"]["max_batch"] >= tail["capacity"]["max_batch"]


# ---------------------------------------------------------------- run
def test_run_a_kv_map_end_to_end_on_the_cpu(tmp_path):
    suite = write_suite(tmp_path, tiny_suite("kvmap", variants=("kv:2-3<-0",), batch_sizes=(1,), seq_lens=(16,),
                                             decode_tokens=2, warmup=0, repeats=1))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    recs = json.loads((out / "results.json").read_text())["records"]
    assert {(r["variant"], r["phase"], r["status"]) for r in recs} == {("kv:2-3<-0", "prefill", "ok"),
                                                                      ("kv:2-3<-0", "decode", "ok")}
    # tiny: 2 owners (0, 1) x K and V x 2 KV heads of 16 x 4 bytes x (16 + 2) positions
    assert all(r["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 4 * 18 for r in recs)
    assert "kv:2-3<-0" in (out / "report.md").read_text()

"""The committed CI baseline (reports/baselines/smoke.json) is a reviewed file, not a snapshot.

`.ci/run` gates every change's deterministic figures against it, so its figures must be
right in their own terms: here each record's parameters, preallocated cache bytes and
analytic FLOPs are derived again from first principles for the smoke suite's `tiny` model
(vocab 512, hidden 64, MLP 176, 4 layers, 4 query heads and 2 KV heads of 16, float32,
untied embeddings), with the layer roles of each variant written out by hand:

- baseline: every layer has Q, K, V;
- cla:2: layers (0, 1) and (2, 3) share the first layer's K/V; layers 1 and 3 have Q only;
- sa:2-3 (and /recompute): layers 2 and 3 reuse layer 1's attention weights: V only.

Nothing here calls sabench's accounting, so a wrong closed form there cannot hide a wrong
baseline (or the reverse).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "reports" / "baselines" / "smoke.json"

V, H, I, L, NH, NKV, D, BYTES = 512, 64, 176, 4, 4, 2, 16, 4
# per layer: (has_q, has_k, has_v, computes its own attention weights)
ROLES = {
    "baseline": [(1, 1, 1, 1)] * 4,
    "cla:2": [(1, 1, 1, 1), (1, 0, 0, 1), (1, 1, 1, 1), (1, 0, 0, 1)],
    "sa:2-3": [(1, 1, 1, 1), (1, 1, 1, 1), (0, 0, 1, 0), (0, 0, 1, 0)],
}
ROLES["sa:2-3/recompute"] = ROLES["sa:2-3"]


def _records():
    data = json.loads(BASELINE.read_text())
    assert data["suite"]["model"] == "tiny" and data["suite"]["dtype"] == "float32"
    return data, [r for r in data.get("records", []) if r.get("status") == "ok"]


def closed_params(variant: str) -> int:
    per_layer = 0
    for q, k, v, _ in ROLES[variant]:
        per_layer += 2 * H + 3 * H * I + NH * D * H  # norms, MLP, o_proj
        per_layer += q * H * NH * D + (k + v) * H * NKV * D
    return 2 * V * H + H + per_layer  # embedding + lm_head (untied), final norm


def closed_cache_bytes(variant: str, batch: int, tokens: int) -> int:
    tensors = sum(k + v for _, k, v, _ in ROLES[variant])
    return tensors * NKV * D * BYTES * batch * tokens


def closed_flops(variant: str, phase: str, batch: int, seq: int, steps: int) -> int:
    def forward(new_tokens: int, pairs: int, logit_rows: int, recompute: bool) -> int:
        total = 0
        for q, k, v, own in ROLES[variant]:
            total += 2 * new_tokens * H * (NH * D * (1 + q) + NKV * D * (k + v))  # q, k, v, o projections
            total += 2 * NH * pairs * D * (2 if (own or recompute) else 1)        # QK^T and PV
            total += 2 * new_tokens * 3 * H * I                                   # SwiGLU MLP
        return total + 2 * logit_rows * H * V

    if phase == "prefill":
        return forward(batch * seq, batch * seq * (seq + 1) // 2, batch, variant.endswith("/recompute"))
    return sum(forward(batch, batch * (seq + c + 1), batch, False) for c in range(steps))


def test_baseline_covers_the_smoke_suite():
    data, records = _records()
    points = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]) for r in records}
    sweep = data["suite"]["sweep"]
    expected = {(v, b, s, ph) for v in ROLES for b in sweep["batch_size"] for s in sweep["seq_len"]
                for ph in ("prefill", "decode")}
    assert points == expected


@pytest.mark.parametrize("field", ["params", "kv_cache_bytes", "flops"])
def test_baseline_figures_match_the_closed_forms(field):
    data, records = _records()
    steps = data["suite"]["decode_tokens"]
    for r in records:
        v, b, s, ph = r["variant"], r["batch_size"], r["seq_len"], r["phase"]
        if field == "params":
            assert r["params"] == closed_params(v), (v, b, s, ph)
        elif field == "kv_cache_bytes":
            assert r["kv_cache_bytes"] == closed_cache_bytes(v, b, s + steps), (v, b, s, ph)
        else:
            assert r["flops"]["analytic"] == closed_flops(v, ph, b, s, steps), (v, b, s, ph)


def test_the_variants_save_what_they_claim():
    # independent of the file: the hand-written roles themselves give the designs' savings
    assert closed_params("cla:2") < closed_params("baseline")
    assert closed_params("sa:2-3") < closed_params("baseline")
    assert closed_cache_bytes("cla:2", 1, 100) * 2 == closed_cache_bytes("baseline", 1, 100)
    assert closed_cache_bytes("sa:2-3", 1, 100) * 4 == closed_cache_bytes("baseline", 1, 100) * 3
    assert closed_flops("sa:2-3", "prefill", 1, 128, 0) < closed_flops("sa:2-3/recompute", "prefill", 1, 128, 0)

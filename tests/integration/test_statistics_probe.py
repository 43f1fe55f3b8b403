"""Statistics probe on the real model: every head's statistics from the kernels equal the same
statistics computed from transformers' eager maps; logits stay those of SDPA."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import attn_implementation
from workbench.cli import main

pytestmark = pytest.mark.model


def _eager_stats(maps: torch.Tensor, spans):
    """Reference statistics from full (H, L, L) maps."""
    n = maps.shape[1]
    m = maps.double()
    received = m.sum(1)  # (H, L)
    visible = torch.arange(n, 0, -1, dtype=torch.float64)  # key j is seen by n - j queries
    entropy = -(m * torch.where(m > 0, m.log(), torch.zeros_like(m))).sum(-1)
    pos = torch.arange(n, dtype=torch.float64)
    distance = (m * (pos.view(n, 1) - pos.view(1, n))).sum(-1)
    span_mass = torch.stack([m[..., a:b].sum(-1) for a, b in spans], -1)
    return {
        "received": received,
        "sink": received / visible,
        "entropy": entropy,
        "argmax": m.argmax(-1),
        "argmax_prob": m.max(-1).values,
        "distance": distance,
        "span_mass": span_mass,
    }


def test_all_layers_all_heads_match_eager_maps(lm, eager_maps):
    enc, eager, _ = eager_maps
    spans = [(0, 1), (2, 6)]
    with lm.statistics(spans=spans, pooled_block=4) as st:
        logits = lm.forward(enc)
    with attn_implementation(lm.model, "sdpa"):
        sdpa_logits = lm.forward(enc)
    assert (logits - sdpa_logits).abs().max() <= 1e-4
    assert st.records.layers_fired == tuple(range(30))
    for layer in range(30):
        got = st.records[layer].stats
        ref = _eager_stats(eager[layer][0], spans)
        for name in ("received", "sink", "entropy", "argmax_prob", "distance", "span_mass"):
            assert torch.allclose(got[name][0].double(), ref[name], rtol=1e-4, atol=1e-5), name
        top2 = eager[layer][0].double().topk(2, -1).values
        no_tie = (top2[..., 0] - top2[..., 1]) > 1e-6
        assert torch.equal(got["argmax"][0][no_tie], ref["argmax"][no_tie])
        n = enc.n_tokens
        pooled = got["pooled"][0]  # block 4, edge tiles averaged over the cells they contain
        assert pooled.shape == (9, -(-n // 4), -(-n // 4))
        tile = eager[layer][0, :, 4:8, 0:4].double().mean((-1, -2))
        assert torch.allclose(pooled[:, 1, 0].double(), tile, atol=1e-6)


def test_statistics_per_decode_step(lm):
    enc = lm.encode("Counting: one, two, three,")
    with lm.statistics(layers=[7], entropy=True) as st, torch.no_grad():
        out = lm.model.generate(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=2,
        )
    assert st.records.steps(7) == 3
    step = st.records[7, 2]
    n = enc.n_tokens + 2
    assert step.stats["entropy"].shape == (1, 9, 1) and step.n_keys == n
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        ref = lm.model(input_ids=out[:, :n], output_attentions=True).attentions[7][0, :, -1]
    ref_entropy = -(ref * ref.clamp_min(1e-30).log()).sum(-1)
    assert torch.allclose(step.stats["entropy"][0, :, 0], ref_entropy, rtol=1e-4, atol=1e-5)


def test_bench_json_runs(capsys, lm):
    assert main(["bench", "--seq", "32,48", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["results"]
    assert [r["seq"] for r in rows] == [32, 48]
    for r in rows:
        assert {"seq", "sdpa_s", "stats_s", "ratio", "sdpa_peak_mb", "stats_peak_mb"} <= set(r)
        assert r["ratio"] == pytest.approx(r["stats_s"] / r["sdpa_s"], rel=0.01)

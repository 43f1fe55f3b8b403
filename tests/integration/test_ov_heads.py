"""OV-circuit head families on the embedded model (SmolLM2-135M: Llama, RMSNorm, GQA 9/3,
tied unembedding): copy suppression and successor heads against a direct float64
computation from the weight matrices (transformers' modules read by hand, sharing nothing
with the analyzers' path through the attention hooks), and full runs checking the tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analyzers import analyze
from workbench.analyzers.copy_suppression import copy_suppression_items, vocabulary_sample
from workbench.analyzers.successor import bundled_ordinals, ordinal_classes, successor_items

LAYERS = [0, 23, 24, 29]


def rms(x: torch.Tensor, norm: torch.nn.Module, eps: float) -> torch.Tensor:
    return norm.weight.double() * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def mlp(block, x: torch.Tensor) -> torch.Tensor:
    m = block.mlp
    gate = x @ m.gate_proj.weight.double().T
    return (torch.nn.functional.silu(gate) * (x @ m.up_proj.weight.double().T)) @ (
        m.down_proj.weight.double().T
    )


def by_hand(lm, ids: list[int], embedding: str) -> torch.Tensor:
    """Effective embeddings (n, d) float64 from the Llama weights: block 0 on the token alone
    (its attention output is then its own value through o_proj), or with attention removed."""
    model = lm.model.model
    eps = lm.model.config.rms_norm_eps
    block = model.layers[0]
    emb = model.embed_tokens.weight[ids].double()
    if embedding == "mlp0":
        return emb + mlp(block, rms(emb, block.post_attention_layernorm, eps))
    attn = block.self_attn
    v = rms(emb, block.input_layernorm, eps) @ attn.v_proj.weight.double().T  # (n, 3 * 64)
    z = v.view(len(ids), 3, 64)[:, torch.arange(9) // 3].reshape(len(ids), -1)
    x = emb + z @ attn.o_proj.weight.double().T
    return x + mlp(block, rms(x, block.post_attention_layernorm, eps))


def head_logits(lm, resid: torch.Tensor, layer: int, columns=None) -> torch.Tensor:
    """(n, 9, V') float64: W_U g_f * (W_O^h W_V^{h // 3} norm_l(resid)), per query head."""
    model = lm.model.model
    eps = lm.model.config.rms_norm_eps
    block = model.layers[layer]
    v = rms(resid, block.input_layernorm, eps) @ block.self_attn.v_proj.weight.double().T
    v = v.view(len(resid), 3, 64)[:, torch.arange(9) // 3]  # (n, 9, 64): GQA groups of 3
    w_o = block.self_attn.o_proj.weight.double().view(576, 9, 64)  # (d, H, D)
    out = torch.einsum("nhk,dhk->nhd", v, w_o) * model.norm.weight.double()
    w_u = lm.model.lm_head.weight.double()
    if columns is not None:
        w_u = w_u[columns]
    return out @ w_u.T


def test_copy_suppression_equals_a_direct_weight_computation(lm):
    ids = vocabulary_sample(lm, 40, seed=3)
    most, bottom, self_z, _ = copy_suppression_items(lm, ids, "block0", layers=LAYERS)
    others = [layer for layer in range(30) if layer not in LAYERS]
    assert torch.isnan(most[:, others]).all() and torch.isnan(self_z[:, others]).all()
    resid = by_hand(lm, ids, "block0")
    rows = torch.arange(len(ids))
    near_ties = 0
    for layer in LAYERS:
        logits = head_logits(lm, resid, layer)  # (n, 9, V)
        own = logits[rows, :, ids]  # (n, 9)
        z = (own - logits.mean(-1)) / logits.std(-1, unbiased=False)
        assert torch.allclose(self_z[:, layer], z, atol=1e-5, rtol=0), layer
        rank = (logits <= own[..., None]).sum(-1) - 1
        want_most, want_bottom = (rank == 0).double(), (rank < 10).double()
        # the analyzer ranks float32 logits: only a near-tie (gap < 1e-4) may come out apart
        gap = (logits - own[..., None]).abs()
        gap[rows, :, ids] = float("inf")
        differs = (most[:, layer] != want_most) | (bottom[:, layer] != want_bottom)
        assert (gap.amin(-1)[differs] < 1e-4).all(), layer
        near_ties += int(differs.sum())
    assert near_ties <= 2


def test_successor_equals_a_direct_weight_computation(lm):
    classes = ordinal_classes(lm.tokenizer, bundled_ordinals())
    hits, names, _ = successor_items(lm, classes, "mlp0")
    pairs = [(s, t, c.candidates) for c in classes for s, t in c.pairs]
    assert len(pairs) == hits.shape[0] == len(names)
    sources = [s for s, _, _ in pairs]
    columns = sorted({c for _, _, cand in pairs for c in cand})
    col = {tok: i for i, tok in enumerate(columns)}
    resid = by_hand(lm, sources, "mlp0")
    near_ties = 0
    for layer in range(30):
        logits = head_logits(lm, resid, layer, columns)  # (P, 9, C)
        for p, (_, t, cand) in enumerate(pairs):
            others = logits[p][:, [col[c] for c in cand if c != t]]  # (9, C - 1)
            margin = logits[p, :, col[t]] - others.amax(-1)  # (9,)
            differs = hits[p, layer] != (margin > 0).double()
            # the analyzer's values come from float32 forwards: only a near-tie may differ
            assert (margin[differs].abs() < 1e-4).all(), (layer, p)
            near_ties += int(differs.sum())
    assert near_ties <= 2


def test_copy_suppression_table_on_the_embedded_model(lm):
    df = analyze("copy_suppression", lm, quick=True, n_tokens=16, progress=False)
    assert len(df) == 270
    assert list(df.columns[:6]) == ["layer", "head", "head_id", "score", "score_lo", "score_hi"]
    assert {"bottom_10", "self_z"} <= set(df.columns)
    assert df["score"].between(0, 1).all() and df["bottom_10"].between(0, 1).all()
    assert (df["bottom_10"] >= df["score"]).all()  # most suppressed is among the bottom 10
    assert (df["score_lo"] <= df["score"] + 1e-12).all()
    assert (df["score"] <= df["score_hi"] + 1e-12).all()
    assert np.isfinite(df["self_z"]).all()
    assert df.attrs["quick"] is True and df.attrs["params"]["n_tokens"] == 16
    causal = df.attrs["causal"]
    assert causal["items"] == 4 and len(causal["random_k"]) == 3
    assert 0 <= causal["base"] <= 1 and 0 <= causal["top_k"] <= 1


def test_successor_table_on_the_embedded_model(lm):
    df = analyze("successor", lm, quick=True, progress=False)
    assert len(df) == 270
    shares = [c for c in df.columns if c.startswith("share_")]
    assert {"share_days", "share_months", "share_letters", "share_numbers"} <= set(shares)
    for column in ["score", "score_lo", "score_hi", *shares]:
        assert df[column].between(0, 1).all(), column
    # SmolLM2 splits numbers into digits: only 1..9 are single tokens (8 pairs)
    assert df.attrs["pairs"]["numbers"] == 8 and "10" in df.attrs["dropped"]["numbers"]
    assert df.attrs["prompts_used"] == sum(df.attrs["pairs"].values())
    causal = df.attrs["causal"]
    assert causal["items"] == 16 and causal["base"] < 0  # log-probabilities


@pytest.mark.parametrize("name", ["copy_suppression", "successor"])
def test_unknown_parameter_is_refused(lm, name, forwards):
    from workbench.analyzers import AnalyzerArgumentError

    with pytest.raises(AnalyzerArgumentError, match="embeding"):
        analyze(name, lm, embeding="raw")
    assert forwards == []

"""Head attribution: direct logit attribution and attribution patching, checked by hand on tiny
random Llamas (where the metric is linear in the last layer's head outputs, so the estimates are
exact) and against independent computations and exact ablation on the embedded model."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import workbench
from workbench.analyzers import attribution as attr
from workbench.errors import WorkbenchError
from workbench.interventions import HeadMeans
from workbench.model_parts import final_norm

pytestmark = pytest.mark.model

IOI = attr.DEFAULT_TASK[0]


# -- tiny models: hand-worked ---------------------------------------------------------------
def tiny_lm(n_layers: int = 2, seed: int = 0):
    """A random tiny Llama whose MLPs write nothing (down_proj = 0), so the final residual is
    embeddings + head writes, all computable by hand."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
            # larger attention weights than the 0.02 init, so heads differ visibly
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.normal_(0, 0.3)
    return workbench.wrap_model(model, tokenizer=None, name="tiny")


TINY_IDS = torch.tensor([[1, 5, 7, 3, 9, 5, 7, 2]])
TARGET, FOIL = 3, 4


def final_residual(lm, ids) -> torch.Tensor:
    res = {}
    norm = final_norm(lm.model)
    handle = norm.register_forward_pre_hook(lambda m, a: res.__setitem__("x", a[0].detach()))
    try:
        attr.metric_value(lm, ids, attr.logit_diff(TARGET, FOIL))
    finally:
        handle.remove()
    return res["x"]


@contextmanager
def frozen_final_norm(lm, ids):
    """Make the final RMSNorm linear: its scale fixed at the clean run's value per position."""
    norm = final_norm(lm.model)
    x = final_residual(lm, ids)
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    handle = norm.register_forward_hook(lambda m, a, out: m.weight * a[0] * scale)
    try:
        yield
    finally:
        handle.remove()


def test_dla_hand_worked_tiny():
    """DLA recomputed by hand from the capture probe's z, the weights and the residual built
    from its parts; and DLA of all heads + the embedding's = the metric exactly."""
    lm = tiny_lm()
    ids = TINY_IDS
    res = attr.attribute(lm, ids, attr.logit_diff(TARGET, FOIL))
    with lm.capture(maps=False, z=True) as cap, torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, -1].double()
    model = lm.model
    h, d = lm.info.n_heads, lm.info.head_dim
    embed = model.model.embed_tokens.weight[ids[0, -1]].detach().double()
    writes = []  # (layer, head) -> write to the residual at the last position
    for layer in range(lm.info.n_layers):
        w_o = model.model.layers[layer].self_attn.o_proj.weight.detach().double()  # (d_model, H*D)
        z = cap.records[layer].z[0, :, -1].double()  # (H, D)
        writes.append([w_o[:, i * d : (i + 1) * d] @ z[i] for i in range(h)])
    resid = embed + sum(w for ws in writes for w in ws)
    assert torch.allclose(resid, final_residual(lm, ids)[0, -1].double(), atol=1e-5)
    norm = model.model.norm
    s = 1.0 / torch.sqrt(resid.pow(2).mean() + norm.variance_epsilon)
    w_u = model.lm_head.weight.detach().double()
    direction = s * norm.weight.detach().double() * (w_u[TARGET] - w_u[FOIL])
    expected = torch.tensor([[float(w @ direction) for w in ws] for ws in writes]).double()
    assert torch.allclose(res.dla, expected, atol=1e-6)
    metric = float(logits[TARGET] - logits[FOIL])
    assert res.metric == pytest.approx(metric, abs=1e-5)
    assert float(res.dla.sum() + embed @ direction) == pytest.approx(metric, abs=1e-5)
    assert res.norm_check < 1e-5


@pytest.mark.parametrize("baseline", ["zero", "mean", "corrupt"])
def test_attribution_patching_exact_where_linear_tiny(baseline):
    """With the final norm frozen and no MLP, the metric is linear in the last layer's head
    outputs: attribution patching = exact ablation / patching effect there (and = -DLA for zero
    ablation)."""
    lm = tiny_lm()
    ids = TINY_IDS
    corrupt = torch.tensor([[1, 5, 7, 3, 9, 6, 7, 2]])
    metric = attr.logit_diff(TARGET, FOIL)
    torch.manual_seed(1)
    means = HeadMeans(torch.randn(lm.info.n_layers, lm.info.n_heads, lm.info.head_dim), 1, 8)
    source = attr.head_z(lm, corrupt)
    with frozen_final_norm(lm, ids):
        res = attr.attribute(lm, ids, metric, baseline=baseline, corrupt_ids=corrupt, means=means)
        base = attr.metric_value(lm, ids, metric)
        exact = torch.zeros(lm.info.n_layers, lm.info.n_heads, dtype=torch.float64)
        for layer in range(lm.info.n_layers):
            for head in range(lm.info.n_heads):
                with attr.ablation_for(lm, [(layer, head)], baseline, means=means, z_source=source):
                    exact[layer, head] = attr.metric_value(lm, ids, metric) - base
    ap = res.attribution_patching
    last = lm.info.n_layers - 1
    assert torch.allclose(ap[last], exact[last], atol=1e-5), (ap[last], exact[last])
    if baseline == "zero":
        assert torch.allclose(ap[last], -res.dla[last], atol=1e-6)
    assert exact[last].abs().max() > 1e-3  # the heads do something
    # earlier layers: only a first-order estimate (attention and RMSNorm downstream are not
    # linear; with these sharp random heads it is a rough one), checked on the real model


def test_attribute_errors_tiny():
    lm = tiny_lm(n_layers=1)
    metric = attr.logit_diff(TARGET, FOIL)
    with pytest.raises(WorkbenchError, match="baseline"):
        attr.attribute(lm, TINY_IDS, metric, baseline="noise")
    with pytest.raises(WorkbenchError, match="corrupt"):
        attr.attribute(lm, TINY_IDS, metric, baseline="corrupt")
    with pytest.raises(WorkbenchError, match="align token for token"):
        attr.attribute(lm, TINY_IDS, metric, baseline="corrupt", corrupt_ids=TINY_IDS[:, :4])
    with pytest.raises(WorkbenchError, match="head means"):
        attr.attribute(lm, TINY_IDS, metric, baseline="mean")


# -- the embedded model ---------------------------------------------------------------------
def test_dla_matches_independent_computation(lm):
    """DLA on the real model recomputed from the capture probe's z (the attention path, not the
    o_proj hooks) and the weights; and the full decomposition (embedding + every head + every
    MLP, frozen final-norm scale) adds up to the logit difference."""
    enc = lm.encode(IOI["prompt"])
    t = lm.tokenizer(IOI["target"], add_special_tokens=False)["input_ids"][0]
    f = lm.tokenizer(IOI["foil"], add_special_tokens=False)["input_ids"][0]
    res = attr.attribute(lm, enc.input_ids, attr.logit_diff(t, f))
    model = lm.model
    mlp_out = {}
    handles = [
        block.mlp.register_forward_hook(
            lambda m, a, out, i=i: mlp_out.__setitem__(i, out[0, -1].detach().double())
        )
        for i, block in enumerate(model.model.layers)
    ]
    try:
        with lm.capture(maps=False, z=True) as cap:
            lm.forward(enc)
    finally:
        for handle in handles:
            handle.remove()
    resid = final_residual_real(lm, enc)
    norm = model.model.norm
    s = 1.0 / torch.sqrt(resid.pow(2).mean() + norm.variance_epsilon)
    w_u = model.lm_head.weight.detach().double()
    direction = s * norm.weight.detach().double() * (w_u[t] - w_u[f])
    d = lm.info.head_dim
    expected = torch.zeros_like(res.dla)
    for layer in range(lm.info.n_layers):
        w_o = model.model.layers[layer].self_attn.o_proj.weight.detach().double()
        z = cap.records[layer].z[0, :, -1].double()
        for h in range(lm.info.n_heads):
            expected[layer, h] = (w_o[:, h * d : (h + 1) * d] @ z[h]) @ direction
    assert torch.allclose(res.dla, expected, atol=1e-4)
    embed = model.model.embed_tokens.weight[enc.input_ids[0, -1]].detach().double()
    total = res.dla.sum() + embed @ direction + sum(v @ direction for v in mlp_out.values())
    assert float(total) == pytest.approx(res.metric, abs=2e-3)
    assert res.norm_check < 1e-4


def final_residual_real(lm, enc) -> torch.Tensor:
    res = {}
    norm = final_norm(lm.model)
    handle = norm.register_forward_pre_hook(lambda m, a: res.__setitem__("x", a[0].detach()))
    try:
        lm.forward(enc)
    finally:
        handle.remove()
    return res["x"][0, -1].double()


EXACT_HEADS = ["L23H3", "L29H1", "L29H0", "L24H4", "L23H1", "L22H5", "L0H2", "L1H5", "L20H0"]
EXACT_HEADS += ["L10H4", "L15H2", "L27H7"]


def test_analyzer_vs_exact_ablation_real(lm):
    """The analyzer on two IOI prompts: attribution patching vs exact zero-ablation of 12 heads
    (the measured heads that matter most plus a few arbitrary ones), causal evidence."""
    df = attr.AttributionAnalyzer().run(
        lm, progress=False, n_prompts=2, exact_heads=EXACT_HEADS, top_k=3, draws=2
    )
    assert len(df) == lm.info.n_layers * lm.info.n_heads
    for column in ("layer", "head", "head_id", "score", "dla", "attribution_patching"):
        assert column in df.columns
    assert np.allclose(df["score"], df["attribution_patching"].abs())
    assert df.attrs["prompts_used"] == 2 and df.attrs["prompts_passed"] == 2
    measured = df.dropna(subset=["ablation_effect"])
    assert sorted(measured["head_id"]) == sorted(EXACT_HEADS)
    agreement = df.attrs["agreement"]["attribution_patching_vs_ablation"]
    print("attribution patching vs exact ablation:", df.attrs["agreement"])
    print(measured[["head_id", "dla", "attribution_patching", "ablation_effect"]])
    assert agreement["n"] == len(EXACT_HEADS)
    assert agreement["pearson"] > 0.8, agreement
    # the head with the largest DLA: an indirect-object mover in late layers, positive DLA
    top = df.loc[df["dla"].idxmax()]
    assert top["layer"] >= lm.info.n_layers // 2 and top["dla"] > 1.0
    causal = df.attrs["causal"]
    assert causal["k"] == 3 and len(causal["random_k"]) == 2
    assert causal["top_k"] < causal["random_k_mean"] < causal["base"] + 1.0


def test_analyzer_user_items_and_metric(lm):
    """User items (JSONL fields), the top-2 fallback and a callable metric equal to the
    logit difference give the same numbers as the built-in one."""
    item = dict(IOI)
    df = attr.AttributionAnalyzer().run(lm, [item], progress=False, causal=False)
    tid = lm.tokenizer(item["target"], add_special_tokens=False)["input_ids"][0]
    fid = lm.tokenizer(item["foil"], add_special_tokens=False)["input_ids"][0]

    def diff(logits, it):
        return logits[tid] - logits[fid]

    df2 = attr.AttributionAnalyzer().run(lm, [item], progress=False, causal=False, metric=diff)
    assert np.allclose(df["dla"], df2["dla"], atol=1e-6)
    assert np.allclose(df["attribution_patching"], df2["attribution_patching"], atol=1e-6)
    plain = attr.AttributionAnalyzer().run(lm, [item["prompt"]], progress=False, causal=False)
    row = plain.attrs["items"][0]
    assert row["target"] == " Mary" and row["metric"] > 0  # the model's top-1 is the answer


def test_analyzer_errors(lm):
    run = attr.AttributionAnalyzer().run
    with pytest.raises(WorkbenchError, match="empty"):
        run(lm, [], progress=False)
    with pytest.raises(WorkbenchError, match="baseline"):
        run(lm, None, progress=False, baseline="noise")
    with pytest.raises(WorkbenchError, match="both 'target' and 'foil'"):
        run(lm, [{"prompt": "When Mary and John", "target": " Mary"}], progress=False)
    with pytest.raises(WorkbenchError, match="corrupt"):
        run(lm, [{"prompt": "a b", "target": " a", "foil": " b"}], baseline="corrupt")
    with pytest.raises(WorkbenchError, match="same token"):
        run(lm, [{"prompt": "a b", "target": " a", "foil": " a"}], progress=False)
    with pytest.raises(WorkbenchError, match="top_k"):
        run(lm, None, progress=False, top_k=0)
    with pytest.raises(WorkbenchError, match="out of range"):
        run(lm, None, progress=False, exact_heads=["L40H0"])
    with pytest.raises(WorkbenchError, match="metric"):
        run(lm, None, progress=False, metric="accuracy")

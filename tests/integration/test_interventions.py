"""Interventions on the real model, each checked against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

import workbench
from probes.hooks import HOOKS_ATTR
from tests.conftest import SHORT_PROMPT, attn_implementation
from workbench import interventions as iv

pytestmark = pytest.mark.model
D = 64


def _clean(lm) -> bool:
    return not any(hasattr(m, HOOKS_ATTR) for m in lm.layout.attention_modules)


@pytest.fixture(scope="module")
def enc(lm):
    return lm.encode(SHORT_PROMPT)


def _logits_with_o_proj_edit(lm, enc, layer, head, factor):
    """SDPA forward with the head's slice of the o_proj input multiplied by hand."""

    def pre_hook(module, args):
        x = args[0].clone()
        x[..., head * D : (head + 1) * D] *= factor
        return (x,)

    handle = lm.layout.out_projections[layer].register_forward_pre_hook(pre_hook)
    try:
        with attn_implementation(lm.model, "sdpa"):
            return lm.forward(enc)
    finally:
        handle.remove()


@pytest.mark.parametrize(("mode", "factor"), [("zero", 0.0), ("scale", 2.0), ("scale", 0.5)])
def test_zero_and_scale_equal_editing_o_proj_input(lm, enc, mode, factor):
    params = {} if mode == "zero" else {"factor": factor}
    with iv.make(mode, lm, heads=["L7H4"], **params):
        got = lm.forward(enc)
    ref = _logits_with_o_proj_edit(lm, enc, 7, 4, factor)
    assert (got - ref).abs().max() <= 1e-4
    assert (got - lm.forward(enc)).abs().max() > 1e-3  # it did change something
    assert _clean(lm)


def _eager_logits_with_zero_query(lm, enc, layer, head):
    """Eager attention with the head's query zeroed (q_proj output slice; RoPE keeps 0 at 0)."""

    def hook(module, args, out):
        out = out.clone()
        out[..., head * D : (head + 1) * D] = 0
        return out

    attn = lm.layout.attention_modules[layer]
    handle = attn.q_proj.register_forward_hook(hook)
    try:
        with attn_implementation(lm.model, "eager"):
            return lm.forward(enc)
    finally:
        handle.remove()


def test_uniform_equals_eager_with_zero_query(lm, enc):
    ref = _eager_logits_with_zero_query(lm, enc, 9, 2)
    with iv.UniformAblation(lm, ["L9H2"], eps=0.0):
        exact = lm.forward(enc)
    assert (exact - ref).abs().max() <= 1e-4
    with iv.UniformAblation(lm, ["L9H2"]):  # the papers' eps = 1e-5: nearly the same
        paper = lm.forward(enc)
    assert (paper - ref).abs().max() <= 1e-2


def test_uniform_ablation_keeps_the_other_heads_of_the_kv_group(lm, enc):
    with lm.capture(layers=[9], heads=[3, 4, 5]) as base:
        lm.forward(enc)
    with iv.UniformAblation(lm, ["L9H4"]), lm.capture(layers=[9], heads=[3, 4, 5]) as cap:
        lm.forward(enc)
    for h in (3, 5):  # same KV head (h // 3 == 1), untouched
        assert (cap.records.map(9, h) - base.records.map(9, h)).abs().max() <= 1e-6
    m = cap.records.map(9, 4)
    n = enc.n_tokens
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1).unsqueeze(1)
    assert (m - uniform).abs().max() <= 1e-3


def test_zero_ablation_keeps_the_other_heads_of_the_kv_group(lm, enc):
    with iv.ZeroAblation(lm, ["L9H4"]), lm.capture(layers=[9], maps=False, z=True) as cap:
        lm.forward(enc)
    with lm.capture(layers=[9], maps=False, z=True) as base:
        lm.forward(enc)
    z, z0 = cap.records[9].z[0], base.records[9].z[0]
    assert torch.count_nonzero(z[4]) == 0
    keep = [h for h in range(9) if h != 4]
    assert (z[keep] - z0[keep]).abs().max() <= 1e-5


def test_pasta_equals_eager_with_log_alpha_on_masked_scores(lm, enc):
    layer, head, spans, alpha = 10, 6, [(2, 5), (9, 11)], 0.01
    n = enc.n_tokens
    with lm.capture(layers=[layer], heads=[head], maps=False, qkv=True) as base:
        lm.forward(enc)  # q, k, v at the layer are unchanged by an edit at the same layer
    pasta = iv.Pasta(lm, [(layer, head)], spans=spans, n_prompt_tokens=n, alpha=alpha)
    with pasta, lm.capture(layers=[layer], heads=[head], z=True, qkv=True) as cap:
        lm.forward(enc)
    q, k, v = (getattr(base.records[layer], x)[0, 0].double() for x in ("q", "k", "v"))
    bias = torch.full((n,), math.log(alpha), dtype=torch.float64)
    for a, b in spans:
        bias[a:b] = 0.0
    scores = q @ k.T / math.sqrt(D) + bias
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    probs = scores.softmax(-1)
    assert (cap.records.map(layer, head).double() - probs).abs().max() <= 1e-5
    assert (cap.records[layer].z[0, 0].double() - probs @ v).abs().max() <= 1e-5


def test_act_hand_worked_example():
    """One query, three keys with p = (0.5, 0.3, 0.2); key 1 is a sink (score 0.3 > 0.25).

    ACT with beta = 0.4: p'_1 = 0.4 * 0.3 = 0.12; the other keys share the freed 0.18 in
    proportion: p'_0 = 0.5 * (1 - 0.12) / 0.7 = 0.628571..., p'_2 = 0.2 * 0.88 / 0.7 = 0.251428...
    With v_j = e_j the head's output is p' itself.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    import kernels
    from probes import AttentionCall

    cfg = LlamaConfig(
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        hidden_size=4,
        intermediate_size=8,
        vocab_size=10,
        head_dim=4,
    )
    lm = workbench.wrap_model(AutoModelForCausalLM.from_config(cfg), None, "tiny")
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([1.0, 0, 0, 0]).view(1, 1, 1, 4)
    k = torch.zeros(1, 1, 3, 4)
    k[0, 0, :, 0] = torch.log(p)  # score_j = q . k_j * scale = log p_j with scale = 1
    v = torch.eye(3, 4).view(1, 1, 3, 4)
    call = AttentionCall(
        layer=0,
        module=lm.layout.attention_modules[0],
        query=q,
        key=k,
        value=v,
        mask=None,
        causal=True,
        scaling=1.0,
    )
    act = iv.AttentionCalibration(lm, ["L0H0"], beta=0.4, threshold=0.25)
    act.edit(call, (0,))
    call.result = kernels.attention(q, k, v, scale=1.0, causal=True, stats=call.stats_request())
    out = act.edit_output(call, (0,), call.result.output)
    expected = torch.tensor([0.5 * 0.88 / 0.7, 0.12, 0.2 * 0.88 / 0.7, 0.0])
    assert torch.allclose(out[0, 0, 0], expected, atol=1e-6)


def test_act_on_the_real_model_changes_output_and_cleans_up(lm, enc):
    base = lm.forward(enc)
    heads = [(layer, h) for layer in (3, 4) for h in range(9)]
    with iv.AttentionCalibration(lm, heads) as act:
        got = lm.forward(enc)
    assert any(len(s[0]) for s in act.sinks.values())  # SmolLM2 has non-initial sinks here
    assert (got - base).abs().max() > 1e-4
    assert _clean(lm)


def test_temperature_one_is_identity_and_two_flattens(lm, enc):
    base = lm.forward(enc)
    with iv.Temperature(lm, ["L5H5"], temperature=1.0):
        same = lm.forward(enc)
    assert (same - base).abs().max() <= 1e-4
    with lm.capture(layers=[5], heads=[5]) as b:
        lm.forward(enc)
    with iv.Temperature(lm, ["L5H5"], temperature=2.0), lm.capture(layers=[5], heads=[5]) as t:
        lm.forward(enc)

    def entropy(m):
        return -(m * (m + 1e-30).log()).sum(-1).mean()

    assert entropy(t.records.map(5, 5)) > entropy(b.records.map(5, 5))


def test_focus_directions_roundtrip_and_effect(lm, enc, tmp_path):
    gen = torch.Generator().manual_seed(0)
    dirs = iv.FocusDirectionSet(
        {workbench.Head(6, 1): (torch.randn(D, generator=gen), torch.randn(D, generator=gen))},
        model=lm.info.name,
    )
    path = tmp_path / "focus.safetensors"
    dirs.save(path)
    loaded = iv.FocusDirectionSet.load(path)
    assert torch.equal(loaded.directions[workbench.Head(6, 1)][0], dirs.directions[(6, 1)][0])
    with lm.capture(layers=[6], heads=[1], maps=False, qkv=True) as base:
        lm.forward(enc)
    with (
        iv.FocusDirections(lm, loaded, scale=0.3),
        lm.capture(layers=[6], heads=[1], maps=False, qkv=True) as cap,
    ):
        lm.forward(enc)
    dq = dirs.directions[(6, 1)][0]
    assert (cap.records[6].q[0, 0] - (base.records[6].q[0, 0] + 0.3 * dq)).abs().max() <= 1e-5


def test_mean_ablation_replaces_z_by_the_reference_mean(lm, enc):
    means = iv.head_means(lm, ["A short reference prompt.", "Another one, a bit longer."])
    with (
        iv.MeanAblation(lm, ["L2H8"], means=means),
        lm.capture(layers=[2], maps=False, z=True) as cap,
    ):
        lm.forward(enc)
    z = cap.records[2].z[0, 8]  # (L, D)
    assert (z - means.means[2, 8]).abs().max() <= 1e-6
    # the reference mean is the plain average of z over all reference tokens
    zs = []
    for prompt in ["A short reference prompt.", "Another one, a bit longer."]:
        _, rec = lm.run_capture(prompt, layers=[2], heads=[8], maps=False, z=True)
        zs.append(rec[2].z[0, 0])
    assert (torch.cat(zs).mean(0) - means.means[2, 8]).abs().max() <= 1e-5


INTERVENTION_FACTORIES = {
    "zero": lambda lm, n: iv.ZeroAblation(lm, ["L3H1", "L8H7"]),
    "uniform": lambda lm, n: iv.UniformAblation(lm, ["L3H1", "L8H7"]),
    "scale": lambda lm, n: iv.ScaleAblation(lm, ["L4H0"], factor=3.0),
    "pasta": lambda lm, n: iv.Pasta(lm, ["L4H0", "L6H3"], spans=[(1, 3)], n_prompt_tokens=n),
    "act": lambda lm, n: iv.AttentionCalibration(lm, [(2, h) for h in range(9)]),
    "temperature": lambda lm, n: iv.Temperature(lm, ["L1H1"], temperature=0.3),
}


@pytest.mark.parametrize("name", sorted(INTERVENTION_FACTORIES))
def test_cached_generation_equals_stepwise_recomputation(lm, name):
    enc = lm.encode("My favourite colours are red, green and")
    n, steps = enc.n_tokens, 4
    intervention = INTERVENTION_FACTORIES[name](lm, n)
    with intervention, torch.no_grad():
        out = lm.model.generate(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=steps,
            do_sample=False,
            pad_token_id=2,
        )
    if name == "act":  # recompute with the sinks found on the prompt, not on longer prefixes
        sinks = intervention.sinks
        intervention = iv.AttentionCalibration(lm, intervention.head_list, sinks=sinks)
    ids = enc.input_ids
    for _ in range(steps):  # no cache: the whole sequence recomputed at every step
        with intervention, torch.no_grad():
            logits = lm.model(input_ids=ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    m = out.shape[1]  # generate stops early at the end-of-turn token
    assert m > n and torch.equal(out, ids[:, :m])
    assert _clean(lm)


def test_interventions_compose(lm, enc):
    with iv.ZeroAblation(lm, ["L5H0"]), iv.ScaleAblation(lm, ["L5H1"], factor=0.0):
        both = lm.forward(enc)
    with iv.ZeroAblation(lm, ["L5H0", "L5H1"]):
        one = lm.forward(enc)
    assert (both - one).abs().max() <= 1e-5


def test_removed_on_error(lm, enc):
    with pytest.raises(RuntimeError, match="inside"), iv.ZeroAblation(lm, ["L1H1"]):
        raise RuntimeError("inside")
    assert _clean(lm)


def test_measure_effects(lm):
    eff = iv.measure_effects(
        lm,
        "The capital of France is",
        iv.ZeroAblation(lm, ["L5H3"]),
        targets=[" Paris"],
        max_new_tokens=5,
    )
    df = eff.positions
    assert list(df["token"]) == lm.encode("The capital of France is").tokens
    assert (df["kl"] >= 0).all() and df["kl"].max() > 0
    assert set(eff.generations.columns) >= {"base_text", "intervened_text"}
    # KL checked against torch's own kl_div on the last position
    base = lm.forward("The capital of France is")[0, -1]
    with iv.ZeroAblation(lm, ["L5H3"]):
        new = lm.forward("The capital of France is")[0, -1]
    ref = torch.nn.functional.kl_div(
        new.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction="sum"
    )
    assert abs(df["kl"].iloc[-1] - ref.item()) <= 1e-4
    delta = df["delta[ Paris]"].iloc[-1]
    pid = lm.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    assert abs(delta - (new.log_softmax(-1)[pid] - base.log_softmax(-1)[pid]).item()) <= 1e-4
    identity = iv.measure_effects(
        lm, "Hello", iv.ScaleAblation(lm, ["L0H0"], factor=1.0), max_new_tokens=3
    )
    assert identity.positions["kl"].abs().max() <= 1e-6
    assert identity.generations["base_text"][0] == identity.generations["intervened_text"][0]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda lm: iv.ZeroAblation(lm, ["L99H0"]), "layer 99"),
        (lambda lm: iv.ZeroAblation(lm, ["L1H9"]), "head 9"),
        (lambda lm: iv.ZeroAblation(lm, []), "empty"),
        (lambda lm: iv.ZeroAblation(lm, ["bogus"]), "bad head id"),
        (lambda lm: iv.Pasta(lm, ["L1H1"], [(0, 3), (2, 5)], 10), "overlap"),
        (lambda lm: iv.Pasta(lm, ["L1H1"], [(8, 12)], 10), "outside"),
        (lambda lm: iv.Pasta(lm, ["L1H1"], [(1, 2)], 10, alpha=0.0), "alpha"),
        (lambda lm: iv.Pasta(lm, ["L1H1"], [(1, 2)], 10, alpha=-1), "alpha"),
        (lambda lm: iv.MeanAblation(lm, ["L1H1"]), "reference"),
        (lambda lm: iv.Temperature(lm, ["L1H1"], temperature=0), "temperature"),
        (lambda lm: iv.pasta_on_text(lm, ["L1H1"], "hello world", "absent"), "does not occur"),
        (lambda lm: iv.make("nope", lm, heads=["L1H1"]), "unknown intervention"),
    ],
)
def test_bad_input(lm, build, match):
    with pytest.raises(workbench.WorkbenchError, match=match):
        build(lm)


def test_pasta_char_spans_map_to_tokens(lm):
    prompt = "Alice lives in Paris. Bob lives in Rome."
    pasta = iv.pasta_on_text(lm, ["L1H1"], prompt, "Bob lives in Rome")
    tokens = lm.encode(prompt).tokens
    ((a, b),) = pasta.spans
    assert "".join(tokens[a:b]).strip() == "Bob lives in Rome"

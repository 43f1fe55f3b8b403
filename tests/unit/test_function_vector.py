"""Function-vector heads on tiny models (Todd et al. 2024): the indirect effect, the mean head
outputs, the function vector and its intervention, each against an independent computation.

The hand-built model's numbers are worked out by hand in the comments: one layer whose
attention is uniform (zero queries and keys), values that are the (scaled) one-hot tokens, an
identity output projection and no MLP, so each head's output is a token histogram and the
last position's residual is written down directly. The random tiny Llama (GQA) is checked
against transformers' eager attention with the head patched by a plain torch hook on the
output projection's input, one prompt at a time, no KV cache.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import workbench
from tests.conftest import attn_implementation, no_hooks_left
from tests.tiny_models import tiny_model
from workbench.analyzers.function_vector import (
    assemble_function_vector,
    icl_data,
    icl_prompts,
    split_pairs,
    task_list,
)
from workbench.analyzers.fv_runs import indirect_effects, last_positions
from workbench.interventions import INTERVENTIONS, InterventionArgumentError, make
from workbench.interventions.function_vector import FunctionVector
from workbench.lm import Encoded


class PadOnly:
    """What the batching needs of a tokenizer: a pad id."""

    pad_token_id = 0
    eos_token_id = 0


def encoded(ids: list[int]) -> Encoded:
    t = torch.tensor([ids])
    return Encoded(t, torch.ones_like(t), [str(i) for i in ids], " ".join(map(str, ids)), False)


def hand_built_lm() -> workbench.LoadedModel:
    """Vocabulary 4 = width 4; two heads of width 2 (head 0 reads dims 0-1, head 1 dims 2-3).

    q = k = 0: every query attends uniformly to itself and all earlier tokens. The input
    RMSNorm maps e_s to e_s / sqrt(1/4) = 2 e_s and W_V = I, so head 0 outputs 2 x (share of
    tokens 0 and 1), head 1 2 x (share of tokens 2 and 3); W_O = I, no MLP (down_proj = 0),
    W_U = I: the last position's logits are r / rms(r), r = e_last + (z_0, z_1).
    """
    cfg = LlamaConfig(
        vocab_size=4,
        hidden_size=4,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=2,
        rms_norm_eps=1e-12,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    eye = torch.eye(4)
    layer = model.model.layers[0]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(eye)
        model.lm_head.weight.copy_(eye)
        layer.self_attn.q_proj.weight.zero_()
        layer.self_attn.k_proj.weight.zero_()
        layer.self_attn.v_proj.weight.copy_(eye)
        layer.self_attn.o_proj.weight.copy_(eye)
        layer.mlp.down_proj.weight.zero_()
    return workbench.wrap_model(model, tokenizer=PadOnly(), name="hand-built")


def p_of(residual: list[float], token: int) -> float:
    """softmax(r / rms(r))[token], written out."""
    rms = math.sqrt(sum(x * x for x in residual) / len(residual))
    exps = [math.exp(x / rms) for x in residual]
    return exps[token] / sum(exps)


def test_mean_outputs_and_indirect_effect_worked_by_hand():
    lm = hand_built_lm()
    # Clean prompts [0, 0, 2] and [0, 2] (answer 0 for both):
    #   [0, 0, 2]: shares (2/3, 0, 1/3, 0) -> z_0 = (4/3, 0), z_1 = (2/3, 0)
    #   [0, 2]:    shares (1/2, 0, 1/2, 0) -> z_0 = (1, 0),   z_1 = (1, 0)
    #   means: z_0 = (7/6, 0), z_1 = (5/6, 0)
    logp, hit, z = last_positions(lm, [encoded([0, 0, 2]), encoded([0, 2])], [0, 0], z=True)
    assert z.shape == (2, 1, 2, 2)
    assert z[0, 0].flatten().tolist() == pytest.approx([4 / 3, 0, 2 / 3, 0], abs=1e-6)
    assert z[1, 0].flatten().tolist() == pytest.approx([1, 0, 1, 0], abs=1e-6)
    # [0, 0, 2]: r = e_2 + (4/3, 0, 2/3, 0) = (4/3, 0, 5/3, 0): token 2 wins, not the answer 0
    assert logp[0] == pytest.approx(math.log(p_of([4 / 3, 0, 5 / 3, 0], 0)), abs=1e-6)
    assert hit.tolist() == [0.0, 0.0]  # [0, 2]: r = (1, 0, 2, 0): token 2 again
    means = z.mean(0, keepdim=True)  # (1, 1, 2, 2)

    # Corrupted prompt [0, 1, 1, 3], answer 0: shares (1/4, 2/4, 0, 1/4)
    #   z_0 = (1/2, 1), z_1 = (0, 1/2); r = e_3 + (1/2, 1, 0, 1/2) = (1/2, 1, 0, 3/2)
    #   head 0 := (7/6, 0): r = (7/6, 0, 0, 3/2);  head 1 := (5/6, 0): r = (1/2, 1, 5/6, 1)
    base = p_of([0.5, 1, 0, 1.5], 0)
    expected = [p_of([7 / 6, 0, 0, 1.5], 0) - base, p_of([0.5, 1, 5 / 6, 1], 0) - base]
    ie, got_base, scan = indirect_effects(lm, [encoded([0, 1, 1, 3])], [0], means)
    assert scan.done == 1 and got_base.tolist() == pytest.approx([base], abs=1e-6)
    assert ie[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] > 0.05 > abs(expected[1])  # head 0 carries the answer here
    assert no_hooks_left(lm)


@pytest.fixture(scope="module")
def tiny_lm():
    return workbench.wrap_model(tiny_model("llama", seed=3), tokenizer=PadOnly(), name="tiny")


def eager_patched_prob(lm, ids, answer, layer, head, value) -> float:
    """P(answer) at the last position with head ``(layer, head)``'s last-position output set
    to ``value``: eager attention, one prompt, the o_proj input edited by a plain hook."""
    d = lm.info.head_dim
    o_proj = lm.model.model.layers[layer].self_attn.o_proj

    def edit(module, args):
        x = args[0].clone()
        x[:, -1, head * d : (head + 1) * d] = value
        return (x,)

    handle = None if value is None else o_proj.register_forward_pre_hook(edit)
    try:
        with attn_implementation(lm.model, "eager"), torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    finally:
        if handle is not None:
            handle.remove()
    return float(torch.softmax(logits, -1)[answer])


def test_indirect_effects_equal_an_eager_hook_per_prompt(tiny_lm):
    """Right-padded batches of different lengths, KV cache, all heads of a layer per forward
    (GQA: 4 query heads on 2 KV heads) vs one eager forward per prompt and head."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (6, 9, 4)]
    answers = [17, 200, 5]
    info = tiny_lm.info
    means = torch.randn(3, info.n_layers, info.n_heads, info.head_dim, generator=gen)
    encs = [encoded(p) for p in prompts]
    ie, base, _ = indirect_effects(tiny_lm, encs, answers, means, layers=[1, 3], batch_size=2)
    assert torch.isnan(ie[:, [0, 2]]).all()  # layers not asked for
    for i, (ids, answer) in enumerate(zip(prompts, answers, strict=True)):
        p0 = eager_patched_prob(tiny_lm, ids, answer, 0, 0, None)
        assert float(base[i]) == pytest.approx(p0, abs=1e-6)
        for layer in (1, 3):
            for head in range(info.n_heads):
                p1 = eager_patched_prob(tiny_lm, ids, answer, layer, head, means[i, layer, head])
                assert float(ie[i, layer, head]) == pytest.approx(p1 - p0, abs=1e-6)
    assert no_hooks_left(tiny_lm)


def test_last_token_outputs_equal_o_proj_inputs(tiny_lm):
    prompts = [[5, 9, 31, 4, 77], [8, 8, 100]]
    _, _, z = last_positions(tiny_lm, [encoded(p) for p in prompts], [1, 2], batch_size=2, z=True)
    d = tiny_lm.info.head_dim
    for i, ids in enumerate(prompts):
        seen: dict[int, torch.Tensor] = {}
        handles = [
            block.self_attn.o_proj.register_forward_pre_hook(
                lambda m, a, layer=layer, seen=seen: seen.__setitem__(layer, a[0][0, -1].clone())
            )
            for layer, block in enumerate(tiny_lm.model.model.layers)
        ]
        try:
            with attn_implementation(tiny_lm.model, "eager"), torch.no_grad():
                tiny_lm.model(input_ids=torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        for layer, flat in seen.items():
            assert torch.allclose(z[i, layer], flat.view(-1, d), atol=1e-5)


def test_function_vector_is_the_sum_of_o_proj_slices(tiny_lm):
    """As the reference: each head's mean placed in its slot of a zero o_proj input."""
    info = tiny_lm.info
    means = torch.randn(info.n_layers, info.n_heads, info.head_dim)
    heads = [(0, 1), (2, 3), (3, 0)]
    want = torch.zeros(info.n_heads * info.head_dim)
    for layer, head in heads:
        x = torch.zeros(info.n_heads * info.head_dim)
        d = info.head_dim
        x[head * d : (head + 1) * d] = means[layer, head]
        with torch.no_grad():
            want += tiny_lm.model.model.layers[layer].self_attn.o_proj(x)
    got = assemble_function_vector(tiny_lm, means, heads)
    assert torch.allclose(got.float(), want, atol=1e-5)


def test_function_vector_intervention_adds_the_vector_after_attention(tiny_lm):
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[4, 9, 16, 25, 36, 49]])
    layer = 2

    def add(module, args, output):
        out = output[0].clone()
        out[:, -1] += 0.5 * vector
        return (out, *output[1:])

    handle = tiny_lm.model.model.layers[layer].self_attn.register_forward_hook(add)
    try:
        with attn_implementation(tiny_lm.model, "eager"), torch.no_grad():
            want = tiny_lm.model(input_ids=ids).logits
    finally:
        handle.remove()
    with make("function_vector", tiny_lm, vector=vector, layer=layer, scale=0.5), torch.no_grad():
        got = tiny_lm.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
    assert not torch.allclose(plain[0, -1], want[0, -1], atol=1e-3)  # it did change something
    assert torch.allclose(plain[0, :-1], want[0, :-1], atol=1e-5)  # only the last position
    assert INTERVENTIONS["function_vector"] is FunctionVector and no_hooks_left(tiny_lm)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"vector": torch.zeros(63), "layer": 0}, "vector must be a 1-D tensor of 64"),
        ({"vector": torch.full((64,), math.nan), "layer": 0}, "vector holds 64 NaN"),
        ({"vector": "hot", "layer": 0}, "vector"),
        ({"vector": torch.zeros(64), "layer": 4}, "layer must be an integer in 0..3, got 4"),
        ({"vector": torch.zeros(64), "layer": 1.0}, "layer must be an integer"),
        ({"vector": torch.zeros(64), "layer": 0, "scale": math.inf}, "scale must be a finite"),
    ],
)
def test_function_vector_intervention_refuses_bad_arguments(tiny_lm, kwargs, phrase):
    with pytest.raises(InterventionArgumentError, match=phrase):
        FunctionVector(tiny_lm, **kwargs)


def test_vector_outside_the_output_projection_is_refused():
    model = tiny_model("llama", seed=4)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[:, :16] = 0  # head 0 writes nothing
        model.model.layers[1].self_attn.o_proj.weight[:, 16:] = 0.01 * torch.eye(64)[:, :48]
    lm = workbench.wrap_model(model, tokenizer=PadOnly(), name="rank-48")
    inside = torch.zeros(64)
    inside[:48] = 1.0
    FunctionVector(lm, inside, 1)  # reachable: the first 48 directions
    with pytest.raises(InterventionArgumentError, match="cannot write it"):
        FunctionVector(lm, torch.ones(64), 1)


# -- tasks and prompts ---------------------------------------------------------------------------
def test_bundled_tasks_and_the_task_check():
    data = icl_data()
    assert {"antonyms", "country_capital", "capitalize", "present_past"} <= set(data["tasks"])
    for name, task in data["tasks"].items():
        inputs = [x for x, _ in task["pairs"]]
        assert len(inputs) == len(set(inputs)) >= 30, name  # every input has one answer
    assert task_list("tasks", None, None) is None
    assert task_list("tasks", ["antonyms", "antonyms"], None) == ["antonyms"]
    for bad in ("antonyms", [], ["planets"], [3], {"antonyms": 1}):
        with pytest.raises(ValueError, match="tasks"):
            task_list("tasks", bad, None)


def test_prompts_follow_the_template_and_shuffle_only_labels():
    data = icl_data()
    pairs = data["tasks"]["antonyms"]["pairs"]
    examples, queries = split_pairs("antonyms", pairs, seed=0)
    assert sorted(map(tuple, examples + queries)) == sorted(map(tuple, pairs))
    assert len(queries) == round(0.3 * len(pairs))
    assert split_pairs("antonyms", pairs, seed=0) == (examples, queries)  # seeded
    kw = {"n": 4, "n_shots": 5, "seed": 1}
    clean = icl_prompts("antonyms", examples, queries, data["template"], shuffle=False, **kw)
    dirty = icl_prompts("antonyms", examples, queries, data["template"], shuffle=True, **kw)
    lookup = dict(map(tuple, pairs))
    for a, b in zip(clean, dirty, strict=True):
        shots = a["prompt"].split("\n\n")
        assert len(shots) == 6 and shots[-1].startswith("Q: ") and shots[-1].endswith("\nA:")
        query = shots[-1][3:-3]
        assert a["answer"] == " " + lookup[query] and [query] == [
            q for q, _ in queries if q == query
        ]
        for shot in shots[:-1]:  # "Q: x\nA: y", y the true label of x
            x, y = shot[3:].split("\nA: ")
            assert lookup[x] == y
        # the shuffled prompt: examples' labels permuted among them, the query's answer true
        got = [s[3:].split("\nA: ") for s in b["prompt"].split("\n\n")[:-1]]
        assert sorted(y for _, y in got) == sorted(lookup[x] for x, _ in got)
        assert all([x, lookup[x]] in examples for x, _ in got)
        assert b["answer"] == " " + lookup[b["prompt"].split("\n\n")[-1][3:-3]]
        assert b["task"] == "antonyms"

"""Function-vector heads on the embedded model, against an eager reference (Todd et al. 2024).

The reference path is transformers' own eager attention, one prompt per forward, no KV cache,
with each head's last-position output read and replaced by plain torch hooks on the output
projection's input (as the paper's code edits ``o_proj``'s input), and the function vector
added by a plain forward hook on the attention block's output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import attn_implementation, no_hooks_left
from workbench.analyzers import analyze
from workbench.analyzers.function_vector import (
    icl_data,
    icl_prompts,
    single_token_pairs,
    split_pairs,
)
from workbench.analyzers.fv_runs import answer_token, indirect_effects, last_positions

pytestmark = pytest.mark.model

LAYERS = (14, 20, 24)
HEADS = ((14, 1), (20, 5), (20, 0), (24, 4))


def o_proj(lm, layer):
    return lm.model.model.layers[layer].self_attn.o_proj


def eager_last(lm, prompt: str, answer: int, patch=None, add=None):
    """Eager forward of one prompt: ``(P(answer) at the last position, {layer: o_proj input
    at the last position (H*D,)})``. ``patch = (layer, head, value)`` replaces that head's
    slice of the o_proj input at the last position; ``add = (layer, vector)`` adds the vector
    to that layer's attention output at the last position."""
    seen, handles, d = {}, [], lm.info.head_dim

    def grab(layer):
        def hook(module, args):
            x = args[0]
            if patch is not None and patch[0] == layer:
                x = x.clone()
                x[:, -1, patch[1] * d : (patch[1] + 1) * d] = patch[2]
            seen[layer] = x[0, -1].detach().clone()
            return (x,)

        return hook

    def plus(module, args, output):
        out = output[0].clone()
        out[:, -1] += add[1].to(out)
        return (out, *output[1:])

    for layer in range(lm.info.n_layers):
        handles.append(o_proj(lm, layer).register_forward_pre_hook(grab(layer)))
    if add is not None:
        handles.append(lm.model.model.layers[add[0]].self_attn.register_forward_hook(plus))
    try:
        ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with attn_implementation(lm.model, "eager"), torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, -1].double()
    finally:
        for h in handles:
            h.remove()
    return float(torch.softmax(logits, -1)[answer]), seen


def task_prompts(task: str, n_clean: int, n_shuffled: int):
    data = icl_data()
    examples, queries = split_pairs(task, data["tasks"][task]["pairs"], seed=0)
    kw = {"n_shots": 5, "seed": 0}
    clean = icl_prompts(task, examples, queries, data["template"], n=n_clean, shuffle=False, **kw)
    dirty = icl_prompts(task, examples, queries, data["template"], n=n_shuffled, shuffle=True, **kw)
    return clean, dirty, queries


def test_every_bundled_answer_is_one_token_for_smollm2(lm):
    data = icl_data()
    for name, task in data["tasks"].items():
        kept, dropped = single_token_pairs(lm, task["pairs"], data["template"]["answer"])
        assert not dropped, (name, dropped)
        for x, y in kept[:5]:  # in context, after "A:", the answer is the same single token
            prompt = data["template"]["query"].format(input=x)
            alone = lm.tokenizer(" " + y, add_special_tokens=False)["input_ids"]
            assert answer_token(lm, prompt, " " + y) == alone[0]


def test_means_and_indirect_effects_equal_the_eager_reference(lm):
    clean, dirty = [], []
    for task in ("antonyms", "country_capital"):
        c, d, _ = task_prompts(task, 3, 2)
        clean.append(c)
        dirty += d
    info = lm.info
    means = torch.zeros(len(dirty), info.n_layers, info.n_heads, info.head_dim)
    for t, items in enumerate(clean):
        ids = [answer_token(lm, it["prompt"], it["answer"]) for it in items]
        _, _, z = last_positions(lm, [lm.encode(it["prompt"]) for it in items], ids, z=True)
        eager = torch.stack(
            [
                torch.stack([eager_last(lm, it["prompt"], a)[1][layer] for layer in LAYERS])
                for it, a in zip(items, ids, strict=True)
            ]
        ).view(len(items), len(LAYERS), info.n_heads, info.head_dim)
        assert torch.allclose(z[:, list(LAYERS)], eager, atol=1e-5)  # the means' inputs
        means[2 * t : 2 * t + 2, list(LAYERS)] = eager.mean(0)  # the reference's mean
    answers = [answer_token(lm, it["prompt"], it["answer"]) for it in dirty]
    encs = [lm.encode(it["prompt"]) for it in dirty]
    ie, base, _ = indirect_effects(lm, encs, answers, means, layers=LAYERS, batch_size=3)
    for i, (item, answer) in enumerate(zip(dirty, answers, strict=True)):
        p0, _ = eager_last(lm, item["prompt"], answer)
        assert abs(float(base[i]) - p0) <= 1e-5
        for layer, head in HEADS:
            p1, _ = eager_last(
                lm, item["prompt"], answer, patch=(layer, head, means[i, layer, head])
            )
            assert abs(float(ie[i, layer, head]) - (p1 - p0)) <= 1e-5, (i, layer, head)
    assert no_hooks_left(lm)


def test_table_function_vector_and_zero_shot_effect(lm):
    kw = dict(n_prompts=2, n_mean=3, n_zero_shot=4, top_k=3, draws=2, causal_prompts=2)
    df = analyze("function_vector", lm, progress=False, tasks=["antonyms"], **kw)
    assert len(df) == 270
    assert list(df.columns[:6]) == ["layer", "head", "head_id", "score", "score_lo", "score_hi"]
    assert np.allclose(df["score"], df["ie_antonyms"])  # one task: the score is its IE
    per_item = np.asarray(df.attrs["per_item"])
    assert per_item.shape == (2, 30, 9) and np.allclose(per_item.mean(0).ravel(), df["score"])
    assert df.attrs["tasks"] == {"antonyms": {"pairs": 76, "dropped": []}}

    fv = df.attrs["function_vector"]
    assert fv["layer"] == 15 and fv["heads"] == list(df.nlargest(3, "score")["head_id"])
    clean, _, queries = task_prompts("antonyms", 3, 0)
    ids = [answer_token(lm, it["prompt"], it["answer"]) for it in clean]
    seen = [eager_last(lm, it["prompt"], a)[1] for it, a in zip(clean, ids, strict=True)]
    want = torch.zeros(576, dtype=torch.float64)
    d = lm.info.head_dim
    for head_id in fv["heads"]:
        layer, head = (int(x) for x in head_id[1:].split("H"))
        x = torch.zeros(576)
        x[head * d : (head + 1) * d] = torch.stack([s[layer] for s in seen]).mean(0)[
            head * d : (head + 1) * d
        ]
        with torch.no_grad():
            want += o_proj(lm, layer)(x).double()
    got = torch.tensor(fv["vectors"]["antonyms"], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))

    zero = df.attrs["zero_shot"]["antonyms"]
    template = icl_data()["template"]
    plain, added = [], []
    for x, y in queries[:4]:
        prompt = template["query"].format(input=x)
        answer = answer_token(lm, prompt, " " + y)
        plain.append(eager_last(lm, prompt, answer)[0])
        added.append(eager_last(lm, prompt, answer, add=(15, want))[0])
    assert zero["items"] == 4
    assert zero["probability"] == pytest.approx(np.mean(plain), abs=1e-5)
    assert zero["probability_fv"] == pytest.approx(np.mean(added), abs=1e-5)
    causal = df.attrs["causal"]
    assert causal["items"] == 2 and causal["k"] == 3 and causal["base"] < 0
    assert no_hooks_left(lm)

"""Gated attention (AFMoE row): the sinks analyzer's mean output gate per head equals the mean
of sigmoid(gate_proj(x)) read by a plain torch hook written here, one prompt at a time, while
the analyzer runs prompts of different lengths in one padded batch; models without gates say
so; analyses that read head outputs through W_O alone refuse gated models."""

from __future__ import annotations

import pytest
import torch

import workbench
from tests.tiny_models import tiny_model
from workbench.analyzers import analyze
from workbench.errors import UnsupportedArchitectureError

PROMPTS = [
    "The cat sat on the mat and looked at the door for a long time.",
    "One two three.",
    "A lighthouse keeper climbed the stairs every evening to light the lamp.",
]

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gated_lm(lm):
    """A tiny random AFMoE model with the embedded model's tokenizer (its vocabulary size)."""
    model = tiny_model("afmoe", vocab_size=len(lm.tokenizer))
    return workbench.wrap_model(model, tokenizer=lm.tokenizer, name="tiny-afmoe")


def gate_means_by_hand(gated_lm) -> torch.Tensor:
    """(layers, heads): mean over prompts of the mean over positions and head dims of
    sigmoid(g), g the output of each attention module's gate_proj, one prompt per forward."""
    model = gated_lm.model
    n_heads = model.config.num_attention_heads
    per_prompt = []
    for prompt in PROMPTS:
        seen = {}
        handles = [
            layer.self_attn.gate_proj.register_forward_hook(
                lambda _m, _a, out, i=i, seen=seen: seen.__setitem__(i, out.detach().double())
            )
            for i, layer in enumerate(model.model.layers)
        ]
        try:
            ids = gated_lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
        rows = []
        for i in range(len(model.model.layers)):
            g = torch.sigmoid(seen[i])[0]  # (L, H * D)
            rows.append(g.view(g.shape[0], n_heads, -1).mean(dim=(0, 2)))
        per_prompt.append(torch.stack(rows))
    return torch.stack(per_prompt).mean(0)


def test_mean_output_gate_per_head_equals_a_hand_hook_under_padding(gated_lm):
    df = analyze("sinks", gated_lm, PROMPTS, progress=False, causal=False, batch_size=3)
    assert df.attrs["output_gates"] is True
    got = torch.tensor(df.sort_values(["layer", "head"])["output_gate_mean"].to_numpy()).view(4, -1)
    want = gate_means_by_hand(gated_lm)
    assert want.shape == got.shape == (4, 4)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    # the gates are not trivially 0.5 (random weights, initializer_range 0.2): a real check
    assert (want - 0.5).abs().max() > 0.01


def test_a_model_without_gates_says_so(lm):
    df = analyze("sinks", lm, PROMPTS[:2], progress=False, causal=False)
    assert df.attrs["output_gates"] is False and "output_gate_mean" not in df.columns


def test_weight_based_head_readouts_refuse_gated_models(gated_lm):
    with pytest.raises(UnsupportedArchitectureError, match="gated attention"):
        analyze("copy_suppression", gated_lm, progress=False, causal=False, n_tokens=20)
    from workbench.analyzers.logit_attribution import head_out_weights

    with pytest.raises(UnsupportedArchitectureError, match="afmoe"):
        head_out_weights(gated_lm, 0)

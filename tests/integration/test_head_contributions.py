"""Direct logit attribution per head and per source position, recomputed by hand from
transformers' eager attention maps, the value projection's output and the weights."""

from __future__ import annotations

import copy

import pytest
import torch

import workbench
from probes.checks import ArgumentError
from tests.conftest import attn_implementation
from tests.tiny_models import tiny_model
from workbench.head_contributions import head_contributions
from workbench.lm import Encoded

IDS = torch.tensor([[1, 5, 7, 3, 9, 5, 7, 2, 11]])
TARGET, FOIL = 3, 4


def encoded(ids: torch.Tensor) -> Encoded:
    return Encoded(ids, torch.ones_like(ids), [str(int(i)) for i in ids[0]], "", False)


def by_hand(model, ids, target: int, foil: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_layers, H, L) contributions and (V,) last logits of a Llama-family eager ``model``:
    A[h, -1, j] * (v_j W_O^h) . (w * s * (W_U[target] - W_U[foil]))."""
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = cfg.hidden_size // n_heads
    values, resid = [], {}
    handles = [
        layer.self_attn.v_proj.register_forward_hook(lambda m, a, out: values.append(out[0]))
        for layer in model.model.layers
    ]
    handles.append(model.model.norm.register_forward_pre_hook(lambda m, a: resid.update(x=a[0])))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    x = resid["x"][0, -1].double()
    norm = model.model.norm
    s = 1.0 / torch.sqrt(x.pow(2).mean() + norm.variance_epsilon)
    w_u = model.lm_head.weight.detach().double()
    u = w_u[target] - (w_u[foil] if foil is not None else 0)
    direction = s * norm.weight.detach().double() * u
    n = ids.shape[1]
    expected = torch.zeros(cfg.num_hidden_layers, n_heads, n, dtype=torch.float64)
    for layer, block in enumerate(model.model.layers):
        w_o = block.self_attn.o_proj.weight.detach().double()  # (d, H*D)
        v = values[layer].double().view(n, n_kv, dim)
        for h in range(n_heads):
            write = v[:, h // (n_heads // n_kv)] @ w_o[:, h * dim : (h + 1) * dim].T  # (L, d)
            row = out.attentions[layer][0, h, -1].double()  # (L,)
            expected[layer, h] = row * (write @ direction)
    return expected, out.logits[0, -1].double()


@pytest.mark.parametrize("foil", [None, FOIL])
def test_per_position_hand_worked_tiny(foil):
    ref = tiny_model("llama", attn_implementation="eager")
    lm = workbench.wrap_model(copy.deepcopy(ref), tokenizer=None, name="tiny")
    res = head_contributions(lm, encoded(IDS), target=TARGET, foil=foil)
    expected, logits = by_hand(ref, IDS, TARGET, foil)
    assert torch.allclose(res.by_position, expected, atol=1e-5)
    assert torch.allclose(res.dla, expected.sum(-1), atol=1e-5)  # the analyzer's per-head DLA
    assert res.closure < 1e-5
    want = float(logits[TARGET] - (logits[FOIL] if foil is not None else 0))
    assert res.metric == pytest.approx(want, abs=1e-5)
    assert (res.target_id, res.foil_id) == (TARGET, foil)


def test_default_target_and_refusals_tiny():
    ref = tiny_model("llama", attn_implementation="eager")
    lm = workbench.wrap_model(copy.deepcopy(ref), tokenizer=None, name="tiny")
    res = head_contributions(lm, encoded(IDS))
    with torch.no_grad():
        assert res.target_id == int(ref(input_ids=IDS).logits[0, -1].argmax())
    with pytest.raises(ArgumentError, match="foil is the same token as target"):
        head_contributions(lm, encoded(IDS), target=3, foil=3)
    with pytest.raises(ArgumentError, match=r"target must be an integer in 0\.\.255, got -1"):
        head_contributions(lm, encoded(IDS), target=-1)


@pytest.mark.model
def test_ioi_real(lm):
    """SmolLM2: per-position contributions of two layers equal the eager recomputation; every
    head's contributions sum to its DLA; the name mover L23H3 is the top head for ' Mary' vs
    ' John' and writes it from the ' Mary' token (position 1)."""
    prompt = "When Mary and John went to the store, John gave a drink to"
    res = head_contributions(lm, prompt, target=" Mary", foil=" John")
    assert res.closure < 1e-4
    enc = lm.encode(prompt)
    mary, john = res.target_id, res.foil_id
    with attn_implementation(lm.model, "eager"):
        expected, logits = by_hand(lm.model, enc.input_ids, mary, john)
    assert res.metric == pytest.approx(float(logits[mary] - logits[john]), abs=1e-4)
    assert torch.allclose(res.by_position, expected, atol=1e-4)
    top = divmod(int(res.dla.abs().argmax()), lm.info.n_heads)
    assert top == (23, 3)
    assert int(res.by_position[23, 3].argmax()) == 9 and enc.tokens[9] == " John"

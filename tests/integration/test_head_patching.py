"""Per-head activation patching (clean -> corrupted), checked against one-head-at-a-time patching
done by hand with hooks on the output projection's input of transformers' eager model (no
workbench intervention, no batching, no suffix runs), and its normalisation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import workbench
from probes.checks import ArgumentError
from tests.tiny_models import tiny_model
from workbench.head_patching import normalize, patch_heads
from workbench.lm import Encoded

CLEAN = torch.tensor([[1, 5, 7, 3, 9, 5, 7, 2, 11]])
CORRUPT = torch.tensor([[1, 5, 8, 3, 9, 6, 7, 2, 11]])
ANSWER, FOIL = 3, 4


def encoded(ids: torch.Tensor) -> Encoded:
    return Encoded(ids, torch.ones_like(ids), [str(int(i)) for i in ids[0]], "", False)


def o_proj_inputs(model, ids) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's output-projection input (1, L, H*D) and the last-position logits."""
    kept: list[torch.Tensor] = []
    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: kept.append(a[0].clone()))
        for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()
    return kept, logits.double()


def patched_by_hand(model, layer, head, dim, clean_inputs, ids) -> torch.Tensor:
    """Last-position logits of ``ids`` with head ``(layer, head)``'s output taken from
    ``clean_inputs`` at every position."""

    def swap(module, args):
        x = args[0].clone()
        x[..., head * dim : (head + 1) * dim] = clean_inputs[layer][
            ..., head * dim : (head + 1) * dim
        ]
        return (x,)

    handle = model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(swap)
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits[0, -1].double()
    finally:
        handle.remove()


def metric(logits: torch.Tensor, name: str) -> float:
    if name == "logit_diff":
        return float(logits[ANSWER] - logits[FOIL])
    return float(torch.log_softmax(logits, -1)[ANSWER])


@pytest.mark.parametrize("name", ["logit_diff", "logprob"])
def test_every_head_equals_hand_patching_tiny(name):
    ref = tiny_model("llama", attn_implementation="eager")
    lm = workbench.wrap_model(copy.deepcopy(ref), tokenizer=None, name="tiny")
    dim = ref.config.hidden_size // ref.config.num_attention_heads
    clean_inputs, clean_logits = o_proj_inputs(ref, CLEAN)
    _, corrupt_logits = o_proj_inputs(ref, CORRUPT)
    res = patch_heads(lm, encoded(CLEAN), encoded(CORRUPT), metric=name, answer=ANSWER, foil=FOIL)
    clean, corrupt = metric(clean_logits, name), metric(corrupt_logits, name)
    assert res.clean == pytest.approx(clean, abs=1e-5)
    assert res.corrupted == pytest.approx(corrupt, abs=1e-5)
    assert res.foil_id == (FOIL if name == "logit_diff" else None)
    n_layers, n_heads = ref.config.num_hidden_layers, ref.config.num_attention_heads
    expected = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for layer in range(n_layers):
        for head in range(n_heads):
            logits = patched_by_hand(ref, layer, head, dim, clean_inputs, CORRUPT)
            expected[layer, head] = metric(logits, name)
    assert torch.allclose(res.patched, expected, atol=1e-5), (res.patched, expected)
    assert torch.allclose(res.normalized, (expected - corrupt) / (clean - corrupt), atol=1e-4)
    assert (res.patched - corrupt).abs().max() > 1e-2  # the heads matter on this pair
    assert res.layers == list(range(n_layers))


def test_clean_equals_corrupted_gives_nan_tiny():
    """Nothing to restore: every patched metric is the clean one and the normalisation is NaN
    (not a division by zero and not 0)."""
    lm = workbench.wrap_model(tiny_model("llama"), tokenizer=None, name="tiny")
    res = patch_heads(lm, encoded(CLEAN), encoded(CLEAN), answer=ANSWER, foil=FOIL)
    assert res.clean == res.corrupted
    assert torch.allclose(res.patched, torch.full_like(res.patched, res.clean), atol=1e-5)
    assert torch.isnan(res.normalized).all()
    assert torch.isnan(normalize(torch.ones(2, 2), 1.0, 1.0)).all()
    assert normalize(torch.tensor([3.0]), 5.0, 1.0).tolist() == [0.5]  # (3 - 1) / (5 - 1)


def test_refusals_tiny():
    lm = workbench.wrap_model(tiny_model("llama"), tokenizer=None, name="tiny")
    shorter = CORRUPT[:, :-1]
    with pytest.raises(ArgumentError, match="clean prompt has 9 tokens and the corrupted one 8"):
        patch_heads(lm, encoded(CLEAN), encoded(shorter))
    with pytest.raises(ArgumentError, match="metric must be one of"):
        patch_heads(lm, encoded(CLEAN), encoded(CORRUPT), metric="kl")
    with pytest.raises(ArgumentError, match="foil is the same token as answer"):
        patch_heads(lm, encoded(CLEAN), encoded(CORRUPT), answer=3, foil=3)
    with pytest.raises(workbench.LayerOutOfRangeError, match=r"0\.\.3"):
        patch_heads(lm, encoded(CLEAN), encoded(CORRUPT), layers=[4])


def test_layers_subset_and_progress_tiny():
    lm = workbench.wrap_model(tiny_model("llama"), tokenizer=None, name="tiny")
    seen = []
    res = patch_heads(
        lm, encoded(CLEAN), encoded(CORRUPT), layers=[2], progress=lambda *a: seen.append(a)
    )
    assert res.layers == [2]
    assert torch.isnan(res.patched[[0, 1, 3]]).all() and not torch.isnan(res.patched[2]).any()
    assert seen[0][1:] == (0, 1) and seen[-1][1:] == (1, 1)


@pytest.mark.model
def test_ioi_pair_real(lm):
    """SmolLM2 on the IOI pair (the subject name swapped): two layers checked head by head
    against hand patching with eager attention; the name-mover head L23H3 restores most of
    the logit difference on its own."""
    from tests.conftest import attn_implementation

    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    res = patch_heads(lm, clean, corrupt, answer=" Mary", foil=" John", layers=[23, 29])
    mary, john = (
        lm.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John")
    )
    assert (res.answer_id, res.foil_id) == (mary, john)
    ids_clean, ids_corrupt = lm.encode(clean).input_ids, lm.encode(corrupt).input_ids
    dim = lm.info.head_dim
    with attn_implementation(lm.model, "eager"):
        clean_inputs, clean_logits = o_proj_inputs(lm.model, ids_clean)
        _, corrupt_logits = o_proj_inputs(lm.model, ids_corrupt)
        for layer in (23, 29):
            for head in range(lm.info.n_heads):
                logits = patched_by_hand(lm.model, layer, head, dim, clean_inputs, ids_corrupt)
                want = float(logits[mary] - logits[john])
                assert res.patched[layer, head] == pytest.approx(want, abs=1e-4), (layer, head)
    gap = float(clean_logits[mary] - clean_logits[john]) - float(
        corrupt_logits[mary] - corrupt_logits[john]
    )
    assert res.clean - res.corrupted == pytest.approx(gap, abs=1e-4)
    assert res.normalized[23, 3] > 0.3
    assert math.isnan(float(res.normalized[0, 0]))  # layer 0 not patched

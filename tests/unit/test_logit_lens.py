"""The logit lens (nostalgebraist 2020): worked by hand on tiny random models from transformers'
own hidden states and the weights, and equal to the model's logits at the last block."""

from __future__ import annotations

import copy

import pytest
import torch

import workbench
from probes.checks import ArgumentError
from tests.tiny_models import tiny_model
from workbench.lm import Encoded
from workbench.logit_lens import EMBED, logit_lens, token_id

IDS = torch.tensor([[1, 5, 7, 3, 9, 5, 7, 2, 11, 4]])


def encoded(ids: torch.Tensor) -> Encoded:
    return Encoded(ids, torch.ones_like(ids), [str(int(i)) for i in ids[0]], "", False)


def tiny(family: str = "llama"):
    ref = tiny_model(family, attn_implementation="eager")
    return ref, workbench.wrap_model(copy.deepcopy(ref), tokenizer=None, name=family)


def test_lens_hand_worked_tiny_llama():
    """Every stream read by hand: transformers' ``output_hidden_states`` (stream s = entering
    block s), RMSNorm written out, times the unembedding matrix; top-k, the followed token's
    probability and rank recomputed from those logits."""
    ref, lm = tiny()
    with torch.no_grad():
        out = ref(input_ids=IDS, output_hidden_states=True, use_cache=False)
    n_layers = ref.config.num_hidden_layers
    norm = ref.model.norm
    w, eps = norm.weight.detach(), norm.variance_epsilon
    w_u = ref.lm_head.weight.detach()
    lens = logit_lens(lm, encoded(IDS), top_k=3)
    assert lens.layers == [EMBED, *(f"L{i}" for i in range(n_layers))]
    assert lens.positions == list(range(IDS.shape[1]))
    # followed token: the prompt's next token, the model's own top-1 at the last position
    final_top = int(out.logits[0, -1].argmax())
    assert lens.target_ids.tolist() == [*IDS[0, 1:].tolist(), final_top]
    for s in range(n_layers):  # hidden_states[s] is the stream entering block s (s < n)
        x = out.hidden_states[s][0].double()
        normed = w.double() * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        logits = normed @ w_u.double().T  # (L, V)
        probs = torch.softmax(logits, -1)
        top = probs.topk(3, -1)
        assert torch.equal(lens.top_ids[s], top.indices), s
        assert torch.allclose(lens.top_probs[s].double(), top.values, atol=1e-5)
        t = lens.target_ids
        own = probs.gather(1, t[:, None])[:, 0]
        assert torch.allclose(lens.target_probs[s].double(), own, atol=1e-5)
        ranks = (logits > logits.gather(1, t[:, None])).sum(-1) + 1
        assert torch.equal(lens.target_ranks[s], ranks)
    # the last block's stream is the model's own output
    probs = torch.softmax(out.logits[0].double(), -1)
    assert torch.allclose(lens.top_probs[-1].double(), probs.topk(3, -1).values, atol=1e-5)
    assert lens.target_ranks[-1, -1] == 1


@pytest.mark.parametrize("family", ["llama", "gemma2", "cohere2", "olmo2"])
def test_last_stream_equals_model_output_tiny(family):
    """At the last block the lens is the model's own distribution, through each architecture's
    final norm (Gemma's 1 + w), logit scale (Cohere 2) and final softcap (Gemma 2)."""
    ref, lm = tiny(family)
    with torch.no_grad():
        logits = ref(input_ids=IDS, use_cache=False).logits[0].double()
    lens = logit_lens(lm, encoded(IDS), target=7, top_k=4)
    probs = torch.softmax(logits, -1)
    assert torch.allclose(lens.top_probs[-1].double(), probs.topk(4, -1).values, atol=1e-5)
    assert torch.allclose(lens.target_probs[-1].double(), probs[:, 7], atol=1e-5)
    assert torch.equal(lens.final_ids, logits.argmax(-1))


def test_positions_and_errors_tiny():
    _ref, lm = tiny()
    full = logit_lens(lm, encoded(IDS))
    part = logit_lens(lm, encoded(IDS), positions=[8, 2, 2])
    assert part.positions == [2, 8]
    assert torch.allclose(part.target_probs, full.target_probs[:, [2, 8]], atol=1e-6)
    with pytest.raises(ArgumentError, match=r"position in positions must be an integer in 0\.\.9"):
        logit_lens(lm, encoded(IDS), positions=[10])
    with pytest.raises(ArgumentError, match=r"top_k must be an integer in 1\.\.50, got 0"):
        logit_lens(lm, encoded(IDS), top_k=0)
    with pytest.raises(ArgumentError, match=r"target must be an integer in 0\.\.255, got 256"):
        logit_lens(lm, encoded(IDS), target=256)
    with pytest.raises(ArgumentError, match="target must be a text or a token id"):
        token_id(lm, "target", 1.5)


@pytest.mark.model
def test_lens_last_block_equals_model_logits_real(lm):
    """SmolLM2: the last stream's distribution is the model's (<= 1e-5); the IOI answer ' Mary'
    is the final top token and rises to rank 1 only in the last layers."""
    prompt = "When Mary and John went to the store, John gave a drink to"
    lens = logit_lens(lm, prompt, target=" Mary", positions=[13], top_k=5)
    logits = lm.forward(prompt)[0, 13].double()
    probs = torch.softmax(logits, -1)
    assert torch.allclose(lens.top_probs[-1, 0].double(), probs.topk(5).values, atol=1e-5)
    mary = lm.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    assert float(lens.target_probs[-1, 0]) == pytest.approx(float(probs[mary]), abs=1e-5)
    assert int(lens.target_ranks[-1, 0]) == 1
    assert int(lens.target_ranks[len(lens.layers) // 2, 0]) > 10  # not formed mid-depth

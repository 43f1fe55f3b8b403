"""The architecture table drives layouts and model parts of llama, qwen2 and gpt2 alike (random
small models)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

import workbench
from tests.conftest import attn_implementation
from workbench import model_parts
from workbench.architectures import ARCHITECTURES, spec_for
from workbench.layer_suffix import decoder_hidden, residual_entering


def tiny_gpt2():
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=100)
    return AutoModelForCausalLM.from_config(cfg).eval()


def tiny_qwen2():
    cfg = Qwen2Config(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_table_has_required_rows():
    assert {"llama", "qwen2", "gpt2"} <= set(ARCHITECTURES)


def test_unknown_architecture_message():
    with pytest.raises(workbench.UnsupportedArchitectureError, match=r"'bert'.*supported"):
        spec_for("bert")


@pytest.mark.parametrize(
    ("build", "n_heads", "n_kv"), [(tiny_gpt2, 4, 4), (tiny_qwen2, 4, 2)], ids=["gpt2", "qwen2"]
)
def test_random_models_capture_matches_eager(build, n_heads, n_kv):
    torch.manual_seed(0)
    model = build()
    lm = workbench.wrap_model(model, tokenizer=None, name="tiny")
    assert (lm.info.n_layers, lm.info.n_heads, lm.info.n_kv_heads) == (2, n_heads, n_kv)
    ids = torch.randint(0, 100, (1, 11))
    with lm.capture(maps=True) as cap, torch.no_grad():
        logits = model(input_ids=ids).logits
    with attn_implementation(model, "eager"), torch.no_grad():
        ref = model(input_ids=ids, output_attentions=True)
    assert (logits - ref.logits).abs().max() < 1e-4
    for layer in range(2):
        got = torch.stack([cap.records.map(layer, h) for h in range(n_heads)])
        assert (got - ref.attentions[layer][0]).abs().max() < 1e-5


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_qwen2], ids=["gpt2", "qwen2"])
def test_model_parts_come_from_the_table(build):
    torch.manual_seed(0)
    model = build()
    assert model_parts.decoder_of(model) is model.base_model
    assert model_parts.unembedding(model) is model.get_output_embeddings()
    norm = model_parts.final_norm(model)
    assert norm is getattr(model.base_model, "ln_f", None) or norm is model.base_model.norm
    blocks = model_parts.decoder_blocks(model)
    assert len(blocks) == 2
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        full = decoder_hidden(model, input_ids=ids)
        resid = residual_entering(model, 1, ids)
        part = decoder_hidden(model, inputs_embeds=resid, start=1)
    assert model_parts.decoder_blocks(model) is blocks  # the full list is back
    if model.config.model_type == "qwen2":  # rotary: the suffix shortcut is exact
        assert torch.allclose(full, part, atol=1e-5)


def test_borrowed_weights_swap_one_part_and_restore():
    torch.manual_seed(0)
    model, donor = tiny_qwen2(), tiny_qwen2()
    before = {n: p.clone() for n, p in model.named_parameters()}
    donor_params = dict(donor.named_parameters())
    with model_parts.borrowed_weights(model, donor, "mlp", layers=[1]) as names:
        assert names and all(n.startswith("model.layers.1.mlp.") for n in names)
        for n, p in model.named_parameters():
            assert torch.equal(p, donor_params[n] if n in names else before[n]), n
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    with (
        pytest.raises(workbench.WorkbenchError, match="part"),
        model_parts.borrowed_weights(model, donor, "norm"),
    ):
        pass

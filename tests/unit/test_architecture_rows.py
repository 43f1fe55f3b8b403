"""Every row of the architecture table on a tiny randomly initialised model of its family, built
from the family's config inside the test (nothing downloaded): parts, head counts, windows,
the suffix shortcut, the frozen-norm model of attribution, DLA with attention-output norms,
loading with a device map, and the refusal of architectures outside the table."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM

import workbench
from tests.conftest import attn_implementation
from tests.tiny_models import FAMILIES, tiny_config
from workbench import model_parts
from workbench.analyzers.logit_attribution import (
    FrozenNorm,
    attribute,
    frozen_norm_map,
    logit_diff,
)
from workbench.architectures import ARCHITECTURES, head_counts, layer_windows, text_config_of
from workbench.layer_suffix import SuffixRunner, decoder_hidden, residual_entering

ROWS = [*FAMILIES, "gemma3"]
WINDOWED = {"mistral", "qwen2", "gemma2", "gemma3_text", "gemma3", "gpt_oss", "mixtral"}
WINDOWED |= {"starcoder2", "cohere2", "afmoe"}
L = 13  # prompt length, longer than the sliding window 8


def build(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``family`` with jittered norm weights (so Gemma's ``1 + w`` and a
    LayerNorm's bias matter)."""
    torch.manual_seed(seed)
    cfg = tiny_config(family)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def prompt(batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 250, (batch, L), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=ROWS)
def row(request):
    return request.param, build(request.param)


def test_every_family_has_a_row():
    assert set(ROWS) <= set(ARCHITECTURES)
    assert {"llama", "mistral", "qwen2", "qwen3", "gpt2"} <= set(ARCHITECTURES)


def test_parts_are_the_models_own(row):
    family, model = row
    lm = workbench.wrap_model(model, tokenizer=None, name=family)
    text = text_config_of(model.config)
    n_kv = 4 if family == "gpt_neox" else text.num_key_value_heads  # NeoX: no GQA
    assert lm.info.n_layers == len(lm.layout.attention_modules) == 4
    assert (lm.info.n_heads, lm.info.n_kv_heads) == (4, n_kv)
    assert model_parts.decoder_of(model) is model.get_decoder()
    assert model_parts.unembedding(model) is model.get_output_embeddings()
    assert model_parts.input_embedding(model) is model.get_input_embeddings()
    blocks = model_parts.decoder_blocks(model)
    assert blocks is model.get_decoder().layers and len(blocks) == 4
    ids = prompt()
    seen: dict[str, torch.Tensor] = {}
    proj_out: dict[int, torch.Tensor] = {}
    attn_out: dict[int, torch.Tensor] = {}
    handles = [
        model_parts.final_norm(model).register_forward_hook(
            lambda m, a, out: seen.__setitem__("norm", out)
        )
    ]
    for i, (attn, proj) in enumerate(
        zip(lm.layout.attention_modules, lm.layout.out_projections, strict=True)
    ):
        assert attn in list(blocks[i].modules()) and proj in list(attn.modules())
        handles.append(proj.register_forward_hook(lambda m, a, o, i=i: proj_out.__setitem__(i, o)))
        handles.append(attn.register_forward_hook(lambda m, a, o, i=i: attn_out.__setitem__(i, o)))
    try:
        with attn_implementation(model, "eager"), torch.no_grad():
            hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(seen["norm"], hidden)  # the final norm produces the decoder's output
    assert model_parts.attention_modules(model) == list(lm.layout.attention_modules)
    sinks = model_parts.sink_logits(model)
    assert (sinks is not None) == (family == "gpt_oss")
    if sinks is not None:  # gpt-oss: the attention modules' own (H,) sink parameters
        assert all(s is block.self_attn.sinks for s, block in zip(sinks, blocks, strict=True))
    for i in range(4):  # the out projection produces the attention module's output
        assert torch.equal(proj_out[i], attn_out[i][0])


def test_head_counts_and_windows_are_what_the_attention_function_gets(row):
    family, model = row
    calls: dict[int, tuple] = {}

    def record(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, **kwargs):
        # attention_mask: positional in most families, a keyword in AFMoE
        calls[module.layer_idx] = (query.shape, key.shape, kwargs.get("sliding_window"))
        return torch.zeros_like(query).transpose(1, 2).contiguous(), None

    AttentionInterface.register("h5_record", record)
    with attn_implementation(model, "h5_record"), torch.no_grad():
        model(input_ids=prompt())
    n_layers, n_heads, n_kv, head_dim = head_counts(model.config)
    assert sorted(calls) == list(range(n_layers))
    for layer, (q, k, window) in calls.items():
        assert (q[1], k[1], q[-1]) == (n_heads, n_kv, head_dim)
        assert window == layer_windows(model.config)[layer], layer
    assert any(w is not None for w in layer_windows(model.config)) == (family in WINDOWED)


def test_suffix_runner_is_exact(row):
    family, model = row
    lm = workbench.wrap_model(model, tokenizer=None, name=family)
    ids = prompt(2)
    with attn_implementation(model, "eager"), torch.no_grad():  # the shortcut, not attention
        full = decoder_hidden(model, input_ids=ids)
        resid = residual_entering(model, 2, ids)
        part = decoder_hidden(model, inputs_embeds=resid, start=2)
        runner = SuffixRunner(lm, ids, torch.ones_like(ids))
    assert (full - part).abs().max() < 1e-5
    assert runner.head_ok and runner.suffix_ok  # final_logits = the model's own logits
    with attn_implementation(model, "eager"), torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1]
        mine = model_parts.final_logits(model, full[:, -1])
    assert (logits - mine).abs().max() < 1e-5


def test_frozen_norm_model_reproduces_the_norms(row):
    family, model = row
    norms = [model_parts.final_norm(model), *(model_parts.attn_output_norms(model) or [])]
    io: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        n.register_forward_hook(lambda m, a, o, i=i: io.__setitem__(i, (a[0], o)))
        for i, n in enumerate(norms)
    ]
    try:
        with attn_implementation(model, "eager"), torch.no_grad():
            model(input_ids=prompt())
    finally:
        for h in handles:
            h.remove()
    assert len(io) == len(norms)
    for i, norm in enumerate(norms):
        x, y = io[i]
        for pos in (0, 5, L - 1):
            frozen = FrozenNorm.at(model, norm, x[0, pos])
            assert (frozen.output(x[0, pos]) - y[0, pos].double()).abs().max() < 1e-5, family


def test_attention_output_norm_column():
    with_norm = {k for k, spec in ARCHITECTURES.items() if spec.attn_output_norm}
    assert with_norm == {"gemma2", "gemma3_text", "gemma3", "olmo2", "afmoe"}


def test_output_gate_column_names_the_gate_module():
    """The rows with gated heads (AFMoE: ``o_proj(attn * sigmoid(gate_proj(x)))``) name a
    module of the attention whose output has one value per head dimension."""
    gated = {k for k, spec in ARCHITECTURES.items() if spec.output_gate}
    assert gated == {"afmoe"}
    model = build("afmoe")
    attn = model.model.layers[0].self_attn
    gate = getattr(attn, ARCHITECTURES["afmoe"].output_gate)
    assert gate.out_features == attn.o_proj.in_features


@pytest.mark.parametrize(
    "family", ["llama", "olmo2", "gemma3_text", "gemma2", "cohere2", "gpt_neox", "gpt_oss"]
)
def test_head_dla_sums_to_the_attention_blocks_dla(family):
    """Per-head DLA, summed over a layer's heads, equals the DLA of what the layer's attention
    block adds to the residual stream (after its output norm where there is one)."""
    model = build(family)
    lm = workbench.wrap_model(model, tokenizer=None, name=family)
    ids = prompt()
    res = attribute(lm, ids, logit_diff(5, 7))
    spec = model_parts.spec_of(model)
    adds = model_parts.attn_output_norms(model) or lm.layout.attention_modules
    kept: dict = {}
    handles = [
        m.register_forward_hook(
            lambda m, a, o, i=i: kept.__setitem__(i, model_parts.block_output(o))
        )
        for i, m in enumerate(adds)
    ]
    norm, head = model_parts.final_norm(model), model_parts.unembedding(model)
    handles.append(norm.register_forward_pre_hook(lambda m, a: kept.__setitem__("x", a[0])))
    handles.append(head.register_forward_pre_hook(lambda m, a: kept.__setitem__("n", a[0])))
    try:
        with torch.enable_grad():
            value = logit_diff(5, 7)(model(input_ids=ids).logits[0, -1].double())
            (u,) = torch.autograd.grad(value, [kept["n"]])
    finally:
        for h in handles:
            h.remove()
    assert abs(float(value) - res.metric) < 1e-5
    direction = frozen_norm_map(model, norm, kept["x"][0, -1], u[0, -1])
    bias = {}
    for i, proj in enumerate(lm.layout.out_projections):  # the heads' sum excludes the bias
        b = proj.bias
        bias[i] = b.detach().double() if b is not None and spec.attn_output_norm is None else 0.0
    for layer in range(lm.layout.n_layers):
        block = kept[layer][0, -1].double() - bias[layer]
        assert abs(float(block @ direction) - float(res.dla[layer].sum())) < 1e-4, layer
    assert res.norm_check < 1e-5


@pytest.mark.parametrize("family", ROWS)
def test_capture_matches_eager_maps(family):
    model = build(family)
    lm = workbench.wrap_model(model, tokenizer=None, name=family)
    ids = prompt()
    with lm.capture(maps=True) as cap, torch.no_grad():
        model(input_ids=ids)
    with attn_implementation(model, "eager"), torch.no_grad():
        ref = model(input_ids=ids, output_attentions=True)
    for layer in range(lm.layout.n_layers):
        got = torch.stack([cap.records.map(layer, h) for h in range(lm.layout.n_heads)])
        assert (got - ref.attentions[layer][0]).abs().max() < 1e-5, layer


def test_architecture_outside_the_table_is_refused():
    cfg = AutoConfig.for_model(
        "opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=100, word_embed_proj_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(workbench.UnsupportedArchitectureError, match=r"add a row for 'opt'"):
        workbench.wrap_model(model, tokenizer=None)


def _save_tiny_llama(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update(
        {
            w: 4 + i
            for i, w in enumerate(["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"])
        }
    )
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip
    build("llama").save_pretrained(folder)
    fast.save_pretrained(folder)


def test_load_with_a_device_map(tmp_path):
    _save_tiny_llama(tmp_path)
    device_map = {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(4)},
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    lm = workbench.load_model(str(tmp_path), device_map=device_map)
    assert lm.device == torch.device("cpu") and lm.info.device == "cpu"
    plain = workbench.load_model(str(tmp_path))
    text = "the cat sat on a mat and the dog ran"
    assert torch.equal(lm.forward(text), plain.forward(text))
    enc, records = lm.run_capture(text, layers=[1, 3])
    _, ref = plain.run_capture(text, layers=[1, 3])
    assert torch.equal(records.map(3, 1), ref.map(3, 1)) and enc.n_tokens == 10
    same = workbench.load_model(str(tmp_path), device="cpu", device_map={"": "cpu"})
    assert same.device == torch.device("cpu")


def test_device_and_device_map_must_agree(tmp_path):
    with pytest.raises(workbench.WorkbenchError, match="disagree"):
        workbench.load_model(str(tmp_path), device="cuda", device_map="auto")
    with pytest.raises(workbench.WorkbenchError, match="disagree"):
        workbench.load_model(str(tmp_path), device="cpu", device_map={"": "cpu", "lm_head": 0})

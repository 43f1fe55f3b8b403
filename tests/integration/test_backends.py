"""Backends on the real model: the workbench's maps equal transformers' eager maps, the
TransformerLens ``TransformerBridge``'s ``hook_pattern`` and what nnsight reads, and probes run
through objects adopted from TransformerLens and nnsight with the native path's results.

One short prompt (14 tokens), all 30 layers x 9 heads. Tolerances: maps 1e-5 against eager
softmax (the kernels' contract), 1e-6 between the native path and an adopted model (same
weights, same code path). Captures compared at 1e-6 capture the same layers: a captured layer's
output comes from the kernels, an uncaptured one's from SDPA, and that ~1e-7 difference in the
residual stream moves later maps by ~1e-6.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

import workbench
from probes.hooks import HOOKS_ATTR
from tests.conftest import attn_implementation
from workbench import backends
from workbench.models import EMBEDDED_NAME, ensure_embedded_cache

pytestmark = pytest.mark.model

PROMPT = "When Mary and John went to the store, John gave a drink to"
N_LAYERS, N_HEADS = 30, 9
MAP_TOL = 1e-5  # against eager softmax
SAME_TOL = 1e-6  # same weights, same workbench code path


def _stack(records, n_layers: int = N_LAYERS) -> torch.Tensor:
    """(layers, heads, Lq, Lk) from one capture of every layer and head (batch 0)."""
    return torch.stack([records[layer].maps[0] for layer in range(n_layers)])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _fresh_hf_model(dtype: torch.dtype = torch.float32):
    """A second, independent copy of the embedded model (what a TL/nnsight user would load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_embedded_cache(progress=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)


def _no_workbench_hooks(model: torch.nn.Module) -> bool:
    return not any(hasattr(m, HOOKS_ATTR) for m in model.modules())


# -- fixtures (module scope: this file's own models, so the session `lm` is never touched) --------


@pytest.fixture(scope="module")
def native() -> workbench.LoadedModel:
    return workbench.load_model()


@pytest.fixture(scope="module")
def enc(native):
    enc = native.encode(PROMPT)
    assert 12 <= enc.n_tokens <= 20
    return enc


@pytest.fixture(scope="module")
def native_run(native, enc) -> tuple[torch.Tensor, torch.Tensor]:
    """Native workbench maps (30, 9, L, L) and logits for PROMPT."""
    with native.capture() as cap:
        logits = native.forward(enc)
    assert cap.records.layers_fired == tuple(range(N_LAYERS))
    return _stack(cap.records), logits


@pytest.fixture(scope="module")
def bridge():
    """A TransformerBridge booted offline around its own copy of the embedded model."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = _fresh_hf_model()
    return TransformerBridge.boot_transformers(
        EMBEDDED_NAME, hf_model=hf, tokenizer=tok, device="cpu"
    )


@pytest.fixture(scope="module")
def nn_model(native):
    """An nnsight LanguageModel around the *same* HF model object as ``native``."""
    nnsight = pytest.importorskip("nnsight")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # LanguageModel is deprecated in favour of TransformersModel
        return nnsight.LanguageModel(native.model, tokenizer=native.tokenizer)


def _nnsight_attention(nn_model, input_ids: torch.Tensor) -> torch.Tensor:
    """(30, 9, L, L) attention weights read by nnsight from the eager model's attention output."""
    # nnsight >= 0.5 runs the trace body out of line: build the list with .save(), not a
    # comprehension (names bound inside a comprehension are not written back).
    with nn_model.trace(input_ids):
        weights = list().save()
        for layer in range(N_LAYERS):
            weights.append(nn_model.model.layers[layer].self_attn.output[1])
    return torch.stack([w[0] for w in weights])


@pytest.fixture
def eager_context(native) -> Iterator[None]:
    with attn_implementation(native.model, "eager"):
        yield
    assert native.model.config._attn_implementation == "workbench"


# -- (a) native workbench maps == transformers eager output_attentions -------------------------


def test_native_maps_equal_eager_output_attentions(native, enc, native_run):
    maps, logits = native_run
    with attn_implementation(native.model, "eager"), torch.no_grad():
        out = native.model(input_ids=enc.input_ids, output_attentions=True, use_cache=False)
    eager = torch.stack([a[0] for a in out.attentions])
    assert maps.shape == (N_LAYERS, N_HEADS, enc.n_tokens, enc.n_tokens)
    assert _max_diff(maps, eager) <= MAP_TOL
    assert _max_diff(logits, out.logits) <= 1e-4  # SDPA vs eager summation order
    assert native.model.config._attn_implementation == "workbench"


# -- (b) == TransformerLens TransformerBridge hook_pattern -------------------------------------


def test_maps_equal_transformer_bridge_hook_pattern(bridge, enc, native_run):
    maps, _ = native_run
    _, cache = bridge.run_with_cache(
        enc.input_ids, names_filter=lambda name: name.endswith("attn.hook_pattern")
    )
    pattern = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(N_LAYERS)])
    assert _max_diff(maps, pattern) <= MAP_TOL


# -- (c) == what nnsight reads from the same model ---------------------------------------------


def test_maps_equal_nnsight_attention_weights(nn_model, enc, native_run, eager_context):
    maps, _ = native_run
    assert nn_model.attn_implementation == "eager"
    read = _nnsight_attention(nn_model, enc.input_ids)
    assert _max_diff(maps, read) <= MAP_TOL


# -- (d) probes through adopted TransformerLens / nnsight objects ------------------------------


def test_adopted_bridge_gives_native_maps_and_leaves_bridge_alone(bridge, enc, native_run):
    maps, logits = native_run
    adopted = backends.from_transformer_bridge(bridge)
    assert adopted.info.name == EMBEDDED_NAME
    assert (adopted.info.n_layers, adopted.info.n_heads, adopted.info.n_kv_heads) == (30, 9, 3)
    with adopted.capture() as cap:
        got_logits = adopted.forward(enc)
    assert _max_diff(_stack(cap.records), maps) <= SAME_TOL
    assert _max_diff(got_logits, logits) <= SAME_TOL

    # Weights are shared, not copied; the bridge keeps its own modules, hooks and eager mode.
    hf = bridge.original_model
    assert adopted.model.lm_head.weight is hf.lm_head.original_component.weight
    assert hf.config._attn_implementation == "eager"
    assert adopted.model.config._attn_implementation == "workbench"
    assert _no_workbench_hooks(bridge)
    _, cache = bridge.run_with_cache(
        enc.input_ids, names_filter=lambda name: name.endswith("attn.hook_pattern")
    )
    assert len(cache) == N_LAYERS


def test_adopted_bridge_tokenizes_like_the_bridge(bridge):
    adopted = backends.adopt(bridge)
    # TransformerLens prepends BOS by default; the adopted model uses the bridge's tokenizer.
    assert adopted.encode(PROMPT).input_ids.tolist() == bridge.to_tokens(PROMPT).tolist()


def test_adopted_bridge_qkv_and_z_equal_native(bridge, native, enc):
    adopted = backends.adopt(bridge)
    layers, heads = [0, 11, 29], [0, 4, 8]
    kw = dict(layers=layers, heads=heads, maps=False, qkv=True, z=True)
    _, want = native.run_capture(enc, **kw)
    _, got = adopted.run_capture(enc, **kw)
    for layer in layers:
        for field in ("q", "k", "v", "z"):
            assert _max_diff(getattr(got[layer], field), getattr(want[layer], field)) <= SAME_TOL


def test_adopted_nnsight_gives_native_maps_and_leaves_nnsight_alone(
    nn_model, native, enc, native_run
):
    maps, logits = native_run
    adopted = backends.from_nnsight(nn_model)
    assert adopted.model is not native.model
    with adopted.capture() as cap:
        got_logits = adopted.forward(enc)
    assert _max_diff(_stack(cap.records), maps) <= SAME_TOL
    assert _max_diff(got_logits, logits) <= SAME_TOL
    # nnsight's instrumentation of the shared model does not disturb the native path either.
    with native.capture() as cap:
        native.forward(enc)
    assert _max_diff(_stack(cap.records), maps) <= SAME_TOL
    # The nnsight model still runs its own attention implementation and reads eager weights.
    with attn_implementation(native.model, "eager"):
        read = _nnsight_attention(nn_model, enc.input_ids)
        assert adopted.model.config._attn_implementation == "workbench"
    assert _max_diff(read, maps) <= MAP_TOL
    assert _no_workbench_hooks(native.model)


def test_shared_nnsight_runs_probes_and_interventions_in_one_forward(
    nn_model, native, enc, native_run
):
    maps, logits = native_run
    before = nn_model.attn_implementation
    with backends.shared(nn_model) as shared:
        assert shared.model is native.model
        assert nn_model.attn_implementation == "workbench"
        # nnsight traces run with autograd on; the map kernels need torch.no_grad().
        with torch.no_grad(), shared.capture() as cap, nn_model.trace(enc.input_ids):
            out = nn_model.lm_head.output.save()
        assert _max_diff(_stack(cap.records), maps) <= SAME_TOL
        assert _max_diff(out, logits) <= SAME_TOL

        # An nnsight intervention (zero layer 3's MLP output) and a workbench probe, same pass.
        with torch.no_grad(), shared.capture() as cap, nn_model.trace(enc.input_ids):
            nn_model.model.layers[3].mlp.output[:] = 0
        edited = _stack(cap.records)
        assert _max_diff(edited[:4], maps[:4]) <= SAME_TOL  # attention 0-3 runs before MLP 3
        assert _max_diff(edited[4], maps[4]) > 1e-3  # downstream of the edit
    assert nn_model.attn_implementation == before


def test_adopt_dispatches_by_type(bridge, nn_model, enc, native_run):
    maps, _ = native_run
    assert backends.find_backend(bridge).name == "transformer_lens"
    assert backends.find_backend(nn_model).name == "nnsight"
    hf, tok = _fresh_hf_model()
    assert backends.find_backend(hf).name == "transformers"
    plain = backends.adopt(hf, tokenizer=tok, name="plain")
    assert plain.info.name == "plain"
    assert hf.config._attn_implementation != "workbench"  # the user's model is untouched
    _, rec = plain.run_capture(enc)
    assert _max_diff(_stack(rec), maps) <= SAME_TOL


def test_backend_errors_are_clear(bridge, nn_model):
    with pytest.raises(backends.BackendError, match="cannot adopt"):
        backends.adopt(object())
    with pytest.raises(backends.BackendError, match="'nnsight' backend"):
        backends.from_nnsight(bridge)
    with pytest.raises(backends.BackendError, match="'transformer_lens' backend"):
        backends.from_transformer_bridge(nn_model)
    with (
        pytest.raises(backends.BackendError, match="never call the registered attention"),
        backends.shared(bridge),
    ):
        pass
    hf, _ = _fresh_hf_model()
    with pytest.raises(backends.BackendError, match="no tokenizer"):
        backends.adopt(hf)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_bridge_view_plumbing_other_architectures(arch, native):
    """Plumbing only (random weights): the detached view of a bridged GPT-2 / Qwen2 is the
    pristine transformers model, and every layer fires through the workbench path."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    vocab = len(native.tokenizer)
    gpt2 = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=vocab, n_positions=64)
    qwen2 = dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
        intermediate_size=128, vocab_size=vocab,
    )  # fmt: skip
    builders = {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(**gpt2)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**qwen2)),
    }
    model = builders[arch]().eval()
    enc = native.encode(PROMPT)
    with torch.no_grad():
        pristine = model(input_ids=enc.input_ids).logits
    bridge = TransformerBridge.boot_transformers(
        arch, hf_model=model, tokenizer=native.tokenizer, device="cpu"
    )
    adopted = backends.adopt(bridge, tokenizer=native.tokenizer)
    assert not any(isinstance(m, GeneralizedComponent) for m in adopted.model.modules())
    with adopted.capture(maps=False, z=True) as cap:
        logits = adopted.forward(enc)
    assert cap.records.layers_fired == (0, 1)
    assert _max_diff(logits, pristine) <= 1e-5

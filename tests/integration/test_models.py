"""Model loading: embedded model facts, cache parity with the GGUF load, clear errors."""

from __future__ import annotations

import time

import pytest
import torch

import workbench
from workbench.models import load_embedded_from_gguf

pytestmark = pytest.mark.model


def test_embedded_model_description(lm):
    info = lm.info
    # Facts of SmolLM2-135M (design.md): Llama, 30 layers x 9 query heads, 3 KV heads, GQA.
    assert (info.architecture, info.n_layers, info.n_heads, info.n_kv_heads) == ("llama", 30, 9, 3)
    assert info.head_dim == 576 // 9
    assert info.max_context == 8192
    assert lm.model.config._attn_implementation == "workbench"


def test_cached_copy_gives_the_gguf_logits(lm):
    gguf_model, tokenizer = load_embedded_from_gguf()
    gguf_model.set_attn_implementation("sdpa")
    ids = tokenizer("Paris is the capital of", return_tensors="pt").input_ids
    assert torch.equal(ids, lm.encode("Paris is the capital of").input_ids)
    with torch.no_grad():
        ref = gguf_model(input_ids=ids).logits
    got = lm.forward("Paris is the capital of")
    assert (got - ref).abs().max().item() == 0.0


def test_cached_load_is_fast():
    start = time.perf_counter()
    lm2 = workbench.load_model()
    total = time.perf_counter() - start
    # Issue target: the cached model loads in under 3 s (tokenizer included here).
    assert lm2.load_seconds < 3.0, lm2.load_seconds
    assert total < 6.0, total


def test_unknown_model_is_one_clear_error():
    with pytest.raises(workbench.ModelNotFoundError, match="no-such-org/no-such-model"):
        workbench.load_model("no-such-org/no-such-model")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(workbench.ModelNotFoundError, match=r"config\.json"):
        workbench.load_model(str(tmp_path))

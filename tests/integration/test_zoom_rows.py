"""The explorer's exact rows of a long prompt (app.jobs.zoom_rows) run only the blocks up to the
head's layer; the rows must equal eager attention of the whole model (transformers'
``output_attentions``), on the embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app import jobs
from app.state import SessionStore
from tests.conftest import attn_implementation

pytestmark = pytest.mark.model


def test_exact_rows_equal_eager_attention(lm, tmp_path):
    text = " ".join(f"Item {i} is a {('cat', 'dog', 'bird')[i % 3]}." for i in range(60))
    enc = lm.encode(text)
    n = enc.n_tokens
    meta = {"run_id": "run1", "n_tokens": n, "text": text, "text_chat": False}
    store = SessionStore(str(tmp_path / "store"))
    layer, head, start, end = 7, 4, n - 40, n - 8
    out = jobs.zoom_rows(lm, store, "s1", meta, layer, head, start, end)
    assert (out["start"], out["end"]) == (start, end)
    window = store.get("s1", "run1", "window")
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        eager = lm.model(input_ids=enc.input_ids, output_attentions=True).attentions
    expected = eager[layer][0, head, start:end].float().numpy()
    assert window["map"].shape == expected.shape == (end - start, n)
    # stored as float16: half a unit in the last place of weights <= 1
    np.testing.assert_allclose(window["map"].astype(np.float32), expected, atol=5e-4)
    assert np.abs(window["map"].astype(np.float32).sum(-1) - 1).max() < 2e-3

"""Progress by layer of one forward (workbench.model_parts.layer_progress): each block reports
when it finishes, in order, on every forward; the hooks go away on exit, also on error."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import tiny_model
from workbench.model_parts import decoder_blocks, layer_progress


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_each_block_reports_in_order_on_every_forward(family):
    model = tiny_model(family)
    n = len(decoder_blocks(model))
    calls = []
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad(), layer_progress(model, lambda done, total: calls.append((done, total))):
        model(ids)
        model(ids)
    assert calls == [(i, n) for i in range(1, n + 1)] * 2
    calls.clear()
    with torch.no_grad():
        model(ids)
    assert calls == []  # removed on exit
    assert all(not block._forward_hooks for block in decoder_blocks(model))


def test_hooks_removed_when_the_forward_fails():
    model = tiny_model("llama")

    def fail(done, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"), layer_progress(model, fail):
        model(torch.tensor([[1, 2, 3]]))
    assert all(not block._forward_hooks for block in decoder_blocks(model))

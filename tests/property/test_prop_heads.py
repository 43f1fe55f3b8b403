"""Head ids under generated values: ``Head``, ``head_id``, ``parse_head``, ``parse_heads`` and
``LoadedModel.head_id`` give the head the value names, or a WorkbenchError; never another
exception, never a head made of a coerced float, bool or string."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import workbench
from tests.property import strategies as gen
from tests.property.support import (
    N_HEADS,
    N_LAYERS,
    as_head,
    as_heads,
    as_index,
    cases,
    count_case,
    refused,
)

index_like = st.one_of(st.integers(-3, 40), gen.index_impostors, gen.anything())


@cases(300)
@given(layer=index_like, head=index_like)
@example(layer=torch.tensor(True), head=3)  # would be L1H3
@example(layer=5, head=np.array([2]))
def test_head_and_head_id_take_non_negative_integers_only(layer, head):
    count_case()
    want_layer, want_head = as_index(layer), as_index(head)
    if want_layer is None or want_head is None or min(want_layer, want_head) < 0:
        refused(lambda: workbench.Head(layer, head))
        refused(lambda: workbench.head_id(layer, head))
        return
    made = workbench.Head(layer, head)
    assert made == (want_layer, want_head)
    assert type(made.layer) is int and type(made.head) is int
    assert workbench.head_id(layer, head) == f"L{want_layer}H{want_head}" == made.id


@cases(200)
@given(text=st.one_of(gen.head_like(), gen.texts, gen.anything()))
def test_parse_head_reads_one_id_or_refuses(text):
    count_case()
    want = as_head(text)
    if want is None:
        refused(lambda: workbench.parse_head(text))
    else:
        assert workbench.parse_head(text) == want


@cases(300)
@given(
    text=st.one_of(gen.head_like(), gen.texts, st.none()),
    n_heads=st.one_of(st.none(), st.integers(1, 12), gen.not_index(minimum=1)),
)
def test_parse_heads_reads_a_list_or_refuses(text, n_heads):
    count_case()
    heads_ok = n_heads is None or (as_index(n_heads) is not None and as_index(n_heads) >= 1)
    want = as_heads(text, as_index(n_heads)) if heads_ok else None
    if want is None:
        refused(lambda: workbench.parse_heads(text, n_heads))
    else:
        assert [tuple(h) for h in workbench.parse_heads(text, n_heads)] == want


@pytest.mark.model
@cases(200)
@given(layer=index_like, head=index_like)
def test_model_head_id_checks_types_and_ranges(lm, layer, head):
    count_case()
    want_layer, want_head = as_index(layer), as_index(head)
    valid = (
        want_layer is not None
        and want_head is not None
        and 0 <= want_layer < N_LAYERS
        and 0 <= want_head < N_HEADS
    )
    if valid:
        assert lm.head_id(layer, head) == f"L{want_layer}H{want_head}"
    else:
        message = refused(lambda: lm.head_id(layer, head))
        assert "layer" in message or "head" in message, message

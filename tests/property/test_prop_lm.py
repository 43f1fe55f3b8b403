"""``LoadedModel`` under generated arguments: ``encode``, ``forward``, ``generate``,
``capture``, ``statistics``, ``run_capture`` and ``run_statistics`` either do what the value
means or raise a WorkbenchError before any forward; never another exception, never a hook left
behind, never a change to the model (``model_unchanged`` in conftest checks the logits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tests.conftest import no_hooks_left
from tests.property import strategies as gen
from tests.property.support import (
    CONTEXT,
    GOOD_PROMPT,
    GOOD_PROMPT_TOKENS,
    N_HEADS,
    N_LAYERS,
    as_flag,
    as_index,
    as_index_list,
    as_span,
    as_span_list,
    cases,
    count_case,
    device_is_usable,
    is_good_prompt,
    refused,
)
from workbench.errors import WorkbenchError

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

prompts = st.one_of(gen.texts, gen.surrogate_text, gen.anything())
flags = st.one_of(st.booleans(), gen.not_flag())


def mostly(good: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four: with several arguments drawn at once, each one's check is
    reached often enough (the first bad argument hides the others)."""
    return st.one_of(good, good, good, other)


index_lists = st.one_of(
    st.lists(st.integers(-2, 35), max_size=3),
    gen.index_impostors,
    st.lists(st.one_of(st.integers(0, 8), gen.index_impostors), min_size=1, max_size=3),
    gen.head_like(),
    gen.anything(),
)


@cases(250)
@given(prompt=prompts, chat=flags)
def test_encode_tokenizes_good_prompts_and_refuses_the_rest(lm, prompt, chat):
    count_case()
    if not is_good_prompt(prompt) or as_flag(chat) is None:
        refused(lambda: lm.encode(prompt, chat=chat))
        return
    enc = lm.encode(prompt, chat=chat)
    assert (prompt in enc.text) if as_flag(chat) else (enc.text == prompt)
    n = enc.input_ids.shape[1]
    assert enc.input_ids.shape == enc.attention_mask.shape == (1, n)
    assert n == enc.n_tokens == len(enc.tokens) >= 1
    assert bool(enc.attention_mask.all())


@cases(150)
@given(prompt=prompts.filter(lambda p: not is_good_prompt(p)))
def test_forward_refuses_bad_prompts_before_running(lm, forwards, prompt):
    count_case(forwards)
    refused(lambda: lm.forward(prompt))
    assert not forwards and no_hooks_left(lm)


@cases(150)
@given(max_new_tokens=gen.not_index(minimum=1, maximum=CONTEXT - GOOD_PROMPT_TOKENS), chat=flags)
def test_generate_refuses_bad_lengths_before_running(lm, forwards, max_new_tokens, chat):
    count_case(forwards)
    assert lm.encode(GOOD_PROMPT).n_tokens == GOOD_PROMPT_TOKENS
    message = refused(lambda: lm.generate(GOOD_PROMPT, max_new_tokens=max_new_tokens, chat=chat))
    assert "max_new_tokens" in message or "chat" in message or "context" in message, message
    assert not forwards and no_hooks_left(lm)


@cases(300)
@given(
    layers=mostly(st.none(), index_lists),
    heads=mostly(st.none(), index_lists),
    window=st.one_of(
        st.none(), st.tuples(st.integers(-2, 12), st.integers(-2, 12)), gen.anything()
    ),
    maps=mostly(st.booleans(), gen.not_flag()),
    device=mostly(st.just("cpu"), st.one_of(gen.texts, gen.anything())),
)
@example(layers=torch.tensor(True), heads=None, window=None, maps=True, device="cpu")
@example(layers=None, heads=torch.tensor([2]), window=None, maps=True, device="cpu")
def test_capture_builds_what_was_asked_or_refuses(lm, layers, heads, window, maps, device):
    count_case()
    want_layers = tuple(range(N_LAYERS)) if layers is None else as_index_list(layers, N_LAYERS)
    want_heads = tuple(range(N_HEADS)) if heads is None else as_index_list(heads, N_HEADS)
    want_window = None if window is None else as_span(window)
    valid = (
        want_layers is not None
        and want_heads is not None
        and (window is None or want_window is not None)
        and as_flag(maps) is not None
        and device_is_usable(device) is not False
    )
    call = lambda: lm.capture(layers, heads, maps=maps, query_window=window, z=True, device=device)  # noqa: E731
    if not valid:
        refused(call)
        return
    if device_is_usable(device) is None:  # a backend this test cannot judge: either answer
        try:
            call()
        except Exception as exc:
            assert isinstance(exc, WorkbenchError), repr(exc)
        return
    cap = call()
    assert (tuple(cap.layers), tuple(cap.heads)) == (want_layers, want_heads)
    assert cap.spec.query_window == want_window and cap.spec.maps is as_flag(maps)
    assert no_hooks_left(lm)  # building a probe attaches nothing


spans = st.one_of(
    st.lists(st.tuples(st.integers(-2, 12), st.integers(-2, 12)), max_size=3),
    st.lists(gen.anything(), max_size=2),
    gen.index_impostors,  # 0-d arrays and tensors: not a list of spans
    gen.anything(),
)


@cases(300)
@given(
    layers=mostly(st.none(), index_lists),
    flags_=st.tuples(*[mostly(st.booleans(), gen.not_flag())] * 3),
    spans_=spans,
    pooled=mostly(st.none(), st.one_of(st.integers(-3, 64), gen.index_impostors, gen.anything())),
)
@example(layers=None, flags_=(True,) * 3, spans_=np.array(3), pooled=None)
@example(layers=None, flags_=(True,) * 3, spans_=torch.tensor(3), pooled=None)
@example(layers=None, flags_=(True,) * 3, spans_=(), pooled=np.True_)
def test_statistics_builds_what_was_asked_or_refuses(lm, layers, flags_, spans_, pooled):
    count_case()
    entropy, argmax, distance = flags_
    want_layers = tuple(range(N_LAYERS)) if layers is None else as_index_list(layers, N_LAYERS)
    want_spans = as_span_list(spans_)
    pooled_ok = pooled is None or (as_index(pooled) is not None and as_index(pooled) >= 1)
    valid = (
        want_layers is not None
        and all(as_flag(f) is not None for f in flags_)
        and want_spans is not None
        and pooled_ok
    )

    def call():
        return lm.statistics(
            layers,
            received=False,
            entropy=entropy,
            argmax=argmax,
            distance=distance,
            spans=spans_,
            pooled_block=pooled,
        )

    if valid:
        requested = any(as_flag(f) for f in flags_) or want_spans or pooled is not None
        if not requested:
            refused(call)
            return
        stats = call()
        assert tuple(stats.layers) == want_layers
        assert list(stats.spec.spans) == want_spans
        assert stats.spec.pooled_block == (None if pooled is None else as_index(pooled))
    else:
        refused(call)


@cases(200)
@given(
    which=st.sampled_from(["layers", "heads", "query_window", "maps", "device", "max_bytes"]),
    data=st.data(),
)
def test_run_capture_refuses_before_the_forward(lm, forwards, which, data):
    count_case(forwards)
    n = lm.encode(GOOD_PROMPT).n_tokens
    bad = {
        "layers": index_lists.filter(
            lambda v: v is not None and as_index_list(v, N_LAYERS) is None
        ),
        "heads": index_lists.filter(lambda v: v is not None and as_index_list(v, N_HEADS) is None),
        "query_window": st.one_of(
            st.tuples(st.integers(0, n), st.integers(n + 1, CONTEXT * 2)),
            gen.anything().filter(lambda v: v is not None and as_span(v) is None),
        ),
        "maps": gen.not_flag(),
        "device": st.one_of(gen.texts, gen.anything()).filter(
            lambda v: v is not None and device_is_usable(v) is False
        ),
        "max_bytes": st.one_of(  # None is the default budget
            st.integers(1, 10_000), gen.not_index(minimum=1).filter(lambda v: v is not None)
        ),
    }[which]
    value = data.draw(bad, label=which)
    message = refused(lambda: lm.run_capture(GOOD_PROMPT, **{which: value}))
    assert which in message or "captur" in message, message
    assert not forwards and no_hooks_left(lm)


@cases(150)
@given(
    which=st.sampled_from(["layers", "spans", "pooled_block", "entropy", "device", "unknown"]),
    data=st.data(),
)
def test_run_statistics_refuses_before_the_forward(lm, forwards, which, data):
    count_case(forwards)
    n = lm.encode(GOOD_PROMPT).n_tokens
    bad = {
        "layers": index_lists.filter(
            lambda v: v is not None and as_index_list(v, N_LAYERS) is None
        ),
        "spans": st.one_of(
            st.lists(st.tuples(st.integers(0, n), st.integers(n + 1, 10**6)), min_size=1),
            spans.filter(lambda v: as_span_list(v) is None),
        ),
        "pooled_block": gen.not_index(minimum=1).filter(lambda v: v is not None),
        "entropy": gen.not_flag(),
        "device": gen.texts.filter(lambda v: device_is_usable(v) is False),
        "unknown": gen.anything(),
    }[which]
    value = data.draw(bad, label=which)
    key = "entropie" if which == "unknown" else which
    message = refused(lambda: lm.run_statistics(GOOD_PROMPT, **{key: value}))
    assert key in message, message
    assert not forwards and no_hooks_left(lm)

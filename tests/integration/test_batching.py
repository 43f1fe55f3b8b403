"""Batched statistics and captures equal one-prompt-at-a-time runs (issue 14.1).

Prompts of very different lengths (3 to ~150 tokens) share one right-padded batch; every
statistic of every layer must equal the one-prompt forward's within 1e-5, and the shortest
prompt's received attention must equal the column sums of transformers' own eager maps.
"""

from __future__ import annotations

import pytest
import torch

from probes.checks import ArgumentError
from tests.conftest import SHORT_PROMPT
from workbench.errors import EmptyPromptError

pytestmark = pytest.mark.model

PROMPTS = [
    "Hi there, friend",
    SHORT_PROMPT,
    " ".join(f"word{i} is followed by word{i + 1}." for i in range(18)),
    "A much longer prompt. " * 12 + "It ends here.",
]
STATS = dict(spans=[(0, 2), (1, 4)], pooled_block=8, lse=True, layers=[0, 7, 29])
TOL = 1e-5


def tol(expected: torch.Tensor) -> float:
    """1e-5, relative for values above 1 (log-sum-exps near 12, activations): a batch of
    another shape rounds float32 matmuls differently, ~1e-7 relative per layer."""
    finite = expected[torch.isfinite(expected)].double().abs()
    return TOL * max(1.0, finite.max().item() if finite.numel() else 1.0)


@pytest.fixture(scope="module")
def one_at_a_time(lm):
    return [lm.run_statistics(p, **STATS) for p in PROMPTS]


def assert_records_equal(got, want, what):
    assert got.layers_fired == want.layers_fired, what
    for layer in want.layers_fired:
        a, b = got[layer], want[layer]
        assert (a.n_queries, a.n_keys, a.window) == (b.n_queries, b.n_keys, b.window), what
        assert set(a.stats) == set(b.stats), what
        for name, expected in b.stats.items():
            value = a.stats[name]
            assert value.shape == expected.shape, f"{what} L{layer} {name}"
            if name == "argmax":
                assert torch.equal(value, expected), f"{what} L{layer} {name}"
            else:
                err = (value.double() - expected.double()).abs().max().item()
                assert err <= tol(expected), f"{what} L{layer} {name}: max error {err:.2e}"
        for name in ("maps", "q", "k", "v", "z"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), f"{what} L{layer} {name}"
            if y is not None:
                assert x.shape == y.shape, f"{what} L{layer} {name}"
                err = (x.double() - y.double()).abs().max().item()
                assert err <= tol(y), f"{what} L{layer} {name}: max error {err:.2e}"


def test_lengths_really_differ(lm):
    lengths = [lm.encode(p).n_tokens for p in PROMPTS]
    assert min(lengths) <= 4 and max(lengths) >= 100, lengths


@pytest.mark.parametrize("batch_size", [4, 3, 1, "auto"])
def test_batched_statistics_equal_one_prompt_at_a_time(lm, one_at_a_time, batch_size):
    got = lm.run_statistics(PROMPTS, batch_size=batch_size, **STATS)
    assert len(got) == len(PROMPTS)
    for i, ((enc, records), (enc1, records1)) in enumerate(zip(got, one_at_a_time, strict=True)):
        assert torch.equal(enc.input_ids, enc1.input_ids)  # order kept
        assert_records_equal(records, records1, f"prompt {i}, batch_size={batch_size}")


def test_batched_received_matches_eager_maps(lm, eager_maps):
    """Independent of the kernels: column sums of transformers' eager maps."""
    enc, attentions, _ = eager_maps
    got = lm.run_statistics([PROMPTS[2], SHORT_PROMPT, PROMPTS[0]], batch_size=3, layers=[5])
    batched_enc, records = got[1]
    assert torch.equal(batched_enc.input_ids, enc.input_ids)
    received = records[5].stats["received"][0]  # (H, L)
    expected = attentions[5][0].sum(dim=1)  # (H, L): sum over queries
    assert received.shape == expected.shape
    assert (received.double() - expected.double()).abs().max().item() <= 1e-4


def test_batched_capture_equals_one_prompt_at_a_time(lm):
    kw = dict(layers=[3, 20], heads=[0, 4], qkv=True, z=True)
    batched = lm.run_capture(PROMPTS, batch_size=4, **kw)
    for i, (prompt, (_, records)) in enumerate(zip(PROMPTS, batched, strict=True)):
        _, single = lm.run_capture(prompt, **kw)
        assert_records_equal(records, single, f"capture prompt {i}")


def test_batched_capture_with_a_query_window(lm):
    kw = dict(layers=[2], heads=[1], query_window=(1, 3))
    batched = lm.run_capture(PROMPTS, batch_size=2, **kw)
    for i, (prompt, (_, records)) in enumerate(zip(PROMPTS, batched, strict=True)):
        _, single = lm.run_capture(prompt, **kw)
        assert_records_equal(records, single, f"windowed capture prompt {i}")


def test_no_hooks_left_and_padding_context_gone(lm):
    from probes.padding import padding_active
    from tests.conftest import no_hooks_left

    lm.run_statistics(PROMPTS[:2], batch_size=2, layers=[0])
    assert no_hooks_left(lm) and not padding_active()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ArgumentError, "batch_size"),
        ({"batch_size": "big"}, ArgumentError, 'batch_size must be "auto"'),
        ({"batch_size": 2.0}, ArgumentError, "batch_size"),
        ({"spans": [(0, 5)]}, Exception, "reaches past the prompt's"),
    ],
)
def test_bad_batched_arguments_are_refused_before_any_forward(lm, forwards, kwargs, error, match):
    with pytest.raises(error, match=match):
        lm.run_statistics(["The quick brown fox", "Hi"], layers=[0], **kwargs)


def test_bad_prompt_in_the_list_is_named(lm, forwards):
    with pytest.raises(EmptyPromptError, match="prompt 1: the prompt is empty"):
        lm.run_statistics(["fine", "   ", "fine too"], layers=[0])
    with pytest.raises(ArgumentError, match="empty"):
        lm.run_statistics([], layers=[0])


@pytest.mark.parametrize(
    ("name", "extra"),
    [("sinks", {}), ("induction", {}), ("previous_token", {"exclude_bos": True})],
)
def test_batching_analyzers_score_as_one_prompt_at_a_time(lm, name, extra):
    """Every statistic-path analyzer that batches: the same table with prompts of very
    different lengths in one batch as one prompt per forward."""
    from workbench.analyzers import analyze

    kw = dict(prompts=PROMPTS, causal=False, progress=False, **extra)
    one = analyze(name, lm, batch_size=1, **kw)
    batched = analyze(name, lm, batch_size=4, **kw)
    numeric = [c for c in one.columns if one[c].dtype.kind in "fc"]
    assert "score" in numeric and "score_lo" in numeric
    err = (batched[numeric] - one[numeric]).abs().max().max()
    assert err <= TOL, f"{name}: max error {err:.2e}"
    assert (batched["head_id"] == one["head_id"]).all()

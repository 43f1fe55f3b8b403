"""Needle tests decoded in left-padded batches equal the same tests decoded one at a time:
the same emitted tokens and response, and every head's argmax key at every step (the
retrieval rule's input) identical, for tests of different lengths in one batch and rows that
stop at different steps."""

from __future__ import annotations

import pytest
import torch

from workbench.analyzers.niah import make_niah_tasks
from workbench.analyzers.niah_runs import run_niah_test, run_niah_tests
from workbench.batching import windowed_batches

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def items(lm):
    # 200- and 240-token tests interleaved: one batch holds prompts of different lengths
    tests = make_niah_tasks(lm, lengths=(200, 240), depths=(0.2, 0.8), n_needles=2, seed=3)
    return sorted(tests, key=lambda t: (t["depth"], t["context_length"]))


@pytest.mark.parametrize("stop_tokens", ["newline_or_eos", "newline_token"])
def test_batched_runs_equal_one_test_runs(lm, items, stop_tokens):
    if stop_tokens == "newline_token":  # the other rule's path: half the tests suffice
        items = items[::2]
    lengths = [lm.encode(it["prompt"], chat=True).n_tokens for it in items]
    assert len(set(lengths)) > 1  # padding is really exercised
    batched = list(
        run_niah_tests(lm, items, batch_size=4, max_new_tokens=24, stop_tokens=stop_tokens)
    )
    assert len(batched) == len(items)
    ends = set()
    for item, got in zip(items, batched, strict=True):
        want = run_niah_test(lm, item, max_new_tokens=24, stop_tokens=stop_tokens)
        assert got.response == want.response
        assert torch.equal(got.emitted, want.emitted)
        assert got.argmax.shape == want.argmax.shape
        assert torch.equal(got.argmax, want.argmax), (got.argmax != want.argmax).sum()
        assert (got.needle_span, got.answer_span) == (want.needle_span, want.answer_span)
        ends.add(want.emitted.numel())
    assert len(ends) > 1 or stop_tokens == "newline_token"  # rows stopped at different steps


def test_windowed_batches_group_lengths_within_windows():
    # window 0..3: 100 and 110 together, 300 and 310 together; window 4..5: 120 > 1.25 * 90
    assert windowed_batches([100, 300, 110, 310, 120, 90], 2, window=4) == [
        [0, 2],
        [1, 3],
        [5],
        [4],
    ]
    assert windowed_batches([100, 124, 126], 8) == [[0, 1], [2]]  # 126 > 1.25 * 100
    assert windowed_batches([5, 5, 5], 1) == [[0], [1], [2]]
    # default window 2 * size: nothing from items 4.. joins a batch of items 0..3
    assert windowed_batches([7] * 6, 2) == [[0, 1], [2, 3], [4, 5]]


def test_retrieval_scores_equal_at_any_batch_size(lm, items):
    from workbench.analyzers import analyze

    tests = items[:4]
    one = analyze("retrieval", lm, tests, progress=False, causal=False, batch_size=1)
    four = analyze("retrieval", lm, tests, progress=False, causal=False, batch_size=4)
    cols = ["score", "score_all_tests", "retrieval_hits"]
    assert one[cols].equals(four[cols])
    assert one.attrs["tests"] == four.attrs["tests"]
    assert one["score_all_tests"].max() > 0  # some head copies: the comparison is not vacuous

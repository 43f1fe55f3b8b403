"""Receiver heads (Bogdan et al. 2025, "Thought Anchors"): sentence splitting, pooling, vertical
scores and kurtosis on hand-worked examples, and the kurtosis against scipy's (the reference's
``scipy.stats.kurtosis(fisher=True, bias=True, nan_policy="omit")``)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from workbench.analyzers.receiver import (
    TEXTS,
    excess_kurtosis,
    pool_sentences,
    split_sentences,
    vertical_scores,
)

# -- sentences ----------------------------------------------------------------------------------


def pieces(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def test_split_sentences_by_the_reference_rule_worked_by_hand():
    text = "First one here. Tiny. Second sentence.\n\nThird part? Yes! Tail without stop"
    # chunks: "First one here." (15), "Tiny." (5), "Second sentence." (16: "." then "\n"),
    # the "\n" of the paragraph break (blank, dropped), "Third part?" (11), "Yes!" (4), and the
    # tail (kept; the reference drops it). "Tiny." < 10 merges into the next one, "Yes!" too.
    assert pieces(text) == [
        "First one here.",
        "Tiny. Second sentence.",
        "Third part?",
        "Yes! Tail without stop",
    ]
    spans = split_sentences(text)
    assert spans[1] == (16, 38) and spans[2] == (40, 51)


def test_split_sentences_edge_cases():
    # a short last sentence merges into the one before it
    assert pieces("A long first sentence. Ok.") == ["A long first sentence. Ok."]
    # '.' not followed by a space or newline does not end a sentence (3.5, e.g)
    assert pieces("It costs 3.5 dollars today. That is cheap enough.") == [
        "It costs 3.5 dollars today.",
        "That is cheap enough.",
    ]
    # one short text stays one sentence; surrounding whitespace belongs to no sentence
    assert split_sentences("  Hi.  ") == [(2, 5)]
    assert split_sentences("   ") == []


def test_bundled_texts_have_enough_sentences():
    counts = [len(split_sentences(t)) for t in TEXTS]
    assert len(TEXTS) >= 16 and min(counts) >= 12, counts


# -- pooling, vertical scores, kurtosis: one hand-worked example ---------------------------------
#: 6 sentences over 8 tokens; sentence lengths 1, 2, 1, 1, 2, 1.
SPANS = [(0, 1), (1, 3), (3, 4), (4, 5), (5, 7), (7, 8)]
#: Each token's attention mass on each sentence (rows sum to 1, causal).
MASS = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # t0, sentence 0
        [0.6, 0.4, 0.0, 0.0, 0.0, 0.0],  # t1, sentence 1
        [0.4, 0.6, 0.0, 0.0, 0.0, 0.0],  # t2, sentence 1
        [0.2, 0.3, 0.5, 0.0, 0.0, 0.0],  # t3, sentence 2
        [0.4, 0.2, 0.2, 0.2, 0.0, 0.0],  # t4, sentence 3
        [0.5, 0.1, 0.1, 0.1, 0.2, 0.0],  # t5, sentence 4
        [0.1, 0.3, 0.1, 0.3, 0.2, 0.0],  # t6, sentence 4
        [0.3, 0.2, 0.1, 0.1, 0.2, 0.1],  # t7, sentence 5
    ],
    dtype=torch.float64,
)
#: Row-pooled by hand (mean over each sentence's query tokens): sentence 1 = mean(t1, t2),
#: sentence 4 = mean(t5, t6) = (0.3, 0.2, 0.1, 0.2, 0.2, 0).
POOLED_MASS = [
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
    [0.2, 0.3, 0.5, 0.0, 0.0, 0.0],
    [0.4, 0.2, 0.2, 0.2, 0.0, 0.0],
    [0.3, 0.2, 0.1, 0.2, 0.2, 0.0],
    [0.3, 0.2, 0.1, 0.1, 0.2, 0.1],
]
#: The reference's block mean: each column divided by its sentence's length (1, 2, 1, 1, 2, 1).
POOLED_MEAN = [
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.25, 0.0, 0.0, 0.0, 0.0],
    [0.2, 0.15, 0.5, 0.0, 0.0, 0.0],
    [0.4, 0.1, 0.2, 0.2, 0.0, 0.0],
    [0.3, 0.1, 0.1, 0.2, 0.1, 0.0],
    [0.3, 0.1, 0.1, 0.1, 0.1, 0.1],
]


def test_pooling_worked_by_hand():
    for pool, expected in (("mass", POOLED_MASS), ("mean", POOLED_MEAN)):
        got = pool_sentences(MASS, SPANS, pool)
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12), pool


def test_vertical_scores_and_kurtosis_worked_by_hand():
    nan = math.nan
    # proximity 2: column j reads rows j+2..5. Block mean: column 0 rows 2-5 (0.2+0.4+0.3+0.3)/4
    # = 0.3; column 1 rows 3-5: 0.1; column 2 rows 4-5: 0.1; column 3 row 5: 0.1; 4, 5: none.
    mean = torch.tensor(POOLED_MEAN, dtype=torch.float64)
    vert = vertical_scores(mean, proximity=2)
    expected = torch.tensor([0.3, 0.1, 0.1, 0.1, nan, nan], dtype=torch.float64)
    assert torch.allclose(vert, expected, equal_nan=True)
    # [0.3, 0.1, 0.1, 0.1]: deviations 3d, -d, -d, -d (d = 0.05): m2 = 12/4 d^2 = 3 d^2,
    # m4 = 84/4 d^4 = 21 d^4, m4/m2^2 = 21/9 = 7/3, Fisher's excess kurtosis 7/3 - 3 = -2/3.
    assert float(excess_kurtosis(vert)) == pytest.approx(-2 / 3, abs=1e-12)

    # mass pooling: [0.3, 0.2, 0.1, 0.1] = [12, 8, 4, 4] / 40: mean 7, deviations 5, 1, -3, -3;
    # m2 = 44/4 = 11, m4 = (625 + 1 + 81 + 81)/4 = 197, excess = 197/121 - 3 = -166/121.
    vert = vertical_scores(torch.tensor(POOLED_MASS, dtype=torch.float64), proximity=2)
    assert torch.allclose(vert[:4], torch.tensor([0.3, 0.2, 0.1, 0.1], dtype=torch.float64))
    assert float(excess_kurtosis(vert)) == pytest.approx(-166 / 121, abs=1e-12)

    # proximity 3: column 0 reads rows 3-5 (0.4 + 0.3 + 0.3)/3; proximity 0: the diagonal too.
    vert = vertical_scores(mean, proximity=3)
    assert float(vert[0]) == pytest.approx(1.0 / 3) and torch.isnan(vert[3:]).all()
    vert = vertical_scores(mean, proximity=0)
    assert float(vert[5]) == pytest.approx(0.1) and float(vert[4]) == pytest.approx(0.1)


def test_heads_batch_dimensions_pool_independently():
    """(layers, heads, T, n): each head is pooled on its own (a head of zeros stays zero)."""
    mass = torch.stack([MASS, torch.zeros_like(MASS), 2 * MASS]).reshape(3, 1, 8, 6)
    got = pool_sentences(mass, SPANS, "mean")
    expected = torch.tensor(POOLED_MEAN, dtype=torch.float64)
    assert torch.allclose(got[0, 0], expected) and torch.allclose(got[2, 0], 2 * expected)
    assert torch.count_nonzero(got[1]) == 0


def test_kurtosis_equals_scipy_with_nans_omitted():
    rng = np.random.default_rng(0)
    x = rng.gamma(0.7, size=(5, 4, 13))
    x[..., -4:] = np.nan  # the last sentences have no vertical score
    x[1, 2, 3] = np.nan
    ref = stats.kurtosis(x, axis=-1, fisher=True, bias=True, nan_policy="omit")
    got = excess_kurtosis(torch.from_numpy(x)).numpy()
    assert np.allclose(got, np.asarray(ref), rtol=1e-12, atol=1e-12)


def test_kurtosis_nan_where_scipy_gives_nan():
    flat = torch.tensor([[0.2, 0.2, 0.2, math.nan], [math.nan] * 4], dtype=torch.float64)
    got = excess_kurtosis(flat)
    assert torch.isnan(got).all()
    with warnings.catch_warnings():  # scipy warns of the cancellation it then reports as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(stats.kurtosis([0.2, 0.2, 0.2], fisher=True, bias=True))

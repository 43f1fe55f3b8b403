"""The QRHead rule (workbench.analyzers.qr_rule) on numbers worked out by hand.

Reference rule (princeton-pli/QRHead, attn_retriever.py): mean attention of the query-span rows
per key, minus the same with the null query, per document the sum of the tokens strictly above
mean - 2 * std (unbiased std), summed over the gold documents.
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.qr_rule import (
    calibrate,
    document_scores,
    gold_indices,
    key_attention,
    outlier_sum,
    pair_scores,
    qr_prompt,
)


def test_key_attention_is_the_mean_over_query_rows():
    maps = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.1, 0.2, 0.1],
            [0.3, 0.2, 0.1, 0.1, 0.1, 0.2],
        ]
    )
    # by hand: (0.1+0.3)/2, (0.2+0.2)/2, (0.3+0.1)/2, 0.1, (0.2+0.1)/2, (0.1+0.2)/2
    expected = [0.2, 0.2, 0.2, 0.1, 0.15, 0.15]
    assert key_attention(maps).tolist() == pytest.approx(expected, abs=1e-7)


def test_calibration_keeps_the_keys_both_prompts_have():
    query = torch.tensor([0.2, 0.2, 0.2, 0.1, 0.15, 0.15])
    null = torch.tensor([0.1, 0.05, 0.3, 0.05, 0.5])  # the null prompt is one token shorter
    got = calibrate(query, null)
    assert got.tolist() == pytest.approx([0.1, 0.15, -0.1, 0.05, -0.35], abs=1e-7)


def test_outlier_rule_drops_a_token_below_mean_minus_two_std():
    # [0.1 x 5, -0.5]: mean 0, deviations 0.1 (x5) and -0.5, squares 0.05 + 0.25 = 0.3,
    # unbiased variance 0.3 / 5 = 0.06, std 0.244949, threshold -0.489898: -0.5 is dropped.
    values = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, -0.5], dtype=torch.float64)
    assert float(outlier_sum(values)) == pytest.approx(0.5, abs=1e-12)
    # [0.15, -0.1, 0.05]: mean 0.0333, unbiased std 0.125831, threshold -0.218329: all kept.
    values = torch.tensor([0.15, -0.1, 0.05], dtype=torch.float64)
    assert float(outlier_sum(values)) == pytest.approx(0.1, abs=1e-12)


def test_outlier_rule_quirks_of_the_reference():
    # equal values: std 0, threshold = mean, nothing is strictly above it -> 0
    assert float(outlier_sum(torch.tensor([0.02, 0.02], dtype=torch.float64))) == 0.0
    # one token: unbiased std is NaN, every comparison is False -> 0
    assert float(outlier_sum(torch.tensor([0.3], dtype=torch.float64))) == 0.0


def test_pair_scores_by_hand():
    """One layer, two heads, ten keys (nine in the null prompt); document 0 = keys [1, 7)
    (gold), document 1 = keys [7, 9)."""
    spans = [(1, 7), (7, 9)]
    query = torch.tensor(
        [
            [
                [0.2, 0.15, 0.15, 0.15, 0.15, 0.15, 0.0, 0.02, 0.02, 0.01],
                [0.1] * 10,
            ]
        ]
    )
    null = torch.tensor(
        [
            [
                [0.3, 0.05, 0.05, 0.05, 0.05, 0.05, 0.5, 0.0, 0.0],
                [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.05],
            ]
        ]
    )
    got = pair_scores(query, null, spans, [0])
    # head 0: calibrated = [-0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -0.5, 0.02, 0.02]
    #   doc 0 = [0.1 x 5, -0.5] -> 0.5 (the -0.5 token is an outlier, see above)
    #   doc 1 = [0.02, 0.02] -> 0 (std 0: nothing strictly above the mean)
    #   gold mass with the query 0.15 x 5 + 0 = 0.75, with the null query 0.05 x 5 + 0.5 = 0.75
    # head 1: calibrated = [0 x 7, 0.1, 0.05]
    #   doc 0 = zeros -> 0; doc 1 = [0.1, 0.05]: mean 0.075, std 0.0353553, threshold
    #   0.0042893, both kept -> 0.15, so the head ranks document 1 (not gold) first
    #   gold mass 0.6 with either query
    expected = {
        "score": [0.5, 0.0],
        "mass_query": [0.75, 0.6],
        "mass_null": [0.75, 0.6],
        "score_unfiltered": [0.0, 0.0],
        "top1_gold": [1.0, 0.0],
    }
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key].shape == (1, 2)
        assert got[key][0].tolist() == pytest.approx(values, abs=1e-7), key
    docs = document_scores(calibrate(query, null), spans)
    assert docs.flatten().tolist() == pytest.approx([0.5, 0.0, 0.0, 0.15], abs=1e-7)


def test_several_gold_documents_add_up():
    spans = [(0, 2), (2, 4), (4, 6)]
    query = torch.tensor([[[0.1, 0.3, 0.2, 0.2, 0.1, 0.1]]])
    null = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.3, 0.3]]])
    # calibrated [0, 0.2, 0.1, 0.1, -0.2, -0.2]; two tokens per document: mean - 2 std is
    # below both unless they are equal. doc 0 = [0, 0.2] -> 0.2; doc 1 = [0.1, 0.1] -> 0
    # (equal); doc 2 = [-0.2, -0.2] -> 0 (equal)
    got = pair_scores(query, null, spans, [0, 1])
    assert float(got["score"][0, 0]) == pytest.approx(0.2, abs=1e-7)
    assert float(got["mass_query"][0, 0]) == pytest.approx(0.8, abs=1e-7)
    assert float(got["mass_null"][0, 0]) == pytest.approx(0.4, abs=1e-7)
    assert float(got["top1_gold"][0, 0]) == 1.0


def test_a_document_past_the_shared_keys_is_refused():
    with pytest.raises(AnalyzerError, match="past the keys"):
        pair_scores(torch.zeros(1, 1, 6), torch.zeros(1, 1, 4), [(2, 5)], [0])


def test_prompt_layout_matches_the_reference_pieces():
    text, chars, query_at = qr_prompt(["Alpha is red.", "Beta is blue."], "What is red?")
    assert text == (
        "Here are some paragraphs:\n\n[1] Alpha is red.\n\n[2] Beta is blue.\n\n"
        "Please find information that are relevant to the following query in the paragraphs "
        "above.\n\nQuery: What is red?"
    )
    assert [text[a:b] for a, b in chars] == ["[1] Alpha is red.", "[2] Beta is blue."]
    assert text[query_at:].startswith("Please find information")


@pytest.mark.parametrize(("value", "expected"), [(2, (2,)), ([3, 1], (1, 3)), ((0, 0), (0,))])
def test_gold_indices(value, expected):
    assert gold_indices(value, 4) == expected


@pytest.mark.parametrize("value", [4, -1, [], True, "1", 1.0, [0, 9], None, math.nan])
def test_bad_gold_indices_are_refused(value):
    with pytest.raises(AnalyzerError, match="relevant"):
        gold_indices(value, 4)

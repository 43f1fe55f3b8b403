"""Detection patterns and scores of the classic detectors on hand-worked examples."""

from __future__ import annotations

import pytest
import torch

from workbench.analyzers.classic import (
    duplicate_token_pattern,
    induction_pattern,
    pattern_score,
    previous_token_pattern,
)

TOKENS = torch.tensor([5, 6, 7, 5, 6])  # "A B C A B"


def test_previous_token_pattern():
    p = previous_token_pattern(TOKENS)
    assert p.shape == (5, 5)
    assert [tuple(x) for x in torch.nonzero(p).tolist()] == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_duplicate_token_pattern():
    # query 3 (A) sees key 0 (A); query 4 (B) sees key 1 (B)
    p = duplicate_token_pattern(TOKENS)
    assert [tuple(x) for x in torch.nonzero(p).tolist()] == [(3, 0), (4, 1)]


def test_induction_pattern():
    # query 3 (A): the token after the earlier A is key 1 (B); query 4 (B): key 2 (C)
    p = induction_pattern(TOKENS)
    assert [tuple(x) for x in torch.nonzero(p).tolist()] == [(3, 1), (4, 2)]


def test_pattern_score_hand_worked():
    # 3 tokens; every row puts 0.5 on the previous token where it exists
    a = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.25, 0.5, 0.25]])
    p = previous_token_pattern(torch.tensor([1, 2, 3]))
    # sum(A * P) = 0.5 + 0.5 = 1.0; sum(A) = 3 rows -> 1/3
    assert pattern_score(a, p).item() == pytest.approx(1 / 3)
    # excluding the first key: sum(A) = 0 + 0.5 + 0.75; sum(A*P) = 0 + 0.5 (key 0 excluded)
    assert pattern_score(a, p, exclude_bos=True).item() == pytest.approx(0.5 / 1.25)
    # excluding the current token: sum(A) = 0 + 0.5 + 0.75; sum(A*P) unchanged = 1.0
    assert pattern_score(a, p, exclude_current_token=True).item() == pytest.approx(1.0 / 1.25)

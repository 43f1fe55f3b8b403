"""Contextual-heads items run in batches equal the same items run one at a time: the same
greedy answer ids, and every head's answer-row mass on every document within 1e-5, for
prompts of very different lengths in one batch (2 and 7 documents), both row conventions and
gold answers; and the analyzer's scores are the same at any batch size."""

from __future__ import annotations

import pytest
import torch

from workbench.analyzers import mdqa
from workbench.analyzers.contextual_batches import item_runs
from workbench.analyzers.contextual_runs import answer_span_mass, greedy_ids

pytestmark = pytest.mark.model

NEW = 8


@pytest.fixture(scope="module")
def items():
    short = mdqa.make_items(2, 2, seed=1)
    long = mdqa.make_items(2, 7, seed=2)
    return [short[0], long[0], short[1], long[1]]


@pytest.fixture(scope="module")
def eitems(lm, items):
    return [mdqa.encode_item(lm, it) for it in items]


@pytest.fixture(scope="module")
def single(lm, eitems):
    """Each item alone: its greedy answer and both rows' masses of it."""
    out = []
    for ei in eitems:
        ids = greedy_ids(lm, ei.enc, NEW)
        out.append(
            {
                "ids": ids,
                "producing": answer_span_mass(lm, ei, ids, "producing") if ids else None,
                "response": answer_span_mass(lm, ei, ids, "response") if ids else None,
                "gold": answer_span_mass(lm, ei, ei.answer_ids, "producing"),
            }
        )
    return out


def test_the_batch_really_mixes_lengths(eitems, single):
    lengths = [ei.n_prompt for ei in eitems]
    assert max(lengths) > 2 * min(lengths), lengths
    assert all(s["ids"] for s in single)  # every item has an answer to score


@pytest.mark.parametrize("rows", ["producing", "response"])
def test_batched_runs_equal_one_item_runs(lm, eitems, single, rows):
    runs = list(item_runs(lm, eitems, rows=rows, max_new_tokens=NEW, batch_size=4))
    assert len(runs) == len(eitems)
    for run, want, ei in zip(runs, single, eitems, strict=True):
        assert run.generated == want["ids"]
        assert run.scored_ids == want["ids"]
        assert (
            run.mass.shape
            == want[rows].shape
            == (
                lm.info.n_layers,
                lm.info.n_heads,
                len(want["ids"]),
                len(ei.spans),
            )
        )
        diff = (run.mass - want[rows]).abs().max().item()
        assert diff <= 1e-5, diff
        assert want[rows].sum() > 0  # masses are not all zero: the comparison bites


def test_gold_answers_batched_equal_one_item(lm, eitems, single):
    runs = list(item_runs(lm, eitems, answer="gold", max_new_tokens=NEW, batch_size=3))
    for run, want, ei in zip(runs, single, eitems, strict=True):
        assert run.generated == want["ids"]
        assert run.scored_ids == ei.answer_ids
        assert torch.allclose(run.mass, want["gold"], atol=1e-5, rtol=0)


def test_contextual_scores_equal_at_any_batch_size(lm, items):
    from workbench.analyzers import analyze

    kw = {"progress": False, "causal": False, "focus": False, "max_new_tokens": NEW}
    one = analyze("contextual", lm, items, batch_size=1, **kw)
    four = analyze("contextual", lm, items, batch_size=4, **kw)
    cols = ["score", "mass_all_docs", "relevant_share", "score_all_prompts"]
    assert ((one[cols] - four[cols]).abs().max() <= 1e-5).all()
    assert one.attrs["answers"] == four.attrs["answers"]
    assert one["score"].max() > 0

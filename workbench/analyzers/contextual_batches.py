"""The contextual-heads analysis (Zhu et al. 2025, arXiv 2503.23306) over many items at once:
greedy answers from left-padded batched decoding, then the answer rows' attention mass on every
document from right-padded batched teacher-forced forwards (statistics probe span mass, no
L x L maps). Each item's result equals its one-item run
(:func:`~workbench.analyzers.contextual_runs.greedy_ids` and
:func:`~workbench.analyzers.contextual_runs.answer_span_mass`) up to float rounding
(tests/integration/test_contextual_batched.py).

A batch shares one statistics request, so its span list is the union of its items' document
spans; row ``b`` reads the columns of its own spans (a span past a shorter prompt's end covers
only right padding, which no real query sees under the causal mask).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workbench.analyzers.contextual_runs import cut_at_special, with_answer
from workbench.analyzers.mdqa import ANSWER_ROWS, EncodedItem
from workbench.batching import (
    auto_batch_size,
    check_batch_size,
    in_order,
    length_batches,
    run_batched,
)
from workbench.generation import greedy_generate

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

#: Largest number of items ``batch_size="auto"`` puts in one batch.
MAX_BATCH = 16
#: Items per teacher-forced span-mass forward at most: the request holds every item's
#: document spans, and the records keep (B, H, L, spans) per layer.
SPAN_BATCH = 8


@dataclass(frozen=True)
class ItemRun:
    """One item's greedy answer ``generated`` (ids cut at the first special token), the ids
    scored (``generated`` or the gold answer's), and their span masses (layers, heads,
    n_answer, n_docs), None when there is nothing to score."""

    generated: list[int]
    scored_ids: list[int]
    mass: torch.Tensor | None


def resolve_batch_size(
    lm: LoadedModel, eitems: Sequence[EncodedItem], max_new_tokens: int, batch_size: int | str
) -> int:
    """``batch_size`` as an integer: ``"auto"`` is up to :data:`MAX_BATCH`, sized from free
    memory for the longest prompt plus its new tokens."""
    size = check_batch_size(batch_size)
    if size == "auto":
        longest = max(ei.enc.n_tokens for ei in eitems) + max_new_tokens
        return min(MAX_BATCH, auto_batch_size(lm, longest))
    return int(size)


def greedy_answers(
    lm: LoadedModel, eitems: Sequence[EncodedItem], max_new_tokens: int, size: int
) -> list[list[int]]:
    """Greedy answer ids of each item (:func:`cut_at_special`), up to ``size`` prompts of
    similar length per left-padded decode."""
    special = set(lm.tokenizer.all_special_ids)
    out: list[list[int]] = [[] for _ in eitems]
    for batch in length_batches([ei.enc.n_tokens for ei in eitems], size):
        rows = greedy_generate(lm, [eitems[i].enc for i in batch], max_new_tokens=max_new_tokens)
        for i, row in zip(batch, rows, strict=True):
            out[i] = cut_at_special(row, special)
    return out


def answer_span_masses(
    lm: LoadedModel,
    eitems: Sequence[EncodedItem],
    answers: Sequence[Sequence[int]],
    rows: str = "producing",
) -> list[torch.Tensor]:
    """(layers, heads, n_answer, n_docs) per item: the attention mass of every head on every
    document at the rows ``ANSWER_ROWS[rows]`` of the item's answer ``answers[i]`` (non-empty),
    teacher-forced, all items in one right-padded forward (keep them to :data:`SPAN_BATCH`)."""
    union = tuple(dict.fromkeys(tuple(int(x) for x in s) for ei in eitems for s in ei.spans))
    encs = [with_answer(ei, ids) for ei, ids in zip(eitems, answers, strict=True)]

    def probe():
        return lm.statistics(
            received=False, entropy=False, argmax=False, distance=False, spans=union
        )

    records = run_batched(lm, encs, probe, batch_size=len(encs), progress=False)
    out = []
    for ei, ids, rec in zip(eitems, answers, records, strict=True):
        cols = [union.index(tuple(int(x) for x in s)) for s in ei.spans]
        positions = ANSWER_ROWS[rows](ei.n_prompt, len(ids))
        out.append(
            torch.stack(
                [
                    rec[layer].stats["span_mass"][0][:, positions][..., cols].double()
                    for layer in range(lm.info.n_layers)
                ]
            )
        )
    return out


def item_runs(
    lm: LoadedModel,
    eitems: Sequence[EncodedItem],
    *,
    answer: str = "generated",
    rows: str = "producing",
    max_new_tokens: int = 24,
    batch_size: int | str = "auto",
) -> Iterator[ItemRun]:
    """One :class:`ItemRun` per item, in order, from windows of ``batch_size`` consecutive
    items: their answers decoded together, then their span masses (``answer="generated"``
    scores the greedy answer, ``"gold"`` the gold answer's ids). A window's runs are handed
    out when it is done, so an interruption loses at most the window in flight."""
    size = resolve_batch_size(lm, eitems, max_new_tokens, batch_size)
    windows = [list(range(a, min(a + size, len(eitems)))) for a in range(0, len(eitems), size)]

    def run(window: list[int]) -> list[ItemRun]:
        chosen = [eitems[i] for i in window]
        generated = greedy_answers(lm, chosen, max_new_tokens, size)
        scored = [
            g if answer == "generated" else ei.answer_ids
            for ei, g in zip(chosen, generated, strict=True)
        ]
        masses: list[torch.Tensor | None] = [None] * len(window)
        todo = [j for j, ids in enumerate(scored) if ids]
        for a in range(0, len(todo), SPAN_BATCH):
            part = todo[a : a + SPAN_BATCH]
            got = answer_span_masses(lm, [chosen[j] for j in part], [scored[j] for j in part], rows)
            for j, mass in zip(part, got, strict=True):
                masses[j] = mass
        return [ItemRun(g, s, m) for g, s, m in zip(generated, scored, masses, strict=True)]

    yield from in_order(windows, run)


__all__ = [
    "MAX_BATCH",
    "SPAN_BATCH",
    "ItemRun",
    "answer_span_masses",
    "greedy_answers",
    "item_runs",
    "resolve_batch_size",
]

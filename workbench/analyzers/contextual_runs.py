"""Model runs of the contextual-heads analysis (Zhu et al. 2025, arXiv 2503.23306) on encoded
multi-document QA items (:mod:`workbench.analyzers.mdqa`): greedy answers, the attention mass
of every head on every document at the answer rows (statistics probe span mass, no L x L maps),
QA accuracy, the gold answer's log-probability, and the per-head scores built from the masses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import StoppingCriteria

from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.mdqa import ANSWER_ROWS, EncodedItem, answer_rows, is_correct
from workbench.batching import right_pad
from workbench.generation import greedy_generate, pad_id
from workbench.lm import Encoded, kernel_errors_translated

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


def with_answer(ei: EncodedItem, answer_ids: Sequence[int]) -> Encoded:
    """The prompt followed by ``answer_ids`` (the assistant turn's first tokens)."""
    extra = torch.tensor([list(answer_ids)], dtype=ei.enc.input_ids.dtype)
    ids = torch.cat([ei.enc.input_ids, extra], dim=1)
    mask = torch.ones_like(ids)
    return Encoded(ids, mask, [], ei.enc.text, ei.enc.chat)


def greedy_ids(lm: LoadedModel, enc: Encoded, max_new_tokens: int = 24) -> list[int]:
    """Greedy continuation ids (:func:`workbench.generation.greedy_generate`, as
    :meth:`LoadedModel.generate`), cut at the first special token (the end of the assistant
    turn)."""
    (new,) = greedy_generate(lm, [enc], max_new_tokens=max_new_tokens)
    return cut_at_special(new, set(lm.tokenizer.all_special_ids))


def cut_at_special(row: torch.Tensor, special: set[int]) -> list[int]:
    """A decoded row's ids up to (without) its first special token: the end of the assistant
    turn, or the padding of a batch row that stopped early."""
    ids = row.tolist()
    cut = next((i for i, t in enumerate(ids) if t in special), len(ids))
    return [int(t) for t in ids[:cut]]


def answer_span_mass(
    lm: LoadedModel, ei: EncodedItem, answer_ids: Sequence[int], rows: str = "producing"
) -> torch.Tensor:
    """(layers, heads, n_answer, n_docs): attention mass of every head on every document at
    the rows producing each answer token (``rows="producing"``) or at the answer tokens
    themselves (``"response"``, the reference's rows; :data:`~workbench.analyzers.mdqa.
    ANSWER_ROWS`), teacher-forced, from the statistics probe's span mass."""
    if not answer_ids:
        raise AnalyzerError("no answer tokens to score")
    enc = with_answer(ei, answer_ids)
    positions = ANSWER_ROWS[rows](ei.n_prompt, len(answer_ids))
    with lm.statistics(
        received=False, entropy=False, argmax=False, distance=False, spans=ei.spans
    ) as stats:
        lm.forward(enc, last_only=True)
    rec = stats.records
    return torch.stack(
        [
            rec[layer].stats["span_mass"][0][:, positions].double()
            for layer in range(lm.info.n_layers)
        ]
    )


BATCH = 8  # prompts per batched greedy generation of the causal check


class AnswerFound(StoppingCriteria):
    """Stop a row once its new tokens contain the item's answer: containment cannot be undone
    by later tokens, so the outcome of :func:`qa_hits` is that of the full decode."""

    def __init__(self, tokenizer, items: Sequence[dict], start: int) -> None:
        self.tokenizer, self.items, self.start = tokenizer, list(items), start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [is_correct(t, item) for t, item in zip(texts, self.items, strict=True)]
        return torch.tensor(done, device=input_ids.device)


def qa_hits(
    lm: LoadedModel, eitems: Sequence[EncodedItem], max_new_tokens: int = 24
) -> list[float]:
    """1.0 for each item whose greedy answer contains the gold answer (or an alias), else 0.0:
    the per-item metric of the contextual causal check. Generates :data:`BATCH` prompts at a
    time (left-padded, as :func:`greedy_ids` cuts each at its first special token), a row
    stopping once it holds the answer (:class:`AnswerFound`)."""
    special = set(lm.tokenizer.all_special_ids)
    out = []
    for start in range(0, len(eitems), BATCH):
        chunk = list(eitems[start : start + BATCH])
        width = max(ei.enc.n_tokens for ei in chunk)  # new tokens start after the left padding
        stop = [AnswerFound(lm.tokenizer, [ei.item for ei in chunk], width)]
        rows = greedy_generate(
            lm, [ei.enc for ei in chunk], max_new_tokens=max_new_tokens, stop=stop
        )
        for ei, row in zip(chunk, rows, strict=True):
            answer = lm.tokenizer.decode(cut_at_special(row, special))
            out.append(float(is_correct(answer, ei.item)))
    return out


def qa_accuracy(lm: LoadedModel, eitems: Sequence[EncodedItem], max_new_tokens: int = 24) -> float:
    """Share of items whose greedy answer contains the gold answer (or an alias)."""
    return sum(qa_hits(lm, eitems, max_new_tokens)) / max(len(eitems), 1)


@torch.no_grad()
def _logprob_sum(lm: LoadedModel, ei: EncodedItem) -> float:
    enc = with_answer(ei, ei.answer_ids)
    logits = lm.forward(enc)[0].double()
    rows = answer_rows(ei.n_prompt, len(ei.answer_ids))
    logp = torch.log_softmax(logits[rows], dim=-1)
    target = torch.tensor(ei.answer_ids)
    return float(logp.gather(1, target.view(-1, 1)).sum())


@torch.no_grad()
def answer_logprobs(lm: LoadedModel, eitems: Sequence[EncodedItem]) -> list[float]:
    """Mean log-probability (nats per token) of each item's gold answer tokens teacher-forced
    as the first tokens of the assistant turn: the per-item companion of :func:`qa_hits`.
    :data:`BATCH` items per forward, right-padded (the causal mask hides the padding)."""
    out: list[float] = []
    for start in range(0, len(eitems), BATCH):
        chunk = list(eitems[start : start + BATCH])
        seqs = [with_answer(ei, ei.answer_ids).input_ids for ei in chunk]
        ids = right_pad(seqs, pad_id(lm.tokenizer))
        with kernel_errors_translated("forward"):
            logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits
        for row, ei in enumerate(chunk):
            rows = answer_rows(ei.n_prompt, len(ei.answer_ids))
            logp = torch.log_softmax(logits[row, rows].double(), dim=-1)
            total = float(logp.gather(1, torch.tensor(ei.answer_ids).view(-1, 1)).sum())
            out.append(total / max(len(ei.answer_ids), 1))
    return out


def answer_logprob(lm: LoadedModel, eitems: Sequence[EncodedItem]) -> float:
    """Mean log-probability (nats per token) of the gold answer tokens teacher-forced as the
    first tokens of the assistant turn (a smooth companion of the containment accuracy)."""
    total = sum(_logprob_sum(lm, ei) for ei in eitems)
    return total / max(sum(len(ei.answer_ids) for ei in eitems), 1)


def relevant_mass(
    lm: LoadedModel, eitems: Sequence[EncodedItem], heads: Sequence[tuple[int, int]]
) -> float:
    """Mean attention mass of ``heads`` on the relevant document at the gold answer rows."""
    values = []
    for ei in eitems:
        mass = answer_span_mass(lm, ei, ei.answer_ids)
        for layer, head in heads:
            values.append(float(mass[layer, head, :, ei.relevant].mean()))
    return sum(values) / max(len(values), 1)


def item_scores(mass: torch.Tensor, relevant: int) -> dict[str, torch.Tensor]:
    """Per-head numbers of one prompt from its answer-row span masses ``mass``
    (layers, heads, n_answer, n_docs): each averaged over the answer tokens, the mass on the
    relevant document, on all documents, on the irrelevant ones, and the relevant share."""
    m = mass.double().mean(2)
    rel = m[..., relevant]
    all_docs = m.sum(-1)
    return {
        "relevant": rel,
        "all_docs": all_docs,
        "irrelevant": all_docs - rel,
        "share": rel / all_docs.clamp_min(1e-12),
    }


def scored(
    per_item: Sequence[dict[str, torch.Tensor]], counted: Sequence[bool]
) -> tuple[list[dict[str, torch.Tensor]], str]:
    """The prompts the score averages: the ``counted`` ones (answered correctly), or all
    prompts when none is counted; and a note saying which."""
    if not per_item:
        raise AnalyzerError("no scored prompts")
    chosen = [d for d, c in zip(per_item, counted, strict=True) if c]
    if not chosen:
        return list(per_item), "all prompts (none answered correctly)"
    return chosen, "correct prompts"


def aggregate(
    per_item: Sequence[dict[str, torch.Tensor]], counted: Sequence[bool]
) -> tuple[dict[str, torch.Tensor], str]:
    """Mean of :func:`item_scores` over the prompts of :func:`scored`; also
    ``relevant_all_prompts`` over all prompts. Returns the means and a note saying which
    prompts were averaged."""
    chosen, note = scored(per_item, counted)
    means = {k: torch.stack([d[k] for d in chosen]).mean(0) for k in per_item[0]}
    means["relevant_all_prompts"] = torch.stack([d["relevant"] for d in per_item]).mean(0)
    return means, note


__all__ = [
    "aggregate",
    "answer_logprob",
    "answer_logprobs",
    "answer_span_mass",
    "cut_at_special",
    "greedy_ids",
    "item_scores",
    "qa_accuracy",
    "qa_hits",
    "relevant_mass",
    "scored",
    "with_answer",
]
